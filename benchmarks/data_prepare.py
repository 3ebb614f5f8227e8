"""Benchmark `llmforge data prepare` against the orjson anchor (the same normalization and exact dedupe in a plain
loop, ../shared/bench/orjson_baseline.py) on the shared chat workload (../shared/bench/gen_chat.py, 1M records by
default). Every run is a whole `llmforge data prepare` process (imports, worker pool, report and plot included),
timed from start to exit, its peak memory sampled over the process tree (the worker processes too). Runs alternate
anchor, core, pii, full, anchor, core, ... and medians are reported, with the load average around each run: other
work on the machine slows both sides.

  core   defaults minus PII scrubbing and near dedupe: the anchor's work plus validation, filters, split, report
  pii    defaults minus near dedupe (PII scrubbing on): issue 17's first goal
  full   defaults (PII scrubbing and near dedupe on): issue 17's second goal

Besides wall time, each phase's CPU seconds per record (the process tree's user + sys) are reported: on a machine
shared with other work they say more than the wall time does.

Usage:  python benchmarks/data_prepare.py [--records 1000000] [--rounds 2] [--phases core,pii,full] [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
PII_OFF = [f"data.pii.{kind}=false" for kind in ("email", "url", "phone", "ip", "card")]
PHASES = {"core": [*PII_OFF, "data.dedupe.near=false"], "pii": ["data.dedupe.near=false"], "full": []}
# Issue 17's goals on 2 cores: (phase, at least this many times the anchor's speed, records/s, at most MiB peak)
GOALS = {"pii": (1.3, 50_000, 300), "full": (None, 30_000, 500)}


def measure(cmd: list[str], env: dict[str, str], scratch: Path, sample_memory: bool = True) -> dict:
    """Wall seconds, CPU seconds and peak memory of the process and its children together: the sum of their RSS
    (sampled every 20 ms; pages the forked workers share with the parent count once per process) and of their PSS
    (every 100 ms; shared pages split between the processes sharing them: what the tree really occupies).
    Without `sample_memory` nothing is sampled (peaks are None): the sampler needs a core of its own, which a
    single-process side leaves free and a side using both cores does not, so wall times come from unsampled runs."""
    import psutil

    load_before = os.getloadavg()[0]
    out_path, err_path = scratch / "stdout.txt", scratch / "stderr.txt"
    start = time.perf_counter()
    with open(out_path, "wb") as out_fh, open(err_path, "wb") as err_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=out_fh, stderr=err_fh)
    peak, peak_pss, done = 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        root = psutil.Process(proc.pid)
        tick = 0
        while not done.is_set():
            tick += 1
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                if tick % 5 == 0:  # PSS reads /proc/PID/smaps_rollup: costlier, so every 100 ms
                    peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            except (psutil.Error, AttributeError):  # AttributeError: no PSS outside Linux
                pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    if sample_memory:
        sampler.join()
    out, err = out_path.read_bytes(), err_path.read_bytes()
    proc.returncode = 0  # reaped by wait4 above
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 2),
        "peak_rss_mib": round(peak / 2**20, 1) if sample_memory else None,
        "peak_pss_mib": round(peak_pss / 2**20, 1) if sample_memory else None,
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "stdout": out.decode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (no memory sampling)")
    parser.add_argument("--memory-rounds", type=int, default=1, help="rounds that sample peak memory (not timed)")
    parser.add_argument("--phases", default="core,pii,full")
    parser.add_argument("--data", type=Path, help="An existing JSONL file (default: generate --records of them).")
    parser.add_argument("--generator", type=Path, default=SHARED / "gen_chat.py")
    parser.add_argument("--anchor", type=Path, default=SHARED / "orjson_baseline.py")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "data_prepare.json")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch folder (default: a temp folder).")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    with tempfile.TemporaryDirectory(prefix="llmforge-bench-", dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        data = args.data
        if data is None:
            data = tmp_path / "chat.jsonl"
            subprocess.run([sys.executable, str(args.generator), str(args.records), str(data)], check=True)
        records = sum(1 for line in open(data, "rb") if line.strip())
        input_mib = round(data.stat().st_size / 2**20, 1)
        runs: dict[str, list[dict]] = {"anchor": [], **{name: [] for name in args.phases.split(",")}}
        memory: dict[str, list[dict]] = {name: [] for name in runs}
        for round_ in range(args.memory_rounds + args.rounds):
            sampled = round_ < args.memory_rounds
            for name in runs:
                if name == "anchor":
                    cmd = [sys.executable, str(args.anchor), str(data), str(tmp_path / "anchor.jsonl")]
                else:
                    sets = [f"project.workdir={tmp_path / name}", *PHASES[name]]
                    cmd = [sys.executable, "-m", "llmforge", "data", "prepare", str(data), "--force", "--json"]
                    cmd += [arg for s in sets for arg in ("-s", s)]
                result = measure(cmd, env, tmp_path, sample_memory=sampled)
                stdout = result.pop("stdout")
                if name != "anchor":
                    report = json.loads(stdout)
                    result["counts"] = report["counts"]
                    result["timings"] = report["timings"]
                result["records_per_second"] = round(records / result["wall_seconds"])
                (memory if sampled else runs)[name].append(result)
                peaks = (f"peak RSS {result['peak_rss_mib']:.0f} MiB, PSS {result['peak_pss_mib']:.0f} MiB (memory "
                         "round, not timed)" if sampled else "(timed round)")  # fmt: skip
                print(f"round {round_ + 1} {name:6s} {result['wall_seconds']:7.2f}s  {result['records_per_second']:>7,}"
                      f" records/s  cpu {result['cpu_seconds']:.1f}s  {peaks}  load "
                      f"{result['load_average_before']:.1f}->{result['load_average_after']:.1f}", flush=True)  # fmt: skip

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    anchor_wall = median("anchor", "wall_seconds")
    summary = {}
    print(f"\n{'':8s}{'median s':>10s}{'records/s':>11s}{'vs anchor':>11s}{'RSS MiB':>10s}{'PSS MiB':>10s}"
          f"{'CPU us/rec':>12s}")  # fmt: skip
    for name in runs:
        wall = median(name, "wall_seconds")
        summary[name] = {
            "median_wall_seconds": wall,
            "records_per_second": round(records / wall),
            "speedup_vs_anchor": round(anchor_wall / wall, 2),
            "max_peak_rss_mib": max((r["peak_rss_mib"] for r in memory[name]), default=None),
            "max_peak_pss_mib": max((r["peak_pss_mib"] for r in memory[name]), default=None),
            "median_cpu_seconds": median(name, "cpu_seconds"),
            "cpu_us_per_record": round(median(name, "cpu_seconds") / records * 1e6, 1),
        }
        s = summary[name]
        print(f"{name:8s}{wall:10.2f}{s['records_per_second']:11,}{s['speedup_vs_anchor']:10.2f}x"
              f"{s['max_peak_rss_mib'] or 0:10.0f}{s['max_peak_pss_mib'] or 0:10.0f}"
              f"{s['cpu_us_per_record']:12.1f}")  # fmt: skip
    goals = {}
    for name, (speedup, rate, mib) in GOALS.items():
        if name not in summary:
            continue
        s = summary[name]
        met = {"records_per_second": s["records_per_second"] >= rate,
               "peak_rss_mib": s["max_peak_rss_mib"] is not None and s["max_peak_rss_mib"] <= mib}
        if speedup is not None:
            met["speedup_vs_anchor"] = s["speedup_vs_anchor"] >= speedup
        goals[name] = met
        wanted = (f">= {speedup}x anchor, " if speedup else "") + f">= {rate:,} records/s, <= {mib} MiB RSS"
        print(f"goal {name:5s} {wanted}: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    results = {
        "records": records,
        "input_mib": input_mib,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "note": "anchor and phases interleaved (A B C D A B C D ...); memory rounds first (peak RSS/PSS sampled, "
        "not timed), then timed rounds without the sampler (it needs a core, which the one-process anchor leaves free "
        "and a two-core side does not); medians of the timed rounds; see the load averages for other work",
        "memory_runs": memory,
        "summary": summary,
        "goals": goals,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
