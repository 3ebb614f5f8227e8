"""`llmforge config show|init|validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, ForceOption, JsonOption, SetOption, load
from llmforge.cli.output import console, print_json, print_table

app = typer.Typer(
    help="Show, create and check llmforge config files.\n\n"
    "Example:  llmforge config show -c configs/tiny-scratch.yaml --set train.lora.rank=8 --sources",
    no_args_is_help=True,
)


@app.command("show")
def show(
    config: ConfigOption = None,
    set_: SetOption = None,
    sources: Annotated[bool, typer.Option("--sources", help="Say where each value came from.")] = False,
    json_: JsonOption = False,
) -> None:
    """Print the resolved config (defaults < YAML < LLMFORGE_* env < --set < flags).

    Example:  llmforge config show -c llmforge.yaml -s train.lora.rank=8 --sources
    """
    from llmforge.config.settings_view import resolved_rows

    loaded = load(config, set_)
    rows = resolved_rows(loaded)
    if json_:
        payload = {"config": {k: v for k, v, _ in rows}, "file": str(loaded.path) if loaded.path else None}
        if sources:
            payload["sources"] = {k: s for k, _, s in rows}
        print_json(payload)
        return
    if sources:
        from rich.table import Table

        table = Table(title=f"config ({loaded.path or 'no file: defaults'})", show_lines=False)
        table.add_column("key")
        table.add_column("value")
        table.add_column("source")
        for key, value, source in rows:
            style = "dim" if source == "default" else None
            table.add_row(key, _short(value), source, style=style)
        print_table(table)
    else:
        from llmforge.config.settings_view import to_yaml

        console.print(to_yaml(loaded.config), end="", markup=False)


def _short(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


@app.command("init")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter config.")] = Path("llmforge.yaml"),
    model: Annotated[Optional[str], typer.Option("--model", help="Base model id or folder to fill in.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Project name to fill in.")] = None,
    force: ForceOption = False,
) -> None:
    """Write a commented starter config, every field with its description and default.

    Example:  llmforge config init --model Qwen/Qwen2.5-0.5B-Instruct --name support-bot
    """
    from llmforge.config.settings_view import write_starter

    written = write_starter(path, model=model, name=name, force=force)
    console.print(f"wrote {written}")


@app.command("validate")
def validate(
    path: Annotated[Path, typer.Argument(help="Config file to check.")],
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Check a config file: unknown keys, wrong types and bad values exit 2 with the dotted path.

    Example:  llmforge config validate llmforge.yaml
    """
    loaded = load(path, set_)
    if json_:
        print_json({"valid": True, "file": str(loaded.path)})
    else:
        console.print(f"[green]ok[/] {path}")
