"""`llmforge runs list|show`: datasets, runs, exports, deployments and evals in the workspace, with their lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmforge.cli.options import ConfigOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table
from llmforge.errors import UsageError

app = typer.Typer(
    help="Runs, exports and deployments in the workspace and their lineage (dataset -> run -> export -> deployment).\n\n"
    "Example:  llmforge runs list",
    no_args_is_help=True,
)

KIND_ORDER = ["dataset", "run", "eval", "export", "deployment"]


def _entries(workspace_root: Path) -> list[dict[str, Any]]:
    from llmforge import registry
    from llmforge.workspace import Workspace

    ws = Workspace(workspace_root)
    entries = registry.read(ws.registry_file)
    for entry in entries:
        target = entry.get("path")
        entry["size_bytes"] = registry.size_of(Path(target)) if target else None
        if target and entry["size_bytes"] is None:
            entry["status"] = "missing"
    return sorted(
        entries,
        key=lambda e: (KIND_ORDER.index(e["kind"]) if e["kind"] in KIND_ORDER else 99, e.get("recorded_at", "")),
    )


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def _metrics(entry: dict[str, Any]) -> str:
    metrics = entry.get("metrics") or {}
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()]
    return ", ".join(parts[:4])


@app.command("list")
def list_(
    kind: Annotated[
        Optional[str], typer.Option("--kind", help="Only this kind: dataset, run, eval, export, deployment.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """List everything the workspace registry knows, newest last within each kind.

    Example:  llmforge runs list --kind run --json
    """
    loaded = load(config, set_)
    entries = _entries(workspace_of(loaded).root)
    if kind:
        if kind not in KIND_ORDER:
            raise UsageError(f"--kind {kind!r}: expected one of {', '.join(KIND_ORDER)}")
        entries = [e for e in entries if e["kind"] == kind]
    if json_:
        print_json({"workspace": str(workspace_of(loaded).root), "entries": entries})
        return
    if not entries:
        console.print(
            f"nothing recorded yet in {escape(str(workspace_of(loaded).root))} (run `llmforge data prepare` first)"
        )
        return
    from rich.table import Table

    table = Table(title=f"workspace {workspace_of(loaded).root}")
    for column in ("kind", "id", "parent", "status", "metrics", "size", "recorded"):
        # ids are what a user copies into the next command: a narrow terminal folds them, never cuts them
        table.add_column(column, overflow="fold" if column in ("id", "parent") else "ellipsis")
    for e in entries:
        table.add_row(
            e["kind"], escape(e["id"]), escape(e.get("parent") or "-"), e.get("status", "complete"),
            escape(_metrics(e)), _human(e.get("size_bytes")), (e.get("recorded_at") or "")[:19],
        )  # fmt: skip
    print_table(table)


@app.command("show")
def show(
    id: Annotated[str, typer.Argument(help="A run, export, deployment, eval or dataset id (see `runs list`).")],
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Show one entry with its lineage (what it was made from) and what was made from it.

    Example:  llmforge runs show lora-20261122-101500
    """
    from llmforge import registry

    loaded = load(config, set_)
    ws = workspace_of(loaded)
    entries = {e["id"]: e for e in _entries(ws.root)}
    if id not in entries:
        known = ", ".join(list(entries)[-8:]) or "none"
        raise UsageError(f"no run, export or deployment called {id!r} in {ws.root}", hint=f"known ids: {known}")
    chain = registry.lineage(ws.registry_file, id)
    below = registry.descendants(ws.registry_file, id)
    if json_:
        print_json({"entry": entries[id], "lineage": chain, "descendants": below})
        return
    entry = entries[id]
    console.print(f"[bold]{escape(entry['kind'])} {escape(id)}[/]  ({entry.get('status', 'complete')})")
    for key, value in entry.items():
        if key not in ("kind", "id"):
            console.print(f"  {key}: {escape(str(value))}")
    console.print("[bold]lineage[/]: " + " -> ".join(f"{e['kind']} {escape(e['id'])}" for e in chain))
    if below:
        console.print("[bold]made from it[/]:")
        for e in below:
            console.print(f"  {e['kind']} {escape(e['id'])} (from {escape(e.get('parent') or '-')})")
