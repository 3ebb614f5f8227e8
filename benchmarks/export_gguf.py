"""Benchmark: convert a randomly initialised ~100M-parameter Llama (bf16 safetensors) to an f16 GGUF with our
converter, in a child process, and report wall time and peak RSS against the model's size on disk.

Aim (issue 5): peak RSS <= 1.3x the size on disk. Prints and saves JSON.

    python benchmarks/export_gguf.py [--out benchmarks/results/export_gguf.json] [--layers 8] [--hidden 768]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import resource, sys, time, json
sys.path.insert(0, {repo!r})
from pathlib import Path
from llmforge.export import gguf_convert
from llmforge.export.quant_types import QUANT_TYPES
t = time.perf_counter()
if {convert!r}:
    gguf_convert.convert(Path({src!r}), Path({dst!r}), QUANT_TYPES[{quant!r}])
# VmHWM is this process's own peak RSS; ru_maxrss would carry the parent's peak across fork+exec on Linux
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss_kib": hwm,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def build_model(out: Path, hidden: int, layers: int, vocab: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import build_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(out)  # the test tokenizer; its 512 tokens are padded to the embedding's rows
    return params


def run_child(src: Path, dst: Path, quant: str, convert: bool) -> dict:
    code = CHILD.format(repo=str(REPO), src=str(src), dst=str(dst), quant=quant, convert=convert)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process_wall_seconds": round(wall, 2), "convert_seconds": round(child["seconds"], 2),
            "peak_rss_mib": round(child["peak_rss_kib"] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export_gguf.json")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quant", default="f16")
    parser.add_argument("--verify", action="store_true", help="Also compare the GGUF with HF (needs llama_cpp).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "model", Path(tmp) / f"model-{args.quant}.gguf"
        params = build_model(src, args.hidden, args.layers, args.vocab)
        disk = sum(f.stat().st_size for f in src.glob("*.safetensors"))
        baseline = run_child(src, dst, args.quant, convert=False)  # interpreter + numpy + gguf imports only
        result = run_child(src, dst, args.quant, convert=True)
        gguf_bytes = dst.stat().st_size
        verification = None
        if args.verify:
            from llmforge.export import verify

            ref = verify.load_reference(src)
            prompts = verify.prompt_ids(ref)
            started = time.perf_counter()
            verification = verify.compare_logits(dst, prompts, verify.hf_logits(ref, prompts))
            verification["tokenization_ok"] = verify.check_tokenization(dst, ref)["ok"]
            verification["seconds"] = round(time.perf_counter() - started, 2)
    report = {
        "benchmark": "export_gguf",
        "model": {"architecture": "llama", "parameters": params, "hidden": args.hidden, "layers": args.layers,
                  "vocab": args.vocab, "safetensors_dtype": "bfloat16", "size_on_disk_mib": round(disk / 2**20, 1)},
        "quant": args.quant,
        "gguf_size_mib": round(gguf_bytes / 2**20, 1),
        "convert_seconds": result["convert_seconds"],
        "process_wall_seconds": result["process_wall_seconds"],
        "peak_rss_mib": result["peak_rss_mib"],
        "baseline_rss_mib": baseline["peak_rss_mib"],
        "peak_rss_over_disk": round(result["peak_rss_mib"] / (disk / 2**20), 3),
        "aim_peak_rss_over_disk": 1.3,
        "verification": verification,
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
