"""`llmforge deploy ollama|list|show|remove`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, ForceOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table, warn

app = typer.Typer(
    help="Register an exported GGUF, a GGUF file, a LoRA adapter on its base, or a model already in Ollama under a "
    "Modelfile that matches training, and manage deployments.\n\n"
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
    base: Annotated[
        Optional[str],
        typer.Option("--from", help="A model already in Ollama to build on (FROM), e.g. llama3.2; no training needed."),
    ] = None,
    adapter: Annotated[
        Optional[str],
        typer.Option("--adapter", help="A LoRA run whose `export lora-gguf` adapter goes on top of --from (ADAPTER)."),
    ] = None,
    host: HostOption = None,
    dry_run: DryRunOption = False,
    force: ForceOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Write deploy/<name>/Modelfile, register the model with Ollama, and check that it answers and stops cleanly.

    The model is an export (default: the newest), a .gguf file (its embedded chat template is checked like an
    export's), a model already in Ollama (--from), or a LoRA run's adapter on its base in Ollama (--adapter RUN
    --from BASE; the base must be the model the adapter was trained on).

    Example:  llmforge deploy ollama --name support-bot --quant q4_k_m --system "You answer briefly."

    Example:  llmforge deploy ollama --from llama3.2 --name helper --system "You answer briefly."

    Example:  llmforge deploy ollama --adapter lora-1 --from llama3.2 --name support-bot
    """
    from llmforge import deployment

    loaded = load(config, set_, deploy__name=name, deploy__quant=quant, deploy__system=system, deploy__host=host)
    cfg = loaded.config
    plan = deployment.plan(cfg.deploy, workspace_of(loaded), export=export, base=base, adapter=adapter,
                           name=cfg.deploy.name or cfg.project.name, force=force)  # fmt: skip
    if dry_run:
        deployment.write_modelfile(plan)
        if json_:
            print_json(plan.as_dict())
            return
        _print_modelfile_facts(plan, plan.warnings + plan.unchecked, export is None)
        console.print(f"wrote {escape(str(plan.modelfile))} (dry run: nothing was contacted)", soft_wrap=True)
        console.print(f"register it with:  {escape(plan.create_command)}", soft_wrap=True)
        return
    result = deployment.run(plan)
    if json_:
        print_json(result.as_dict())
        return
    _print_modelfile_facts(result, result.warnings, export is None, base_check=result.base_check)
    made_from = result.gguf.name if result.gguf else result.base or ""
    console.print(f"registered [bold]{escape(result.name)}[/] at {escape(result.host)} from {escape(made_from)}")
    if result.check is not None:
        console.print(f"check: answered {escape(repr(result.check['content'][:80]))} and stopped cleanly")
    console.print(f"chat with it:  {escape(result.run_command)}")


def _print_modelfile_facts(shown, warnings: list[str], newest: bool, base_check: dict | None = None) -> None:
    """What plan and result share: the source, warnings, caveats, FROM (+ ADAPTER), template and stops."""
    if newest and shown.kind == "export":  # say which export the default picked: the newest finished one
        console.print(
            f"gguf: {escape(str(shown.gguf))} (the newest finished export; name another as EXPORT)", soft_wrap=True
        )
    for message in warnings:
        warn(message)
    for item in shown.caveats:
        warn(f"caveat {item['id']}: {item['text']}")
    if shown.base:
        source = f"FROM {shown.base}" + (f" + ADAPTER {shown.adapter}" if shown.adapter else "")
        console.print(escape(source), soft_wrap=True)
    if base_check:
        console.print(f"base check: {escape(', '.join(base_check['compared']))} match the adapter's base")
    inherited = f"inherited from {shown.base}" if shown.base else "embedded: Ollama uses the GGUF's template"
    family = shown.family or f"none ({inherited})"
    if shown.variant:
        family += f" ({shown.variant})"
    status = f" [{shown.template_status}]" if shown.template_status else ""
    stops = ", ".join(shown.stop) or (f"kept from {shown.base}" if shown.base else "none")
    console.print(f"template: {escape(family)}{escape(status)}; stops: {escape(stops)}")


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
    for column in ("name", "kind", "from", "family", "caveats", "host", "check", "recorded"):
        # names are what a user copies into the next command: a narrow terminal folds them, never cuts them
        table.add_column(column, overflow="fold" if column in ("name", "from") else "ellipsis")
    for r in rows:
        check = {True: "ok", False: "FAILED", None: "-"}[r["check_ok"]]
        table.add_row(
            r["name"], r["kind"], " -> ".join(r["lineage"][:-1]) or r["export"] or "",
            r["family"] or ("inherited" if r["base"] else "embedded"), ", ".join(r["caveats"]) or "-", r["host"] or "",
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
