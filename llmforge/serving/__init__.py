"""`llmforge serve`: an OpenAI-compatible HTTP server (llama.cpp, transformers or vLLM engine) with a chat page.

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
    if serve.engine in ("auto", "vllm") and target.engine == "transformers":
        from llmforge.serving import vllm_engine

        target = vllm_engine.choose(target, serve.engine, vllm_engine.unavailable())
    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    if target.engine == "vllm":
        require_extra("serving with vLLM", "vllm", "vllm", "transformers")
    elif target.engine == "llamacpp":
        require_extra("serving a GGUF file", "llamacpp", "llama_cpp")
    else:
        require_extra("serving a transformers model", "train", "torch", "transformers", "safetensors")
    return target


def several(serve: ServeConfig) -> bool:
    """Whether this server serves more than the one model `serve.model` names (or the default picks)."""
    return bool(serve.models or serve.variants)


def resolve_lineup(model: ModelConfig, serve: ServeConfig, workspace: Workspace):
    """(targets, variants): every model of a server with serve.models or serve.variants, resolved and checked
    (extras, serve.memory_limit_mb) before anything loads; a bad entry is a UsageError naming it."""
    from llmforge.errors import UsageError, require_extra
    from llmforge.serving.target import resolve_lineup as resolve
    from llmforge.serving.target import weights_bytes

    targets, variants = resolve(model.name, serve, workspace)
    if serve.engine == "vllm":
        # vLLM takes serve.vllm.gpu_memory_utilization of the GPU for each engine: one model per server. With
        # several models `auto` keeps transformers for HF folders.
        if len(targets) > 1:
            raise UsageError(
                f"serve.engine vllm: serves one model per server, and this one has {len(targets)}",
                hint="run one `llmforge serve` per model, or use --engine auto",
            )
        from llmforge.serving import vllm_engine

        targets = [vllm_engine.choose(targets[0], "vllm", vllm_engine.unavailable())]
    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    engines = {t.engine for t in targets}
    if "vllm" in engines:
        require_extra("serving with vLLM", "vllm", "vllm", "transformers")
    if "llamacpp" in engines:
        require_extra("serving a GGUF file", "llamacpp", "llama_cpp")
    if "transformers" in engines:
        require_extra("serving a transformers model", "train", "torch", "transformers", "safetensors")
    if serve.memory_limit_mb is not None:
        for t in targets:
            size_mb = weights_bytes(t) / 1e6
            if size_mb > serve.memory_limit_mb:
                raise UsageError(
                    f"serve.memory_limit_mb: {t.name} ({t.path}) alone takes {size_mb:,.0f} MB, more than the "
                    f"limit of {serve.memory_limit_mb:,} MB",
                    hint="raise serve.memory_limit_mb or serve a smaller quantization",
                )
    return targets, variants


def load_engine(model: ModelConfig, serve: ServeConfig, workspace: Workspace,
                progress: Callable[[str], None] | None = None):
    from llmforge.serving import engines

    target = resolve_target(model, serve, workspace)
    if progress is not None:  # loading is the slow part of a start-up: say what before it begins
        progress(f"loading {target.path} with the {target.engine} engine")
    return engines.load(
        target, context_length=serve.context_length, threads=serve.threads, dtype=model.dtype, parallel=serve.parallel,
        vllm=serve.vllm.model_dump(),
    )  # fmt: skip


def build_app(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None):
    """The FastAPI application (for tests and embedding). One model loads now unless an engine is given; with
    serve.models or serve.variants each loads on its first request (a given engine is served as loaded)."""
    from llmforge.errors import require_extra

    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")
    from llmforge.serving import engines
    from llmforge.serving.api import create_app
    from llmforge.serving.models import Models
    from llmforge.serving.target import Target

    retriever = None
    if serve.retrieval.enabled:  # before any engine: a missing documents folder fails without loading a model
        from llmforge.retrieval import open_docs

        retriever = open_docs(serve.retrieval, workspace)
    if several(serve):
        targets, variants = resolve_lineup(model, serve, workspace)
    else:
        if engine is None:
            engine = load_engine(model, serve, workspace)
        targets, variants = [Target(engine.engine, Path(engine.path), engine.name)], []

    def load(target: Target):
        return engines.load(target, context_length=serve.context_length, threads=serve.threads, dtype=model.dtype,
                            parallel=serve.parallel, vllm=serve.vllm.model_dump())  # fmt: skip

    memory_limit = serve.memory_limit_mb * 1_000_000 if serve.memory_limit_mb is not None else None
    models = Models(targets, load, max_queue=serve.max_queue, max_loaded=serve.max_loaded, memory_limit=memory_limit,
                    loaded=engine)  # fmt: skip
    return create_app(models, variants, serve, workspace.conversations_dir, retriever)


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

    if several(serve):  # each model loads on its first request; a bad entry fails here, before the port opens
        engine = None
        targets, _ = resolve_lineup(model, serve, workspace)
        if progress is not None:
            progress(f"serving {len(targets)} models, each loaded on its first request")
    else:
        engine = load_engine(model, serve, workspace, progress)
        targets = None
    if serve.retrieval.enabled and progress is not None:
        progress(f"indexing the documents in {serve.retrieval.docs} (only files changed since the last start)")
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
        if engine is not None:
            engine.close()
        raise LlmforgeError(
            f"cannot listen on {serve.host}:{serve.port}: {exc.strerror}", hint="pick another with --port"
        ) from None
    port = sock.getsockname()[1]
    if serve.log_conversations:
        _write_manifest(serve, workspace, engine, targets)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        host = f"[{serve.host}]" if ":" in serve.host else serve.host
        served = [(engine.name, engine.engine, engine.path)] if engine else [(t.name, t.engine, t.path) for t in targets]
        on_ready(
            ServeInfo(
                url=f"http://{host}:{port}",
                model=", ".join(name for name, _, _ in served),
                engine=", ".join(sorted({kind for _, kind, _ in served})),
                path=", ".join(str(Path(path)) for _, _, path in served),
                api_key_required=serve.api_key is not None,
                log_dir=str(workspace.conversations_dir) if serve.log_conversations else None,
            )
        )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if engine is not None:
            engine.close()


def _write_manifest(serve: ServeConfig, workspace: Workspace, engine, targets=None) -> None:
    """serve/manifest.json: which model wrote the conversation logs beside it (the key stays masked)."""
    import json

    from llmforge import manifest
    from llmforge.atomic import write_json

    if engine is None:  # several models: each log record names its own
        models = [{"name": t.name, "engine": t.engine, "path": str(t.path)} for t in targets]
        body = manifest.build("serve", {}, manifest.Timer(), models=models, config=serve.model_dump(mode="json"))
        write_json(workspace.serve_manifest, body)
        return

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
