"""The whole llmforge pipeline on the bundled example: what `make demo` runs.

data prepare -> train --method scratch (a tiny base model, pretrained on examples/corpus) -> train --method lora
(on the Brightwave K2 support FAQ) -> eval --compare base,run (held-out split, and a probe set of memorised
questions) -> export gguf --quant q8_0,q4_k_m -> deploy ollama (for real when an Ollama answers, else --dry-run)
-> serve, one chat request through the OpenAI client, stop. Every stage is the real `llmforge` command; the
summary reads what they left in the workspace.

    python scripts/demo.py [--workdir DIR] [--fast] [--port N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "demo" / "llmforge.yaml"
MARKER = ".llmforge-demo"  # the demo only ever wipes a workspace it made itself
PROBES = 12

# Steps that make the tiny models learn enough in a few minutes on 2 CPU cores; --fast is for the end-to-end test.
FULL = {"scratch_steps": 150, "lora_steps": 250}
FAST = {"scratch_steps": 60, "lora_steps": 120}


class DemoFailed(Exception):
    pass


def banner(step: int, total: int, title: str) -> None:
    print(f"\n\033[1m[{step}/{total}] {title}\033[0m", flush=True)


def llmforge(args: list[str], workdir: Path, capture: bool = False) -> subprocess.CompletedProcess:
    """Run one real `llmforge` command on the demo config and workspace."""
    cmd = [sys.executable, "-m", "llmforge", *args, "-c", str(CONFIG), "-s", f"project.workdir={workdir}"]
    print("  $ llmforge " + " ".join(args), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=capture)
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise DemoFailed(f"`llmforge {' '.join(args)}` exited {proc.returncode}")
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return proc


def newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DemoFailed(f"nothing matching {pattern} in {folder}")
    return found[-1]


def write_probes(workdir: Path) -> Path:
    """The probe set: single-turn questions the fine-tune saw, with their exact answers."""
    probes = workdir / "data" / "probes.jsonl"
    rows = []
    with open(workdir / "data" / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            roles = [m["role"] for m in record.get("messages", [])]
            if roles == ["user", "assistant"]:
                rows.append(record)
            if len(rows) == PROBES:
                break
    probes.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return probes


def ollama_reachable() -> str | None:
    from llmforge import ollama_client

    host = ollama_client.resolve_host()
    try:
        ollama_client.connect(host, timeout=2).list()
        return host
    except Exception:  # any failure means "no Ollama here": the demo then does a dry run
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_ask(workdir: Path, port: int) -> dict:
    cmd = [sys.executable, "-m", "llmforge", "serve", "-c", str(CONFIG), "-s", f"project.workdir={workdir}",
           "--port", str(port)]  # fmt: skip
    print(f"  $ llmforge serve --port {port} &", flush=True)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise DemoFailed(f"llmforge serve exited {server.returncode}: {server.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoFailed("llmforge serve did not answer /health within 120 s") from None
                time.sleep(0.5)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
        question = "How long is the warranty?"
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=health.get("model", "demo"), messages=[{"role": "user", "content": question}],
            max_tokens=48, temperature=0,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        answer = reply.choices[0].message.content
        print(f"  user: {question}\n  model: {answer}  ({reply.choices[0].finish_reason}, {seconds:.2f} s)")
        return {"question": question, "answer": answer, "finish_reason": reply.choices[0].finish_reason,
                "engine": health.get("engine"), "seconds": round(seconds, 3)}  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        print("  server stopped", flush=True)


def run(workdir: Path, fast: bool, port: int) -> dict:
    steps = FAST if fast else FULL
    workdir = workdir.resolve()
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise DemoFailed(f"{workdir} exists and was not made by the demo; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by scripts/demo.py; rerunning the demo replaces this folder\n")
    base_model = workdir / "runs" / "base" / "model"
    summary: dict = {"workdir": str(workdir)}
    started = time.perf_counter()
    total = 7

    banner(1, total, "data prepare: ingest the FAQ (4 formats, messy records), clean, dedupe, split")
    llmforge(["data", "prepare"], workdir)
    summary["data"] = json.loads((workdir / "data" / "report.json").read_text())["counts"]

    banner(2, total, "train --method scratch: a tiny base model pretrained on examples/corpus")
    llmforge(["train", "--method", "scratch", "-s", "train.data=examples/corpus/pretrain.jsonl",
              "-s", "train.run_name=base", "-s", f"train.max_steps={steps['scratch_steps']}",
              "-s", "train.learning_rate=2e-3", "-s", "train.packing=true"], workdir)  # fmt: skip
    summary["scratch"] = json.loads((workdir / "runs" / "base" / "manifest.json").read_text())

    banner(3, total, "train --method lora: fine-tune the base on the support FAQ")
    llmforge(["train", "--method", "lora", "-s", f"model.name={base_model}", "-s", "train.run_name=lora",
              "-s", f"train.max_steps={steps['lora_steps']}", "-s", "train.learning_rate=3e-3"], workdir)  # fmt: skip
    summary["lora"] = json.loads((workdir / "runs" / "lora" / "manifest.json").read_text())

    banner(4, total, "eval --compare base,run: held-out split, then the probe set of memorised questions")
    llmforge(["eval", "--compare", "base,run", "-s", f"model.name={base_model}"], workdir)
    summary["eval_test"] = json.loads((newest(workdir / "eval", "2*/report.json")).read_text())["metrics"]
    probes = write_probes(workdir)
    llmforge(["eval", "--compare", "base,run", "-s", f"model.name={base_model}", "-s", f"eval.data={probes}"], workdir)
    summary["eval_probes"] = json.loads((newest(workdir / "eval", "2*/report.json")).read_text())["metrics"]

    banner(5, total, "export gguf --quant q8_0,q4_k_m: merge, convert with our own converter, verify in llama.cpp")
    llmforge(["export", "gguf", "lora", "--quant", "q8_0,q4_k_m", "-s", f"model.name={base_model}"], workdir)
    summary["export"] = json.loads((workdir / "export" / "lora" / "manifest.json").read_text())

    banner(6, total, "deploy ollama: a Modelfile with the trained template and stop tokens")
    host = ollama_reachable()
    if host:
        llmforge(["deploy", "ollama", "--name", "brightwave-demo", "--force"], workdir)
        summary["deploy"] = {"mode": f"registered with Ollama at {host}"}
    else:
        llmforge(["deploy", "ollama", "--name", "brightwave-demo", "--dry-run"], workdir)
        summary["deploy"] = {"mode": "dry run: no Ollama answered (start `ollama serve` to register for real)"}
    summary["deploy"]["modelfile"] = str(workdir / "deploy" / "brightwave-demo" / "Modelfile")

    banner(7, total, "serve: the OpenAI-compatible API on the GGUF, one chat request, stop")
    summary["serve"] = serve_and_ask(workdir, port or free_port())
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def show(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def metric(which: str, target: str, key: str) -> float:
        return summary[which][target][key]

    run_key = next(k for k in summary["eval_test"] if k.startswith("run"))
    table = Table(title=f"llmforge demo: the whole pipeline in {summary['seconds']} s")
    table.add_column("stage")
    table.add_column("result")
    d = summary["data"]
    table.add_row(
        "data",
        f"{d['read']} records read, {d['rejected']} rejected, {d['exact_duplicates']} exact + "
        f"{d['near_duplicates']} near duplicates dropped; train/val/test {d['train']}/{d['val']}/{d['test']}",
    )
    s, lo = summary["scratch"], summary["lora"]
    table.add_row(
        "scratch base", f"{s['parameters']:,} parameters, loss {s['first_loss']:.2f} -> {s['final_loss']:.2f}"
    )
    table.add_row(
        "lora", f"{lo['trainable_parameters']:,} trainable, loss {lo['first_loss']:.2f} -> {lo['final_loss']:.2f}"
    )
    table.add_row(
        "perplexity (held-out)",
        f"base {metric('eval_test', 'base', 'perplexity'):.2f} -> fine-tuned {metric('eval_test', run_key, 'perplexity'):.2f}",
    )
    table.add_row(
        "exact match (probes)",
        f"base {metric('eval_probes', 'base', 'exact_match'):.2f} -> fine-tuned "
        f"{metric('eval_probes', run_key, 'exact_match'):.2f}  ({PROBES} memorised questions)",
    )
    files = summary["export"].get("files", [])
    table.add_row(
        "export",
        ", ".join(f"{Path(f['path']).name} ({'verified' if f.get('verified') else 'unverified'})" for f in files),
    )
    table.add_row("deploy", summary["deploy"]["mode"])
    sv = summary["serve"]
    table.add_row("serve", f"{sv['engine']}: {sv['answer']!r} ({sv['finish_reason']})")
    Console().print(table)
    better = metric("eval_test", run_key, "perplexity") < metric("eval_test", "base", "perplexity") and metric(
        "eval_probes", run_key, "exact_match"
    ) > metric("eval_probes", "base", "exact_match")
    print("fine-tuned beats base: " + ("yes" if better else "NO"))
    if not better:
        raise DemoFailed("the fine-tuned model did not beat its base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "llmforge-work" / "demo")
    parser.add_argument("--fast", action="store_true", help="fewer training steps (the end-to-end test uses it)")
    parser.add_argument("--port", type=int, default=0, help="port for the server (default: a free one)")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    try:
        summary = run(args.workdir, args.fast, args.port)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        show(summary)
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
