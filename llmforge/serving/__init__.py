"""`llmforge serve`: an OpenAI-compatible HTTP server (llama.cpp, transformers or vLLM engine) with a chat page.

The public verbs live here; the work is serving/stage.py's plan() and run(), imported inside each verb so that
importing this package (and the CLI) loads neither FastAPI, uvicorn nor an engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmforge.config.model import ModelConfig
    from llmforge.config.serve import ServeConfig
    from llmforge.serving.stage import ServeInfo, ServePlan, ServeResult
    from llmforge.serving.target import Target, Variant
    from llmforge.workspace import Workspace


def plan(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None) -> ServePlan:
    """Decide what `serve` would serve (what --dry-run shows) without loading a model or opening a socket: the
    host refused (UsageError) or warned about, every model and its engine resolved, the install and
    serve.memory_limit_mb checked. `engine`: one already loaded, served as it is."""
    from llmforge.serving import stage

    return stage.plan(model, serve, workspace, engine=engine)


def run(
    plan: ServePlan,
    *,
    on_ready: Callable[[ServeInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ServeResult:
    """Load, bind and serve the plan until interrupted (Ctrl-C). `progress` gets a line per start-up phase before
    `on_ready` gets the address."""
    from llmforge.serving import stage

    return stage.run(plan, on_ready=on_ready, progress=progress)


def serve(
    model: ModelConfig,
    serve: ServeConfig,
    workspace: Workspace,
    *,
    on_ready: Callable[[ServeInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ServeResult:
    """run(plan(...)): serve the model until interrupted, for callers with nothing to show in between."""
    return run(plan(model, serve, workspace), on_ready=on_ready, progress=progress)


def build_app(model: ModelConfig, serve: ServeConfig, workspace: Workspace, *, engine=None):
    """The FastAPI application (for tests and embedding). One model loads now unless an engine is given; with
    serve.models or serve.variants each loads on its first request (a given engine is served as loaded). The host
    is not checked: the caller binds the application where it likes."""
    from llmforge.serving import stage

    return stage.build_app(stage.plan_app(model, serve, workspace, engine=engine), engine=engine)


def check_host(serve: ServeConfig) -> str | None:
    """Refuse (UsageError, exit 2) to serve a non-loopback host without an API key unless serve.insecure says so;
    then return the warning to show. None when the host is loopback or a key is required."""
    from llmforge.serving import stage

    return stage.check_host(serve)


def several(serve: ServeConfig) -> bool:
    """Whether this server serves more than the one model `serve.model` names (or the default picks)."""
    return bool(serve.models or serve.variants)


def resolve_target(model: ModelConfig, serve: ServeConfig, workspace: Workspace) -> Target:
    """Which file or folder would be served, with which engine (no model is loaded). Raises MissingExtraError when
    this install lacks what serving it needs, so `serve --dry-run` fails exactly where the real run would."""
    from llmforge.serving import stage

    return stage.resolve_target(model, serve, workspace)


def resolve_lineup(model: ModelConfig, serve: ServeConfig, workspace: Workspace) -> tuple[list[Target], list[Variant]]:
    """(targets, variants): every model of a server with serve.models or serve.variants, resolved and checked
    (extras, serve.memory_limit_mb) before anything loads; a bad entry is a UsageError naming it."""
    from llmforge.serving import stage

    return stage.resolve_lineup(model, serve, workspace)


def load_engine(model: ModelConfig, serve: ServeConfig, workspace: Workspace,
                progress: Callable[[str], None] | None = None):
    """The one model `serve` would serve, resolved and loaded."""
    from llmforge.serving import stage

    target = stage.resolve_target(model, serve, workspace)
    if progress is not None:  # loading is the slow part of a start-up: say what before it begins
        progress(f"loading {target.path} with the {target.engine} engine")
    return stage.load(target, model, serve)
