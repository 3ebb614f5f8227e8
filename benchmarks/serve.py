"""Serving overhead: tokens/s and time to first token through `llmforge serve` (HTTP, streaming) against calling
llama.cpp in-process on the same GGUF, plus a concurrency sweep. Prints a table and writes JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/serve.py --out benchmarks/results/serve.json

The model is a randomly initialised Llama (default ~57M parameters: hidden 768, 8 layers) with the test tokenizer,
converted to an f16 GGUF; generation ignores end-of-turn tokens so every run produces exactly --tokens tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

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
    body = export_gguf(cfg.model, cfg.export, workspace, model, name="bench")
    (folder / "bench-f16.gguf").symlink_to(Path(body["output_dir"]) / body["files"][0]["path"])
    (folder / "params.json").write_text(json.dumps(params))
    return folder / "bench-f16.gguf", params


def in_process(llm, prompt_text: str, tokens: int) -> dict:
    """One generation straight on llama.cpp: the same sampling, with detokenization, as the server does."""
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


_clients = threading.local()


def _client() -> httpx.Client:
    # One client per thread, kept: a new httpx client costs 20-50 ms (it builds an SSL context), which is not the
    # server's time. The openai client keeps its connection pool the same way.
    if not hasattr(_clients, "client"):
        _clients.client = httpx.Client(timeout=600)
    return _clients.client


def one_request(url: str, tokens: int, seed: int = 0, prompt: str = PROMPT) -> dict:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "seed": seed, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first = end = None
    n = 0
    with _client().stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                first = first or time.perf_counter()
                end = time.perf_counter()
    assert n == tokens, n
    return {"ttft_s": first - start, "tokens": n, "tokens_per_s": (n - 1) / (end - first), "total_s": end - start,
            "start": start, "end": end}  # fmt: skip


def start_server(gguf: Path, threads: int, parallel: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "llmforge", "serve", "--model", str(gguf), "--port", "0", "--json",
           "-s", f"serve.threads={threads}", "-s", "serve.context_length=512", "-s", "serve.max_tokens_limit=512",
           "-s", f"serve.parallel={parallel}"]  # fmt: skip
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
            httpx.get(url + "/health").raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return proc, url


def sweep(url: str, clients: int, tokens: int, requests_each: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    ready = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        _client()  # made before the clock starts
        ready.wait()
        for j in range(requests_each):
            r = one_request(url, tokens, seed=i * 100 + j, prompt=prompt_for(1000 + i * 100 + j))
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = sorted(r["ttft_s"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "aggregate_tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_median_s": statistics.median(ttfts),
        "ttft_max_s": ttfts[-1],
        "wall_s": wall,
    }


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="engine threads (the HTTP side needs a core too)")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests-each", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4, help="serve.parallel of the server measured (also swept at 1)")
    ap.add_argument("--workdir", type=Path, help="keep the built model here and reuse it on the next run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()

    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="llmforge-bench-") as tmp:
        gguf, params = build_gguf(args.workdir or Path(tmp), args.hidden, args.layers)
        print(f"model: random llama, {params / 1e6:.1f}M parameters, f16 GGUF {gguf.stat().st_size / 1e6:.0f} MB")
        llm = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads,
                              verbose=False)  # fmt: skip
        concurrency = {}
        for parallel in (args.parallel, 1):
            proc, url = start_server(gguf, args.threads, parallel)
            try:
                one_request(url, args.tokens, prompt=prompt_for(-1))  # warm-up
                if parallel == args.parallel:
                    in_process(llm, prompt_for(-2), args.tokens)  # warm-up
                    # alternate in-process and HTTP runs so that load from other processes hits both alike
                    local, http = [], []
                    for k in range(args.runs):
                        local.append(in_process(llm, prompt_for(2 * k), args.tokens))
                        http.append(one_request(url, args.tokens, prompt=prompt_for(2 * k + 1)))
                concurrency[parallel] = [sweep(url, c, args.tokens, args.requests_each)
                                         for c in map(int, args.clients.split(","))]  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(30)
        llm.close()

    summary = {
        "in_process_tokens_per_s": median(local, "tokens_per_s"),
        "http_tokens_per_s": median(http, "tokens_per_s"),
        "in_process_ttft_ms": 1000 * median(local, "ttft_s"),
        "http_ttft_ms": 1000 * median(http, "ttft_s"),
    }
    summary["throughput_ratio"] = summary["http_tokens_per_s"] / summary["in_process_tokens_per_s"]
    # runs alternate, so each pair saw about the same machine load: the median of the pairs' ratios is steadier
    summary["throughput_ratio_median_of_pairs"] = statistics.median(
        h["tokens_per_s"] / p["tokens_per_s"] for p, h in zip(local, http)
    )
    summary["added_ttft_ms_median_of_pairs"] = 1000 * statistics.median(
        h["ttft_s"] - p["ttft_s"] for p, h in zip(local, http)
    )
    summary["added_ttft_ms"] = summary["http_ttft_ms"] - summary["in_process_ttft_ms"]
    report = {
        "benchmark": "serve",
        "model": {"architecture": "llama", "hidden": args.hidden, "layers": args.layers, "parameters": params,
                  "gguf": "f16"},  # fmt: skip
        "settings": {"tokens": args.tokens, "runs": args.runs, "threads": args.threads, "parallel": args.parallel,
                     "prompt_chars": len(prompt_for(0))},  # fmt: skip
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "summary": summary,
        "in_process_runs": local,
        "http_runs": [{k: v for k, v in r.items() if k not in ("start", "end")} for r in http],
        "concurrency": {f"parallel={p}": rows for p, rows in concurrency.items()},
    }
    print(f"{'':24}{'tokens/s':>10}{'TTFT ms':>10}")
    print(f"{'in-process llama.cpp':24}{summary['in_process_tokens_per_s']:10.1f}{summary['in_process_ttft_ms']:10.1f}")
    print(f"{'HTTP (llmforge serve)':24}{summary['http_tokens_per_s']:10.1f}{summary['http_ttft_ms']:10.1f}")
    print(f"throughput ratio {summary['throughput_ratio']:.3f} (median of pairs "
          f"{summary['throughput_ratio_median_of_pairs']:.3f}), added TTFT {summary['added_ttft_ms']:.1f} ms "
          f"(median of pairs {summary['added_ttft_ms_median_of_pairs']:.1f} ms)")  # fmt: skip
    for parallel, rows in concurrency.items():
        print(f"serve.parallel={parallel}" + (" (one request at a time, first come first served)" if parallel == 1 else ""))
        print(f"{'clients':>8}{'agg tok/s':>11}{'TTFT med ms':>13}{'TTFT max ms':>13}")
        for c in rows:
            print(f"{c['clients']:8}{c['aggregate_tokens_per_s']:11.1f}{1000 * c['ttft_median_s']:13.1f}"
                  f"{1000 * c['ttft_max_s']:13.1f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
