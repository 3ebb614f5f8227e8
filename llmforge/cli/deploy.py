"""`llmforge deploy ollama|list|show|remove`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, ForceOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table, warn

app = typer.Typer(
    help="Register an exported GGUF with Ollama under a Modelfile that matches training, and manage deployments.\n\n"
    "Example:  llmforge deploy ollama --name support-bot --quant q4_k_m",
    no_args_is_help=True,
)

HostOption = Annotated[
    Optional[str],
    typer.Option("--host", help="Ollama address (default: deploy.host, else $OLLAMA_HOST, else 127.0.0.1:11434)."),
]


@app.command("ollama")
def ollama_cmd(
    export: Annotated[
        Optional[str],
        typer.Argument(help="Export run name, <run>/<quant>, or a .gguf path (default: the newest export)."),
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Ollama model name (default: project name).")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Which GGUF of the export, e.g. q4_k_m.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt for the Modelfile.")] = None,
    host: HostOption = None,
    dry_run: DryRunOption = False,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Write deploy/<name>/Modelfile, register the GGUF with Ollama, and check that it answers and stops cleanly.

    Example:  llmforge deploy ollama --name support-bot --quant q4_k_m --system "You answer briefly."
    """
    from llmforge.deployment import deploy_ollama

    loaded = load(config, set_, deploy__name=name, deploy__quant=quant, deploy__system=system, deploy__host=host)
    cfg = loaded.config
    result = deploy_ollama(
        cfg.deploy,
        workspace_of(loaded),
        export=export,
        name=cfg.deploy.name or cfg.project.name,
        dry_run=dry_run,
        force=force,
    )
    if json_:
        print_json(result.to_dict())
        return
    if export is None:  # say which export the default picked: the newest finished one
        console.print(f"gguf: {escape(str(result.gguf))} (the newest finished export; name another as EXPORT)",
                      soft_wrap=True)
    for message in result.warnings:
        warn(message)
    for item in result.caveats:
        warn(f"caveat {item['id']}: {item['text']}")
    family = result.family or "none (embedded: Ollama uses the GGUF's template)"
    if result.variant:
        family += f" ({result.variant})"
    status = f" [{result.template_status}]" if result.template_status else ""
    console.print(f"template: {escape(family)}{escape(status)}; stops: {escape(', '.join(result.stop))}")
    if result.dry_run:
        console.print(f"wrote {escape(str(result.modelfile))} (dry run: nothing was contacted)", soft_wrap=True)
        console.print(f"register it with:  {escape(result.create_command)}", soft_wrap=True)
        return
    console.print(f"registered [bold]{escape(result.name)}[/] at {escape(result.host or '')} from {result.gguf.name}")
    if result.check is not None:
        console.print(f"check: answered {escape(repr(result.check['content'][:80]))} and stopped cleanly")
    console.print(f"chat with it:  {escape(result.run_command)}")


@app.command("list")
def list_cmd(config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """List this workspace's deployments with the export they came from.

    Example:  llmforge deploy list --json
    """
    from llmforge.deployment import list_deployments

    rows = list_deployments(workspace_of(load(config, set_)))
    if json_:
        print_json(rows)
        return
    if not rows:
        console.print("no deployments yet: llmforge deploy ollama --name NAME")
        return
    from rich.table import Table

    table = Table(title="deployments")
    for column in ("name", "export", "family", "caveats", "host", "check", "recorded"):
        # names are what a user copies into the next command: a narrow terminal folds them, never cuts them
        table.add_column(column, overflow="fold" if column in ("name", "export") else "ellipsis")
    for r in rows:
        check = {True: "ok", False: "FAILED", None: "-"}[r["check_ok"]]
        table.add_row(
            r["name"], r["export"] or "", r["family"] or "embedded", ", ".join(r["caveats"]) or "-", r["host"] or "",
            check, r["recorded_at"],
        )  # fmt: skip
    print_table(table)


@app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="Deployment (Ollama model) name.")],
    host: HostOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Show a deployment: its lineage, Modelfile, and whether Ollama still has it.

    Example:  llmforge deploy show support-bot
    """
    from llmforge.deployment import show_deployment

    info = show_deployment(workspace_of(load(config, set_)), name, host=host)
    if json_:
        print_json(info)
        return
    record = info["record"] or {}
    console.print(f"[bold]{escape(name)}[/]  lineage: {escape(' -> '.join(record.get('lineage') or []) or '?')}")
    live = info["ollama"]
    state = {True: "registered", False: "NOT registered", None: f"unknown ({live.get('error')})"}[live["registered"]]
    console.print(f"ollama at {escape(live['host'])}: {escape(state)}")
    for item in (info["manifest"] or {}).get("caveats") or [{"id": c, "text": ""} for c in record.get("caveats") or []]:
        console.print(f"caveat {escape(item['id'])}" + (f": {escape(item['text'])}" if item["text"] else ""))
    if info["modelfile"]:
        console.print(info["modelfile"], markup=False, highlight=False, end="", soft_wrap=True)


@app.command("remove")
def remove_cmd(
    name: Annotated[str, typer.Argument(help="Deployment (Ollama model) name.")],
    host: HostOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Delete a deployed model from Ollama and forget it in this workspace.

    Example:  llmforge deploy remove support-bot
    """
    from llmforge.deployment import remove_deployment

    result = remove_deployment(workspace_of(load(config, set_)), name, host=host)
    if json_:
        print_json(result)
        return
    where = "deleted from" if result["deleted_from_ollama"] else "was already gone from"
    console.print(f"{escape(name)}: {where} Ollama at {escape(result['host'])}; workspace record removed")
