"""`llmforge serve`: an OpenAI-compatible HTTP server (llama.cpp or transformers engine) with a chat page.

The public verbs live here; the implementation modules (FastAPI, uvicorn, the engines) are imported inside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.config.model import ModelConfig
from llmforge.config.serve import ServeConfig
from llmforge.workspace import Workspace


@dataclass(frozen=True)
class ServeInfo:
    """What `serve` is about to serve, handed to `on_ready` before it blocks."""

    url: str
    model: str
    engine: str
    path: str
    api_key_required: bool
    log_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_host(serve: ServeConfig) -> str | None:
    """Refuse (UsageError, exit 2) to serve a non-loopback host without an API key unless serve.insecure says so;
    then return the warning to show. None when the host is loopback or a key is required."""
    from llmforge.errors import UsageError

    key = serve.api_key.get_secret_value() if serve.api_key is not None else ""
    if key.strip() or _is_loopback(serve.host):
        return None
    host = serve.host.strip("[]")
    where = f"[{host}]:{serve.port}" if ":" in host else f"{host or 'every address'}:{serve.port}"
    if not serve.insecure:
        raise UsageError(
            f"serve.host {where} is reachable from other machines and no API key is set: anyone who can reach it "
            "could use the model",
            hint="set a key (--api-key KEY or LLMFORGE_SERVE__API_KEY), keep --host 127.0.0.1, or pass --insecure "
            "to serve it open anyway",
        )
    return f"serving on {where} WITHOUT an API key (--insecure): anyone who can reach this address can use the model"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another name: it may resolve anywhere, so it counts as reachable
        return False


def resolve_target(model: ModelConfig, serve: ServeConfig, workspace: Workspace):
    """Which file or folder would be served, with which engine (no model is loaded). Raises MissingExtraError when
    this install lacks what serving it needs, so `serve --dry-run` fails exactly where the real run would."""
    from llmforge.errors import require_extra
    from llmforge.serving.target import resolve

    target = resolve(model.name, serve.model, serve.engine, workspace)
    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    if target.engine == "llamacpp":
        require_extra("serving a GGUF file", "llamacpp", "llama_cpp")
    else:
        require_extra("serving a transformers model", "train", "torch", "transformers", "safetensors")
    return target


def load_engine(model: ModelConfig, serve: ServeConfig, workspace: Workspace,
                progress: Callable[[str], None] | None = None):
    from llmforge.serving import engines

    target = resolve_target(model, serve, workspace)
    if progress is not None:  # loading is the slow part of a start-up: say what before it begins
        progress(f"loading {target.path} with the {target.engine} engine")
    return engines.load(
        target, context_length=serve.context_length, threads=serve.threads, dtype=model.dtype, parallel=serve.parallel
    )


def build_app(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None):
    """The FastAPI application (for tests and embedding); loads the engine unless one is given."""
    from llmforge.errors import require_extra

    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    from llmforge.serving.api import create_app

    if engine is None:
        engine = load_engine(model, serve, workspace)
    return create_app(engine, serve, workspace.conversations_dir)


def serve(
    model: ModelConfig,
    serve: ServeConfig,
    workspace: Workspace,
    *,
    on_ready: Callable[[ServeInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Load the model and serve it until interrupted (Ctrl-C). `progress` gets a line per start-up phase before
    `on_ready` gets the address."""
    from llmforge.errors import LlmforgeError, require_extra

    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    check_host(serve)  # the CLI shows its warning before the model loads; other callers are refused here too
    import uvicorn

    engine = load_engine(model, serve, workspace, progress)
    app = build_app(model, serve, workspace, engine=engine)
    import socket

    # Bind first so a busy port fails before the banner, and port 0 reports the port it got.
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets that say they
    # are TCP; without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    family = socket.AF_INET6 if ":" in serve.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((serve.host, serve.port))
    except OSError as exc:
        sock.close()
        engine.close()
        raise LlmforgeError(
            f"cannot listen on {serve.host}:{serve.port}: {exc.strerror}", hint="pick another with --port"
        ) from None
    port = sock.getsockname()[1]
    if serve.log_conversations:
        _write_manifest(serve, workspace, engine)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        host = f"[{serve.host}]" if ":" in serve.host else serve.host
        on_ready(
            ServeInfo(
                url=f"http://{host}:{port}",
                model=engine.name,
                engine=engine.engine,
                path=str(Path(engine.path)),
                api_key_required=serve.api_key is not None,
                log_dir=str(workspace.conversations_dir) if serve.log_conversations else None,
            )
        )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        engine.close()


def _write_manifest(serve: ServeConfig, workspace: Workspace, engine) -> None:
    """serve/manifest.json: which model wrote the conversation logs beside it (the key stays masked)."""
    import json

    from llmforge import manifest
    from llmforge.atomic import write_json

    # The export's manifest already holds the GGUF's sha256; hashing gigabytes at every start would be slow.
    sha256 = None
    export_manifest = Path(engine.path).parent / "manifest.json"
    if engine.engine == "llamacpp" and export_manifest.is_file():
        try:
            files = json.loads(export_manifest.read_text(encoding="utf-8")).get("files", [])
            sha256 = next((f.get("sha256") for f in files if f.get("path") == Path(engine.path).name), None)
        except (ValueError, AttributeError):
            sha256 = None
    body = manifest.build("serve", {}, manifest.Timer(), model=engine.name, engine=engine.engine,
                          model_path=str(engine.path), model_sha256=sha256,
                          config=serve.model_dump(mode="json"))  # fmt: skip
    write_json(workspace.serve_manifest, body)
