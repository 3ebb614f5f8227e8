"""Printing: rich for people, JSON for scripts. Only the CLI prints; errors go to stderr.

When stdout is not a terminal (a CI log, a pipe) the output is plain: no bars or spinners (commands print a line per
step or phase instead), and nothing is wrapped or cut at rich's default 80 columns, so ids and values stay whole.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console(highlight=False)
# A log has no width: lines are never wrapped and tables take their natural width (see print_table).
plain = not console.is_terminal
if plain:
    console = Console(highlight=False, soft_wrap=True, width=1_000_000)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def print_table(table) -> None:
    """A rich table; in a log its title goes on a line of its own, since rich wraps a title to the table's width."""
    if plain and table.title:
        console.print(table.title)
        table.title = None
    console.print(table)


def error(message: str, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}")


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))
