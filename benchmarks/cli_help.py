"""Benchmark `llmforge --help` against `trl --help` (the anchor: another CLI over the same heavy libraries): CPU
seconds (user + system) of each whole process, alternating trl, llmforge, trl, ... and reporting medians, with the
load average (wall time on a shared machine measures the neighbours as much as the command).

Usage:  python benchmarks/cli_help.py [--rounds 15] [--output benchmarks/results/cli_help.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the `llmforge` console script runs, against this checkout's code.
LLMFORGE = [sys.executable, "-c", "import sys\nfrom llmforge.cli.app import main\nsys.argv[0] = 'llmforge'\nmain()"]


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--help"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} --help exited with {proc.returncode}")
    return rusage.ru_utime + rusage.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cli_help.json")
    args = parser.parse_args()
    trl = shutil.which("trl", path=str(Path(sys.executable).parent)) or shutil.which("trl")
    if trl is None:
        raise SystemExit("trl is not installed (pip install trl): it is the anchor")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sides = {"trl": [trl], "llmforge": LLMFORGE}
    for cmd in sides.values():  # warm the file cache and the bytecode caches
        run(cmd, env)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, cmd in sides.items():
            samples[name].append(run(cmd, env))
        loads.append(os.getloadavg()[0])
    summary = {
        name: {
            "median_cpu_seconds": round(statistics.median(c for c, _ in runs), 3),
            "median_wall_seconds": round(statistics.median(w for _, w in runs), 3),
        }
        for name, runs in samples.items()
    }
    ratio = summary["llmforge"]["median_cpu_seconds"] / summary["trl"]["median_cpu_seconds"]
    for name, s in summary.items():
        print(f"{name:9s} cpu {s['median_cpu_seconds']:.3f}s  wall {s['median_wall_seconds']:.3f}s")
    print(f"llmforge / trl CPU time: {ratio:.2f}x (median of {args.rounds} alternating runs each; "
          f"load average {min(loads):.1f}-{max(loads):.1f})")  # fmt: skip
    results = {
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
        "summary": summary,
        "cpu_ratio_llmforge_vs_trl": round(ratio, 2),
        "runs": {name: [{"cpu": round(c, 3), "wall": round(w, 3)} for c, w in runs] for name, runs in samples.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
