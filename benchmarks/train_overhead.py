"""Step time and peak memory of `llmforge train` against a bare TRL script on the same model, data and
hyperparameters (LoRA SFT); on a CUDA machine with unsloth installed, also a bare Unsloth script against TRL, and
`llmforge train` on the unsloth backend against the bare Unsloth script.

Each measurement runs in its own process (peak RSS / CUDA peak memory are per process); the arms alternate and
repeat, and medians are reported, because timings on shared machines are noisy.

    python benchmarks/train_overhead.py [--steps 60] [--repeats 3] [--hidden 256] [--layers 4]

Prints and saves benchmarks/results/train_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_overhead.json"
SETTINGS = dict(batch_size=4, max_length=256, learning_rate=2e-4, rank=16, alpha=32, dropout=0.05, seed=0,
                optimizer="adamw_torch_fused")


def make_inputs(folder: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    """A base model (built with our scratch code) and 400 chat records of varied length."""
    sys.path.insert(0, str(REPO))
    from llmforge.training import scratch

    corpus = (REPO / "tests" / "fixtures" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    tok = scratch.train_tokenizer(corpus, 2000)
    model = scratch.build_model(tok, "llama", hidden_size=hidden, layers=layers, heads=max(1, hidden // 64))
    base = scratch.save_base_model(model, tok, folder / "base")
    rows = []
    for i in range(400):
        question = corpus[i % len(corpus)]
        answer = " ".join(corpus[(i + k) % len(corpus)] for k in range(1 + i % 3))
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    data = folder / "ws" / "data" / "train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return base, data


def _peak_memory_mb() -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import torch

        if torch.cuda.is_available():
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return out


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _step_stats(times: list[tuple[float, float]], tokens: int, steps: int) -> dict:
    """Median wall and CPU time between step ends, skipping the first steps (warm-up, lazy init). CPU time is the
    figure to compare on a shared machine: other processes stretch wall time, not this process's CPU time."""
    wall = [b[0] - a[0] for a, b in zip(times, times[1:])][5:]
    cpu = [b[1] - a[1] for a, b in zip(times, times[1:])][5:]
    median = statistics.median(wall)
    return {"median_step_s": median, "median_step_cpu_s": statistics.median(cpu), "mean_step_s": statistics.fmean(wall),
            "steps": steps, "tokens_per_second": tokens / steps / median if tokens else None}


def child_llmforge(base: Path, workdir: Path, steps: int, backend: str) -> dict:
    from llmforge.config import load_config
    from llmforge.training import train
    from llmforge.workspace import Workspace

    s = SETTINGS
    cfg = load_config(None, [], {
        "model.name": str(base), "train.method": "lora", "train.backend": backend, "train.max_steps": steps,
        "train.batch_size": s["batch_size"], "train.max_length": s["max_length"],
        "train.learning_rate": s["learning_rate"], "train.lora.rank": s["rank"], "train.lora.alpha": s["alpha"],
        "train.lora.dropout": s["dropout"], "train.seed": s["seed"], "train.warmup_ratio": 0.0,
        "train.scheduler": "linear", "train.optimizer": s["optimizer"], "train.logging_steps": 10,
        "train.save_every": 10**6,
        "train.run_name": f"bench-{time.time_ns()}",
    }).config
    times: list[tuple[float, float]] = []

    def progress(event):
        if event["event"] == "step":
            times.append(_clock())

    result = train(cfg.model, cfg.train, Workspace(workdir), progress=progress)
    return {**_step_stats(times, result["tokens_seen"], steps), **_peak_memory_mb(), "backend": result["backend"]}


