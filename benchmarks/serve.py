"""Serving overhead: tokens/s and time to first token through `llmforge serve` (HTTP, streaming) against calling
llama.cpp in-process on the same GGUF (the anchor), then N concurrent clients. Prints both sides, the ratios and
the goals of issue 17, and writes JSON. Both sides run in this process tree: the server is a child process, the
anchor runs here, in alternating pairs, so that load from other processes hits both alike (medians of the pairs).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/serve.py --out benchmarks/results/serve.json

About 1.5 minutes on 2 cores.

The model is a randomly initialised Llama (default ~57M parameters: hidden 768, 8 layers) with the test tokenizer,
converted to an f16 GGUF; generation ignores end-of-turn tokens so every run produces exactly --tokens tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def build_gguf(folder: Path, hidden: int, layers: int) -> tuple[Path, int]:
    from tiny_models import build_model, build_tokenizer

    from llmforge.config import load_config
    from llmforge.export import export_gguf
    from llmforge.workspace import Workspace

    folder = folder / f"llama-h{hidden}-l{layers}"
    if (folder / "bench-f16.gguf").exists():  # built by an earlier run with --workdir
        return folder / "bench-f16.gguf", json.loads((folder / "params.json").read_text())

    tok = build_tokenizer(folder / "tokenizer")
    model = build_model(folder / "model", tok, "llama", hidden_size=hidden, layers=layers, heads=hidden // 64,
                        kv_heads=hidden // 64, intermediate_size=int(hidden * 8 / 3) // 64 * 64)  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "np") as f:
        params = sum(int(f.get_tensor(k).size) for k in f.keys())
    # converted by the export stage, as a user's model would be (verification off: it only costs time here)
    cfg = load_config(None, ["export.quant=[f16]", "export.verify=false"], {}).config
    workspace = Workspace(folder / "work")
    result = export_gguf(cfg.model, cfg.export, workspace, model, name="bench")
    (folder / "bench-f16.gguf").symlink_to(Path(result.output_dir) / result.files[0]["path"])
    (folder / "params.json").write_text(json.dumps(params))
    return folder / "bench-f16.gguf", params


def in_process(llm, prompt_text: str, tokens: int) -> dict:
    """One generation straight on llama.cpp (the anchor): the same greedy sampling and detokenization per token as
    the server does, timed from the prompt text to the last token's text."""
    start = time.perf_counter()
    prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    first = None
    n = 0
    text = b""
    for token in llm.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        piece = llm.detokenize([token])
        text += piece
        n += 1
        if first is None and piece:  # like the HTTP client: the first token that brings text
            first = time.perf_counter()
        if n >= tokens:
            break
    end = time.perf_counter()
    return {"ttft_s": first - start, "tokens": n, "tokens_per_s": (n - 1) / (end - first), "total_s": end - start}


def prompt_for(k: int) -> str:
    # a different opening per request, so that no run finds its prompt in a KV cache (neither side)
    return f"Request {k}. " + PROMPT


def one_request(url: str, tokens: int, prompt: str) -> dict:
    """One streamed /v1/completions request, read as a client does: every SSE event parsed as JSON. The client is
    http.client on a fresh connection (a connection costs ~0.2 ms on loopback, inside TTFT, as for a real client);
    its CPU time per token is reported, since it shares the machine's cores with the server."""
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})  # fmt: skip
    host, port = url.removeprefix("http://").rsplit(":", 1)
    cpu = time.thread_time()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    first = end = None
    n = events = 0
    finish = None
    done = False
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
        for line in r:
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                done = True
                break
            chunk = json.loads(line[6:])
            events += 1
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            elif chunk["choices"]:
                choice = chunk["choices"][0]
                finish = choice["finish_reason"] or finish
                if choice["text"]:
                    first = first or time.perf_counter()
                    end = time.perf_counter()
    finally:
        conn.close()
    return {"ttft_s": first - start, "tokens": n, "tokens_per_s": (n - 1) / (end - first), "total_s": end - start,
            "events": events, "finish_reason": finish, "done": done,
            "client_cpu_us_per_token": 1e6 * (time.thread_time() - cpu) / max(n, 1)}  # fmt: skip


