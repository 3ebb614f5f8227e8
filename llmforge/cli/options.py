"""Options every command shares, declared once, and the one way a command loads its config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from llmforge.cli.output import warn

if TYPE_CHECKING:  # the config tree builds every pydantic model on import: not needed to print help
    from llmforge.config import LoadedConfig
    from llmforge.workspace import Workspace

ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $LLMFORGE_CONFIG, else ./llmforge.yaml if present).",
        show_default=False,
    ),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        "-s",
        help="Override a config value, KEY=VALUE with a dotted key; repeatable. E.g. -s train.lora.rank=8",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON for scripts.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace existing outputs.")]


def load(config: Optional[Path], sets: Optional[list[str]], **flags: Any) -> LoadedConfig:
    """Resolve the config for one command. `flags` maps dotted keys (as `train__method`) to typed flag values."""
    from llmforge.config import load_config

    dotted = {key.replace("__", "."): value for key, value in flags.items()}
    loaded = load_config(config, sets or (), dotted)
    for message in loaded.warnings:
        warn(message)
    return loaded


def workspace_of(loaded: LoadedConfig) -> Workspace:
    from llmforge.workspace import Workspace

    return Workspace(loaded.config.project.workspace_root)
