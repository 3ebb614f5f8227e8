"""Run a llmforge app under uvicorn in a background thread on 127.0.0.1 with a free port, for serving tests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from llmforge.config import load_config
from llmforge.serving import build_app
from llmforge.workspace import Workspace


def serve_config(*sets: str):
    return load_config(None, list(sets), {}).config


@contextlib.contextmanager
def running(app, startup_timeout: float = 30.0) -> Iterator[str]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as serve() does
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextlib.contextmanager
def serving(engine, workspace_root, *sets: str) -> Iterator[str]:
    """Serve an already loaded engine with the given `--set` style overrides."""
    cfg = serve_config(*sets)
    app = build_app(cfg.model, cfg.serve, Workspace(workspace_root), engine=engine)
    with running(app) as url:
        yield url


def export_gguf(model_dir: Path, workspace_root: Path, quant: str = "f16", verify: bool = True) -> Path:
    """The GGUF of an HF folder, made by the export stage's public verb into a workspace (export/<run>/...)."""
    from llmforge.export import export_gguf as export_verb

    cfg = serve_config(f"export.quant=[{quant}]", f"export.verify={str(verify).lower()}")
    workspace = Workspace(Path(workspace_root))
    body = export_verb(cfg.model, cfg.export, workspace, Path(model_dir))
    return Path(body.output_dir) / body.files[0]["path"]


def wait_for_metric(url: str, name: str, at_least: float, seconds: float = 10) -> str:
    """Poll /metrics until `name` reaches `at_least` (bounded in time); returns the last metrics text."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        text = httpx.get(url + "/metrics").text
        if metric(text, name) >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def metric(text: str, name: str) -> float:
    """Sum of the samples of one metric (all label sets) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_banner(proc, seconds: float = 60) -> tuple[dict, str]:
    """The JSON that `llmforge serve --json` prints just before it listens (and its text), once /health answers.
    Kills the process and fails with its output when no banner comes."""
    import httpx

    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (lines and lines[-1].startswith("}")):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    text = "".join(lines)
    if not lines or not lines[-1].startswith("}"):
        proc.kill()
        raise AssertionError(f"serve did not start: {text} {proc.stderr.read()}")
    info = json.loads(text)
    for _ in range(100):
        try:
            if httpx.get(info["url"] + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return info, text