def start_server(gguf: Path, threads: int, parallel: int | None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "llmforge", "serve", "--model", str(gguf), "--port", "0", "--json",
           "-s", f"serve.threads={threads}", "-s", "serve.context_length=512", "-s", "serve.max_tokens_limit=512"]  # fmt: skip
    if parallel is not None:
        cmd += ["-s", f"serve.parallel={parallel}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    while not lines or not lines[-1].startswith("}"):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("llmforge serve did not start")
        lines.append(line)
    url = json.loads("".join(lines))["url"]
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def concurrent(url: str, clients: int, tokens: int, first_prompt: int) -> dict:
    """`clients` streams at once, one request each; aggregate tokens/s over the wall time, and whether every stream
    got all its tokens (finish_reason length, [DONE], no error event)."""
    results: list[dict | None] = [None] * clients
    errors: list[str] = []
    ready = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        ready.wait()
        try:
            results[i] = one_request(url, tokens, prompt_for(first_prompt + i))
        except Exception as exc:  # reported as a failed stream, never hidden
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r is not None]
    complete = [r for r in ok if r["tokens"] == tokens and r["finish_reason"] == "length" and r["done"]]
    ttfts = sorted(r["ttft_s"] for r in ok) or [float("nan")]
    return {
        "clients": clients,
        "complete": len(complete),
        "truncated_or_failed": clients - len(complete),
        "errors": errors,
        "aggregate_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_median_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
        "wall_s": wall,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), for the server's CPU per token."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved in-process/HTTP pairs (one client)")
    ap.add_argument("--threads", type=int, default=1, help="engine threads (the HTTP side needs a core too)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent streams in the concurrency check")
    ap.add_argument("--concurrent-rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, help="serve.parallel of the server (default: serve's own default)")
    ap.add_argument("--workdir", type=Path, help="keep the built model here and reuse it on the next run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()

    import llama_cpp

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="llmforge-bench-") as tmp:
        gguf, params = build_gguf(args.workdir or Path(tmp), args.hidden, args.layers)
        print(f"model: random llama, {params / 1e6:.1f}M parameters, f16 GGUF {gguf.stat().st_size / 1e6:.0f} MB; "
              f"load average {load_before[0]:.2f}")  # fmt: skip
        llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads,
                              verbose=False)  # fmt: skip
        proc, url = start_server(gguf, args.threads, args.parallel)
        try:
            one_request(url, args.tokens, prompt_for(-1))  # warm-ups
            in_process(llm, prompt_for(-2), args.tokens)
            pairs = []
            print(f"{'round':>5}{'in-process tok/s':>18}{'HTTP tok/s':>12}{'ratio':>7}{'+TTFT ms':>10}{'load':>6}")
            for k in range(args.rounds):
                # alternate which side goes first, so that a drift in machine load hits both alike
                for side in ("local", "http") if k % 2 == 0 else ("http", "local"):
                    if side == "local":
                        cpu = time.process_time()
                        local = in_process(llm, prompt_for(2 * k), args.tokens)
                        local["cpu_ms_per_token"] = 1000 * (time.process_time() - cpu) / local["tokens"]
                    else:
                        cpu = cpu_seconds(proc.pid)
                        http = one_request(url, args.tokens, prompt_for(2 * k + 1))
                        http["server_cpu_ms_per_token"] = 1000 * (cpu_seconds(proc.pid) - cpu) / http["tokens"]
                pair = {"in_process": local, "http": http, "load": loadavg(),
                        "ratio": http["tokens_per_s"] / local["tokens_per_s"],
                        "added_ttft_ms": 1000 * (http["ttft_s"] - local["ttft_s"])}  # fmt: skip
                pairs.append(pair)
                print(f"{k:5}{local['tokens_per_s']:18.1f}{http['tokens_per_s']:12.1f}{pair['ratio']:7.3f}"
                      f"{pair['added_ttft_ms']:10.1f}{pair['load']:6.2f}")  # fmt: skip
            crowds = []
            for k in range(args.concurrent_rounds):
                # each crowd beside a one-client request of its own, so the two see about the same load
                alone = one_request(url, args.tokens, prompt_for(5000 + k))
                crowd = concurrent(url, args.clients, args.tokens, 10_000 + 100 * k)
                crowd["one_client_tokens_per_s"] = alone["tokens"] / alone["total_s"]  # end to end, as the crowd's
                crowd["aggregate_over_one_client"] = crowd["aggregate_tokens_per_s"] / crowd["one_client_tokens_per_s"]
                crowd["load"] = loadavg()
                crowds.append(crowd)
        finally:
            proc.terminate()
            proc.wait(30)
        llm.close()

    med = statistics.median
    summary = {
        "throughput_ratio": med(p["ratio"] for p in pairs),
        "added_ttft_ms": med(p["added_ttft_ms"] for p in pairs),
        "in_process_tokens_per_s": med(p["in_process"]["tokens_per_s"] for p in pairs),
        "http_tokens_per_s": med(p["http"]["tokens_per_s"] for p in pairs),
        "in_process_ttft_ms": 1000 * med(p["in_process"]["ttft_s"] for p in pairs),
        "http_ttft_ms": 1000 * med(p["http"]["ttft_s"] for p in pairs),
        "client_cpu_us_per_token": med(p["http"]["client_cpu_us_per_token"] for p in pairs),
        # CPU time per token: the anchor's process against the server's (the engine's thread, the event loop and
        # what HTTP costs); steadier than tokens/s when other jobs share the cores, but ticks are 10 ms coarse
        "in_process_cpu_ms_per_token": med(p["in_process"]["cpu_ms_per_token"] for p in pairs),
        "server_cpu_ms_per_token": med(p["http"]["server_cpu_ms_per_token"] for p in pairs),
        "concurrent_clients": args.clients,
        "concurrent_aggregate_over_one_client": med(c["aggregate_over_one_client"] for c in crowds),
        "concurrent_aggregate_tokens_per_s": med(c["aggregate_tokens_per_s"] for c in crowds),
        "concurrent_truncated_or_failed": sum(c["truncated_or_failed"] for c in crowds),
        "load_average_1min": {
            "before": load_before[0],
            "after": loadavg(),
            "median_during": med(p["load"] for p in pairs + crowds),
        },  # fmt: skip
    }
    goals = {
        "throughput_ratio >= 0.97": summary["throughput_ratio"] >= 0.97,
        "added_ttft_ms <= 10": summary["added_ttft_ms"] <= 10,
        f"{args.clients} clients: aggregate >= one client's": summary["concurrent_aggregate_over_one_client"] >= 1,
        f"{args.clients} clients: none truncated": summary["concurrent_truncated_or_failed"] == 0,
    }
    report = {
        "benchmark": "serve",
        "model": {
            "architecture": "llama",
            "hidden": args.hidden,
            "layers": args.layers,
            "parameters": params,
            "gguf": "f16",
        },  # fmt: skip
        "settings": {
            "tokens": args.tokens,
            "rounds": args.rounds,
            "threads": args.threads,
            "parallel": args.parallel or "default",
            "clients": args.clients,
            "concurrent_rounds": args.concurrent_rounds,
            "prompt_chars": len(prompt_for(0)),
        },  # fmt: skip
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "summary": summary,
        "goals": goals,
        "pairs": [{**p, "http": {k: v for k, v in p["http"].items()}} for p in pairs],
        "concurrent": crowds,
    }
    print(f"\n{'(medians)':24}{'tokens/s':>10}{'TTFT ms':>10}")
    print(f"{'in-process llama.cpp':24}{summary['in_process_tokens_per_s']:10.1f}{summary['in_process_ttft_ms']:10.1f}")
    print(f"{'HTTP (llmforge serve)':24}{summary['http_tokens_per_s']:10.1f}{summary['http_ttft_ms']:10.1f}")
    print(f"throughput ratio HTTP/in-process {summary['throughput_ratio']:.3f} (median of {len(pairs)} pairs; goal "
          f">= 0.97), added TTFT {summary['added_ttft_ms']:.1f} ms (goal <= 10)")  # fmt: skip
    print(
        f"CPU per token: in-process {summary['in_process_cpu_ms_per_token']:.2f} ms, server "
        f"{summary['server_cpu_ms_per_token']:.2f} ms; the HTTP client {summary['client_cpu_us_per_token']:.0f} us"
    )
    for c in crowds:
        print(f"{c['clients']} clients: aggregate {c['aggregate_tokens_per_s']:.1f} tok/s vs one client "
              f"{c['one_client_tokens_per_s']:.1f} = {c['aggregate_over_one_client']:.2f}x, complete "
              f"{c['complete']}/{c['clients']}, TTFT median {1000 * c['ttft_median_s']:.0f} ms max "
              f"{1000 * c['ttft_max_s']:.0f} ms")  # fmt: skip
    la = summary["load_average_1min"]
    print(f"load average (1 min): {la['before']:.2f} before, {la['median_during']:.2f} during, {la['after']:.2f} after")
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISS'} {goal}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
