"""Throughput of `llmforge eval` on a HF target against a bare transformers loop over the same prompts, and the
cost of a cached rerun. Prints and saves JSON (benchmarks/results/eval_throughput.json).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_throughput.py [--examples 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    import torch
    from tiny_models import CORPUS, build_model, build_tokenizer, load_tokenizer
    from transformers import AutoModelForCausalLM

    from llmforge.config.eval import EvalConfig
    from llmforge.config.model import ModelConfig
    from llmforge.evaluation import evaluate
    from llmforge.workspace import Workspace

    tmp = Path(tempfile.mkdtemp(prefix="llmforge-bench-eval-"))
    tok_dir = build_tokenizer(tmp / "tokenizer")
    model_dir = build_model(tmp / "model", tok_dir, "llama", hidden_size=args.hidden, heads=4, kv_heads=4,
                            intermediate_size=args.hidden * 2)
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if len(line.split()) > 6]
    ws = Workspace(tmp / "ws")
    ws.data_dir.mkdir(parents=True)
    records = []
    for i in range(args.examples):
        line = lines[i % len(lines)]
        records.append({"messages": [{"role": "user", "content": f"Continue: {line[:40]}"},
                                     {"role": "assistant", "content": line[40:120]}]})
    ws.split_file("test").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = EvalConfig(max_new_tokens=args.max_new_tokens, bootstrap=1000)
    model = ModelConfig(name=str(model_dir))

    started = time.perf_counter()
    cold = evaluate(model, config, ws, targets="base")
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate(model, config, ws, targets="base")
    cached_s = time.perf_counter() - started

    # the bare loop: the same prompts, greedy, no scoring, no report
    tok = load_tokenizer(model_dir)
    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    started = time.perf_counter()
    new_tokens = 0
    for r in records:
        ids = tok.apply_chat_template(r["messages"][:1], tokenize=True, return_dict=True,
                                      add_generation_prompt=True)["input_ids"]
        with torch.no_grad():
            out = net.generate(input_ids=torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new_tokens += out.shape[1] - len(ids)
    bare_s = time.perf_counter() - started

    metrics = cold.report["metrics"]["base"]
    result = {
        "examples": args.examples,
        "max_new_tokens": args.max_new_tokens,
        "hidden_size": args.hidden,
        "threads": torch.get_num_threads(),
        "eval_cold_seconds": round(cold_s, 3),
        "eval_cached_rerun_seconds": round(cached_s, 3),
        "eval_target_seconds": cold.report["targets"][0]["seconds"],
        "eval_tokens_per_second": round(metrics["tokens_per_second"], 1),
        "bare_generate_seconds": round(bare_s, 3),
        "bare_tokens_per_second": round(new_tokens / bare_s, 1),
        "note": "eval_cold includes loss over the split, text metrics, 1000 bootstrap resamples and the plots",
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "eval_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
