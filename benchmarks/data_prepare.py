"""Benchmark `llmforge data prepare` at scale: generate a JSONL file of N chat records (1M by default) with exact
and near duplicates, then run prepare three times, each in a fresh process, and report records/s, per-phase
seconds and peak RSS:

  core   read + validate + normalize + exact dedupe (+ split and write), PII and near dedupe off
  pii    core + PII scrubbing
  full   core + PII + near dedupe (MinHash/LSH); near-dedupe throughput reported separately

Usage:  OMP_NUM_THREADS=1 python benchmarks/data_prepare.py [--records 1000000] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze") for b in
         ("ba", "de", "fi", "go", "hu", "jo", "ky", "la", "mo", "ne", "po", "qu", "ri", "st", "tu")]  # fmt: skip


def make_dataset(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """n chat records; about 5% exact duplicates (case/space changes) and 5% near duplicates (one word changed)."""
    import orjson

    rng = random.Random(seed)
    recent: list[tuple[str, str]] = []
    counts = {"records": n, "exact_duplicates": 0, "near_duplicates": 0}
    with open(path, "wb") as fh:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.05:
                q, a = rng.choice(recent)
                q, a = q.upper() if rng.random() < 0.5 else q, a + "  "
                counts["exact_duplicates"] += 1
            elif recent and roll < 0.10:
                q, a = rng.choice(recent)
                words = a.split()
                words[rng.randrange(len(words))] = "changed"
                a = " ".join(words)
                counts["near_duplicates"] += 1
            else:
                q = f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(6, 14))) + "?"
                a = " ".join(rng.choices(WORDS, k=rng.randint(40, 80))) + "."
                if len(recent) < 5000:
                    recent.append((q, a))
                else:
                    recent[rng.randrange(5000)] = (q, a)
            record = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            fh.write(orjson.dumps(record) + b"\n")
    return counts


def run_phase(name: str, data_file: Path, work: Path) -> dict:
    """Run prepare in a child process (its own peak RSS) with the settings of one phase."""
    settings = {
        "core": {"pii": dict.fromkeys(("email", "url", "phone", "ip", "card"), False), "dedupe": {"near": False}},
        "pii": {"dedupe": {"near": False}},
        "full": {},
    }[name]
    code = f"""
import json, resource, time
from pathlib import Path
from llmforge.config.data import DataConfig
from llmforge.config.model import ModelConfig
from llmforge.data import prepare
from llmforge.workspace import Workspace
cfg = DataConfig(inputs=[{str(data_file)!r}], **json.loads({json.dumps(json.dumps(settings))}))
start = time.perf_counter()
report = prepare(cfg, ModelConfig(), Workspace(Path({str(work / name)!r})), force=True)
wall = time.perf_counter() - start
print(json.dumps({{"wall_seconds": wall, "counts": report["counts"], "timings": report["timings"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--phases", default="core,pii,full")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "data_prepare.json")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="llmforge-bench-", dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        data_file = tmp_path / "records.jsonl"
        t0 = time.perf_counter()
        made = make_dataset(data_file, args.records)
        gen_seconds = time.perf_counter() - t0
        size_mb = data_file.stat().st_size / 2**20
        print(f"generated {args.records:,} records ({size_mb:.0f} MiB) in {gen_seconds:.1f}s", flush=True)
        results = {
            "records": args.records,
            "input_mib": round(size_mb, 1),
            "generated": made,
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": sys.version.split()[0],
            "phases": {},
        }
        for name in args.phases.split(","):
            result = run_phase(name, data_file, tmp_path)
            shutil.rmtree(tmp_path / name, ignore_errors=True)  # a phase's outputs are as large as its input
            t = result["timings"]
            core = sum(t.get(k, 0.0) for k in ("read", "validate_normalize", "exact_dedupe"))
            result["records_per_second"] = round(args.records / result["wall_seconds"])
            result["read_validate_normalize_exact_dedupe_records_per_second"] = round(args.records / core)
            if name == "pii":
                result["pii_records_per_second"] = round(args.records / max(t.get("clean", 0.0), 1e-9))
            if name == "full":
                near = t.get("near_signatures", 0.0) + t.get("near_cluster", 0.0)
                signed = result["counts"]["read"] - result["counts"]["exact_duplicates"] - result["counts"]["rejected"]
                result["near_dedupe_records_per_second"] = round(signed / max(near, 1e-9))
            results["phases"][name] = result
            extra = {k: v for k, v in result.items() if k.endswith("per_second")}
            print(f"{name}: {result['wall_seconds']:.1f}s, peak RSS {result['peak_rss_mb']:.0f} MiB, {extra}", flush=True)
            print(f"  timings: {t}", flush=True)
            print(f"  counts: {result['counts']}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
