"""The serve stage in two parts: plan() decides what would be served (the models and variants resolved, each
engine chosen, the install and serve.memory_limit_mb checked, the host refused or warned about; what --dry-run
shows) without loading a model or opening a socket, and run(plan) loads, binds the port and serves until stopped.

Nothing here imports FastAPI, uvicorn or an engine's library at module level: plan() stays light, and run() imports
them when it starts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.config.model import ModelConfig
from llmforge.config.serve import ServeConfig
from llmforge.errors import LlmforgeError, UsageError, require_extra
from llmforge.serving.target import Target, Variant
from llmforge.workspace import Workspace


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show."""

    model: ModelConfig
    serve: ServeConfig
    workspace: Workspace
    engine: Any = None  # an engine already loaded (tests, embedding): served as it is


@dataclass(frozen=True)
class ServePlan:
    """A server decided but not started: what `llmforge serve --dry-run` shows, and all `run` needs.
    as_dict() is the dry run's JSON, key for key: one model's facts, or with serve.models or serve.variants
    (`several`) the list of models and the variants."""

    models: list[Target]  # resolved, in the order served; one unless `several`
    variants: list[Variant]
    several: bool  # serve.models or serve.variants: each model loads on its first request
    variant_group: str | None  # the model name the variants answer to; None without variants
    host: str
    port: int
    api_key_required: bool
    warning: str | None  # serving a non-loopback host without a key (--insecure): said before anything loads
    retrieval_docs: str | None  # serve.retrieval's documents folder, indexed as the server starts; None when off
    log_dir: str | None  # where conversations are logged; None unless serve.log_conversations
    prepared: _Prepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        shown = {"host": self.host, "port": self.port, "api_key_required": self.api_key_required,
                 "warning": self.warning}  # fmt: skip
        if self.several:
            return {
                "models": [{"engine": t.engine, "model": t.name, "path": str(t.path), "base_model": t.base_model}
                           for t in self.models],
                "variants": [{"name": v.name, "model": v.model, "weight": v.weight} for v in self.variants],
                "variant_group": self.variant_group, **shown,
            }  # fmt: skip
        t = self.models[0]
        return {"engine": t.engine, "model": t.name, "path": str(t.path), "base_model": t.base_model, **shown}


@dataclass(frozen=True)
class ServeInfo:
    """What `run` is about to serve, handed to `on_ready` once the port is bound (`serve --json` prints it)."""

    url: str
    model: str
    engine: str
    path: str
    api_key_required: bool
    log_dir: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServeResult:
    """A server that has stopped (Ctrl-C or a signal): where it listened, what it served, the manifest it wrote."""

    url: str
    models: list[str]
    manifest: str | None  # serve/manifest.json, written with serve.log_conversations

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "models": self.models, "manifest": self.manifest}


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------


def plan(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None) -> ServePlan:
    """Decide the server: refuse an open host without a key (unless serve.insecure), resolve every model and its
    engine, and check this install and serve.memory_limit_mb, so a dry run fails exactly where the real run
    would. Loads no model, opens no socket. `engine`: one already loaded, served as it is (not resolved again)."""
    return _decide(model, serve, workspace, engine, warning=check_host(serve))


def plan_app(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None) -> ServePlan:
    """The plan of an application someone else binds (tests, embedding; build_app): the same as plan() but the
    host is not checked, since this code opens no port."""
    return _decide(model, serve, workspace, engine, warning=None)


def _decide(model: ModelConfig, serve: ServeConfig, workspace: Workspace, engine, *, warning: str | None) -> ServePlan:
    several = bool(serve.models or serve.variants)
    if several:
        targets, variants = resolve_lineup(model, serve, workspace)
    elif engine is not None:
        targets, variants = [Target(engine.engine, Path(engine.path), engine.name)], []
    else:
        targets, variants = [resolve_target(model, serve, workspace)], []
    return ServePlan(
        models=targets,
        variants=variants,
        several=several,
        variant_group=serve.variant_group if variants else None,
        host=serve.host,
        port=serve.port,
        api_key_required=serve.api_key is not None,
        warning=warning,
        retrieval_docs=str(serve.retrieval.docs) if serve.retrieval.enabled else None,
        log_dir=str(workspace.conversations_dir) if serve.log_conversations else None,
        prepared=_Prepared(model=model, serve=serve, workspace=workspace, engine=engine),
    )


