"""`llmforge serve`: an OpenAI-compatible HTTP API, a chat page and metrics for the newest export or several
models; `llmforge serve report` compares A/B variants from the conversation logs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, warn

app = typer.Typer()


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", "-m", help="GGUF file, model folder, run or export name (default: newest export). "
                     "Repeat it to serve several, chosen by each request's model.", show_default=False),
    ] = None,
    engine: Annotated[
        Optional[str], typer.Option("--engine", help="auto, llamacpp, transformers or vllm.", show_default=False)
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

    Several:  llmforge serve -m lora-1 -m lora-2 -s serve.max_loaded=1   (A/B: serve.variants in the config file)
    """  # fmt: skip
    if ctx.invoked_subcommand is not None:
        return
    from llmforge import serving

    one = model[0] if model and len(model) == 1 else None
    loaded = load(
        config, set_, serve__model=one, serve__models=model if model and len(model) > 1 else None,
        serve__engine=engine, serve__host=host, serve__port=port,
        serve__api_key=api_key, serve__insecure=True if insecure else None,
    )  # fmt: skip
    cfg = loaded.config
    exposed = serving.check_host(cfg.serve)  # warned before the models resolve, so a bad model still shows it
    if exposed:
        warn(exposed)
    plan = serving.plan(cfg.model, cfg.serve, workspace_of(loaded))  # plan.warning is that same warning
    if dry_run:
        if json_:
            print_json(plan.as_dict())
        elif plan.several:
            for t in plan.models:
                console.print(f"would serve {escape(t.name)}: {escape(str(t.path))} with {t.engine} (loaded on first use)")
            for v in plan.variants:
                console.print(f"  variant {escape(v.name)} -> {escape(v.model)}, weight {v.weight:g}")
            console.print(f"on {plan.host}:{plan.port}")
        else:
            target = plan.models[0]
            console.print(f"would serve {escape(str(target.path))} with {target.engine} on {plan.host}:{plan.port}")
        return

    def ready(info) -> None:
        if json_:
            print_json(info.as_dict())
            return
        console.print(f"[bold]serving[/] {escape(info.model)} ({info.engine}) from {escape(info.path)}")
        console.print(f"  API        {info.url}/v1   (OpenAI-compatible{', Bearer key required' if info.api_key_required else ''})")
        console.print(f"  chat page  {info.url}/")
        console.print(f"  metrics    {info.url}/metrics")
        if info.log_dir:
            console.print(f"  logging conversations to {escape(info.log_dir)}")
        console.print("[dim]Ctrl-C stops the server.[/]")

    try:
        serving.run(plan, on_ready=ready,
                    progress=None if json_ else lambda line: console.print(f"serve: {escape(line)}"))
    except KeyboardInterrupt:  # Ctrl-C is how a server is meant to stop: not an error
        pass
    if not json_:
        console.print("[dim]server stopped[/]")


@app.command("report")
def report(
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Compare the A/B variants from serve's conversation logs: requests, tokens, latency, finish reasons, feedback.

    Writes serve/reports/<stamp>/report.json and report.md.

    Example:  llmforge serve report --json
    """
    from llmforge.serving.report import markdown, write

    workspace = workspace_of(load(config, set_))
    body, folder = write(workspace)
    if json_:
        print_json({**body, "output_dir": str(folder)})
        return
    console.print(escape(markdown(body)))
    console.print(f"report: {escape(str(folder / 'report.md'))}")
