"""`llmforge serve`: an OpenAI-compatible HTTP API, a chat page and metrics for the newest export or a model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, warn


def serve(
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="GGUF file, model folder, run or export name (default: newest export).",
                     show_default=False),
    ] = None,
    engine: Annotated[
        Optional[str], typer.Option("--engine", help="auto, llamacpp or transformers.", show_default=False)
    ] = None,
    host: Annotated[
        Optional[str],
        typer.Option("--host", help="Address to bind (default 127.0.0.1; any other needs --api-key or --insecure)."),
    ] = None,
    port: Annotated[Optional[int], typer.Option("--port", "-p", help="Port (default 8000).")] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option("--api-key", help="Require this Bearer key (or set LLMFORGE_SERVE__API_KEY).",
                     show_default=False),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow a non-loopback --host without an API key (anyone reaching it can use "
                     "the model).", show_default=False),
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    dry_run: DryRunOption = False,
    json_: JsonOption = False,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API with streaming, a chat page at / and /metrics.

    Example:  llmforge serve --model llmforge-work/demo/export/lora-1/demo-q8_0.gguf --port 8000
    """  # fmt: skip
    from llmforge.serving import check_host, resolve_target
    from llmforge.serving import serve as serve_verb

    loaded = load(
        config, set_, serve__model=model, serve__engine=engine, serve__host=host, serve__port=port,
        serve__api_key=api_key, serve__insecure=True if insecure else None,
    )  # fmt: skip
    cfg = loaded.config
    workspace = workspace_of(loaded)
    exposed = check_host(cfg.serve)
    if exposed:
        warn(exposed)
    if dry_run:
        target = resolve_target(cfg.model, cfg.serve, workspace)
        plan = {"engine": target.engine, "model": target.name, "path": str(target.path),
                "base_model": target.base_model, "host": cfg.serve.host, "port": cfg.serve.port,
                "api_key_required": cfg.serve.api_key is not None, "warning": exposed}  # fmt: skip
        if json_:
            print_json(plan)
        else:
            console.print(f"would serve {escape(str(target.path))} with {target.engine} on {cfg.serve.host}:{cfg.serve.port}")
        return

    def ready(info) -> None:
        if json_:
            print_json(info.to_dict())
            return
        console.print(f"[bold]serving[/] {escape(info.model)} ({info.engine}) from {escape(info.path)}")
        console.print(f"  API        {info.url}/v1   (OpenAI-compatible{', Bearer key required' if info.api_key_required else ''})")
        console.print(f"  chat page  {info.url}/")
        console.print(f"  metrics    {info.url}/metrics")
        if info.log_dir:
            console.print(f"  logging conversations to {escape(info.log_dir)}")
        console.print("[dim]Ctrl-C stops the server.[/]")

    try:
        serve_verb(cfg.model, cfg.serve, workspace, on_ready=ready,
                   progress=None if json_ else lambda line: console.print(f"serve: {escape(line)}"))
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: not an error
        pass
    if not json_:
        console.print("[dim]server stopped[/]")