def check_host(serve: ServeConfig) -> str | None:
    """Refuse (UsageError, exit 2) to serve a non-loopback host without an API key unless serve.insecure says so;
    then return the warning to show. None when the host is loopback or a key is required."""
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
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another name: it may resolve anywhere, so it counts as reachable
        return False


def resolve_target(model: ModelConfig, serve: ServeConfig, workspace: Workspace) -> Target:
    """Which file or folder would be served, with which engine. Raises MissingExtraError when this install lacks
    what serving it needs."""
    from llmforge.serving.target import resolve

    _require_serve_extra()
    target = resolve(model.name, serve.model, serve.engine, workspace)
    if serve.engine in ("auto", "vllm") and target.engine == "transformers":
        from llmforge.serving import vllm_engine

        target = vllm_engine.choose(target, serve.engine, vllm_engine.unavailable())
    _require_engines([target])
    return target


def resolve_lineup(model: ModelConfig, serve: ServeConfig, workspace: Workspace) -> tuple[list[Target], list[Variant]]:
    """(targets, variants): every model of a server with serve.models or serve.variants, resolved and checked
    (extras, serve.memory_limit_mb); a bad entry is a UsageError naming it."""
    from llmforge.serving.target import resolve_lineup as resolve

    _require_serve_extra()
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
    _require_engines(targets)
    if serve.memory_limit_mb is not None:
        _check_memory_limit(targets, serve.memory_limit_mb)
    return targets, variants


def _require_serve_extra() -> None:
    # before any model resolves: an install without the serve extra hears that first, whatever it was asked to serve
    require_extra("llmforge serve", "serve", "fastapi", "uvicorn")


def _require_engines(targets: list[Target]) -> None:
    """Each chosen engine's libraries (found, not imported)."""
    engines = {t.engine for t in targets}
    if "vllm" in engines:
        require_extra("serving with vLLM", "vllm", "vllm", "transformers")
    if "llamacpp" in engines:
        require_extra("serving a GGUF file", "llamacpp", "llama_cpp")
    if "transformers" in engines:
        require_extra("serving a transformers model", "train", "torch", "transformers", "safetensors")


def _check_memory_limit(targets: list[Target], limit_mb: int) -> None:
    from llmforge.serving.target import weights_bytes

    for t in targets:
        size_mb = weights_bytes(t) / 1e6
        if size_mb > limit_mb:
            raise UsageError(
                f"serve.memory_limit_mb: {t.name} ({t.path}) alone takes {size_mb:,.0f} MB, more than the "
                f"limit of {limit_mb:,} MB",
                hint="raise serve.memory_limit_mb or serve a smaller quantization",
            )


# ----------------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------------