def child_trl(base: Path, data: Path, steps: int, unsloth: bool = False) -> dict:
    """The bare script: what a user would write with TRL + PEFT directly."""
    if unsloth:
        import unsloth  # noqa: F401  (must precede trl)
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    s = SETTINGS
    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(_clock())

    tok = PreTrainedTokenizerFast.from_pretrained(base)
    cuda = torch.cuda.is_available()
    peft_config = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    if unsloth:
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(str(base), max_seq_length=s["max_length"], load_in_4bit=False)
        model = FastLanguageModel.get_peft_model(
            model, r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing=False, random_state=s["seed"])
        peft_config = None
    else:
        model = str(base)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=s["batch_size"],
        learning_rate=s["learning_rate"], optim=s["optimizer"], lr_scheduler_type="linear", warmup_steps=0,
        seed=s["seed"],
        max_length=s["max_length"], assistant_only_loss=True, logging_steps=10, save_strategy="no",
        report_to=[], use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=str(data))["train"],
                         processing_class=tok, peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    return {**_step_stats(times, trainer.state.num_input_tokens_seen, steps), **_peak_memory_mb()}


def run_child(arm: str, base: Path, data: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run([sys.executable, __file__, "--child", arm, "--base", str(base), "--data", str(data),
                          "--steps", str(steps)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    keys = ("median_step_s", "median_step_cpu_s", "peak_rss_mb", "peak_cuda_mb", "tokens_per_second")
    return {k: statistics.median([r[k] for r in runs]) for k in keys if all(r.get(k) is not None for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child")
    parser.add_argument("--base", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()

    if args.child:
        if args.child == "llmforge":
            result = child_llmforge(args.base, args.data.parents[1], args.steps, "trl")
        elif args.child == "llmforge-unsloth":
            result = child_llmforge(args.base, args.data.parents[1], args.steps, "unsloth")
        else:
            result = child_trl(args.base, args.data, args.steps, unsloth=args.child == "unsloth")
        print(json.dumps(result))
        return

    import torch

    cuda = torch.cuda.is_available()
    try:
        import importlib.util

        has_unsloth = importlib.util.find_spec("unsloth") is not None
    except ImportError:
        has_unsloth = False
    # with Unsloth: the bare Unsloth script, and `llmforge train` on the unsloth backend (our overhead there too)
    arms = ["llmforge", "trl"] + (["unsloth", "llmforge-unsloth"] if cuda and has_unsloth else [])
    with tempfile.TemporaryDirectory() as tmp:
        base, data = make_inputs(Path(tmp), args.hidden, args.layers)
        runs: dict[str, list[dict]] = {arm: [] for arm in arms}
        for i in range(args.repeats):
            for arm in arms if i % 2 == 0 else reversed(arms):
                runs[arm].append(run_child(arm, base, data, args.steps))
                print(f"repeat {i + 1} {arm}: {runs[arm][-1]}", file=sys.stderr)
    med = {arm: summarize(r) for arm, r in runs.items()}
    report = {
        "benchmark": "train_overhead",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cuda": cuda,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1")},
        "settings": {**SETTINGS, "steps": args.steps, "repeats": args.repeats, "hidden": args.hidden,
                     "layers": args.layers, "method": "lora", "records": 400},
        "runs": runs,
        "median": med,
        "ratios_llmforge_over_trl": {
            "step_time_cpu": med["llmforge"]["median_step_cpu_s"] / med["trl"]["median_step_cpu_s"],
            "step_time_wall": med["llmforge"]["median_step_s"] / med["trl"]["median_step_s"],
            "peak_rss": med["llmforge"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"],
            **({"peak_cuda": med["llmforge"]["peak_cuda_mb"] / med["trl"]["peak_cuda_mb"]} if cuda else {}),
        },
        "unsloth_vs_trl": (
            {"tokens_per_second_ratio": med["unsloth"]["tokens_per_second"] / med["trl"]["tokens_per_second"],
             "peak_cuda_ratio": med["unsloth"]["peak_cuda_mb"] / med["trl"]["peak_cuda_mb"],
             "llmforge_over_unsloth_step_time": med["llmforge-unsloth"]["median_step_s"] / med["unsloth"]["median_step_s"],
             "llmforge_over_unsloth_peak_cuda": med["llmforge-unsloth"]["peak_cuda_mb"] / med["unsloth"]["peak_cuda_mb"]}
            if "unsloth" in med else "not measured: needs a CUDA GPU and unsloth installed"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"median": med, "ratios_llmforge_over_trl": report["ratios_llmforge_over_trl"],
                      "unsloth_vs_trl": report["unsloth_vs_trl"]}, indent=2))


if __name__ == "__main__":
    main()