def run(
    plan: ServePlan,
    *,
    on_ready: Callable[[ServeInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ServeResult:
    """Load the model (several models load on their first request), index the documents, bind the port and serve
    until stopped (Ctrl-C or SIGTERM). `progress` gets a line per start-up phase before `on_ready` gets the
    address. Raises LlmforgeError when the port cannot be bound."""
    import uvicorn

    engine = _load_first(plan, progress)
    owned = engine if plan.prepared.engine is None else None  # closed here; a caller's engine stays the caller's
    try:
        if plan.retrieval_docs is not None and progress is not None:
            progress(f"indexing the documents in {plan.retrieval_docs} (only files changed since the last start)")
        app = build_app(plan, engine=engine)
        sock = _bind(plan)
        try:
            url = _url(plan, sock.getsockname()[1])
            manifest = _write_manifest(plan, engine) if plan.log_dir is not None else None
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
            served = _served(plan, engine)
            if on_ready is not None:
                on_ready(_info(plan, url, served))
            server.run(sockets=[sock])
        finally:
            sock.close()
    finally:
        if owned is not None:
            owned.close()
    return ServeResult(url=url, models=[name for name, _, _ in served], manifest=manifest)


def _load_first(plan: ServePlan, progress: Callable[[str], None] | None):
    """The one model, loaded now (loading is the slow part of a start-up: say what before it begins); None when
    several models each load on their first request."""
    if plan.prepared.engine is not None:
        return plan.prepared.engine
    if plan.several:
        if progress is not None:
            progress(f"serving {len(plan.models)} models, each loaded on its first request")
        return None
    target = plan.models[0]
    if progress is not None:
        progress(f"loading {target.path} with the {target.engine} engine")
    return _loader(plan)(target)


def _loader(plan: ServePlan) -> Callable[[Target], Any]:
    model, serve = plan.prepared.model, plan.prepared.serve
    return lambda target: load(target, model, serve)


def load(target: Target, model: ModelConfig, serve: ServeConfig):
    """One model's engine, loaded with serve's settings (the slow part of a start-up)."""
    from llmforge.serving import engines

    return engines.load(target, context_length=serve.context_length, threads=serve.threads, dtype=model.dtype,
                        parallel=serve.parallel, vllm=serve.vllm.model_dump())  # fmt: skip


def build_app(plan: ServePlan, *, engine=None):
    """The FastAPI application for the plan: the documents indexed (before any model loads, so a missing folder
    fails first), then `engine` served as loaded, the one model loaded now, or with several each on first use."""
    _require_serve_extra()
    from llmforge.serving.api import create_app
    from llmforge.serving.models import Models

    p = plan.prepared
    retriever = _open_docs(plan)
    engine = engine if engine is not None else p.engine
    targets = plan.models
    if not plan.several:
        if engine is None:
            engine = _loader(plan)(plan.models[0])
        targets = [Target(engine.engine, Path(engine.path), engine.name)]
    serve = p.serve
    memory_limit = serve.memory_limit_mb * 1_000_000 if serve.memory_limit_mb is not None else None
    models = Models(targets, _loader(plan), max_queue=serve.max_queue, max_loaded=serve.max_loaded,
                    memory_limit=memory_limit, loaded=engine)  # fmt: skip
    return create_app(models, plan.variants, serve, p.workspace.conversations_dir, retriever)


def _open_docs(plan: ServePlan):
    if plan.retrieval_docs is None:
        return None
    from llmforge.retrieval import open_docs

    return open_docs(plan.prepared.serve.retrieval, plan.prepared.workspace)


def _bind(plan: ServePlan):
    """The listening socket, bound before the banner so a busy port fails first and port 0 reports the port it
    got. proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for sockets that say
    they are TCP; without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle)."""
    import socket

    family = socket.AF_INET6 if ":" in plan.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((plan.host, plan.port))
    except OSError as exc:
        sock.close()
        raise LlmforgeError(
            f"cannot listen on {plan.host}:{plan.port}: {exc.strerror}", hint="pick another with --port"
        ) from None
    return sock


def _url(plan: ServePlan, port: int) -> str:
    host = f"[{plan.host}]" if ":" in plan.host else plan.host
    return f"http://{host}:{port}"


def _served(plan: ServePlan, engine) -> list[tuple[str, str, Any]]:
    """(name, engine, path) of each model served: the loaded engine's own, or the plan's with several."""
    if engine is not None and not plan.several:
        return [(engine.name, engine.engine, engine.path)]
    return [(t.name, t.engine, t.path) for t in plan.models]


def _info(plan: ServePlan, url: str, served: list[tuple[str, str, Any]]) -> ServeInfo:
    return ServeInfo(
        url=url,
        model=", ".join(name for name, _, _ in served),
        engine=", ".join(sorted({kind for _, kind, _ in served})),
        path=", ".join(str(Path(path)) for _, _, path in served),
        api_key_required=plan.api_key_required,
        log_dir=plan.log_dir,
    )


def _write_manifest(plan: ServePlan, engine) -> str:
    """serve/manifest.json: which model wrote the conversation logs beside it (the key stays masked)."""
    import json

    from llmforge import manifest
    from llmforge.atomic import write_json

    serve, workspace = plan.prepared.serve, plan.prepared.workspace
    if plan.several:  # several models: each log record names its own
        models = [{"name": t.name, "engine": t.engine, "path": str(t.path)} for t in plan.models]
        body = manifest.build("serve", {}, manifest.Timer(), models=models, config=serve.model_dump(mode="json"))
        write_json(workspace.serve_manifest, body)
        return str(workspace.serve_manifest)

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
    return str(workspace.serve_manifest)
