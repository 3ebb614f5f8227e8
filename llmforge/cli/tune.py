"""`llmforge tune`: flags -> config -> the tuning verb -> a line per trial and a results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table


def tune(
    config_file: Annotated[
        Optional[Path],
        typer.Argument(help="YAML config file (the same as --config).", show_default=False, metavar="[CONFIG]"),
    ] = None,
    trials: Annotated[
        Optional[int], typer.Option("--trials", min=1, help="Trials the study should hold (tune.trials); a rerun "
                                    "adds the missing ones.", show_default=False)
    ] = None,
    study: Annotated[
        Optional[str], typer.Option("--study", help="Study name: tune/<study>.db (tune.study).", show_default=False)
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the best trial's values into the config file (keys kept, "
                           "comments not).")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Search train.* values (tune.space) with Optuna; each trial is a train run tune-<study>-<n> in the workspace.

    Example:  llmforge tune my.yaml --trials 20 --apply
    """
    if config_file is not None and config is not None and config_file != config:
        raise typer.BadParameter(f"two config files given ({config_file} and --config {config}); give one")
    loaded = load(config or config_file, set_, tune__trials=trials, tune__study=study)
    cfg = loaded.config
    if apply and loaded.path is None:
        from llmforge.errors import UsageError

        raise UsageError("--apply needs a config file to write the best values into",
                         hint="give one: llmforge tune my.yaml --apply")
    from llmforge.tuning import apply_best, check_space
    from llmforge.tuning import tune as tune_verb

    check_space(cfg.tune.space, cfg.train)
    result = tune_verb(cfg.model, cfg.train, cfg.tune, workspace_of(loaded), progress=None if json_ else _progress)
    applied = None
    if apply:
        if result["best"] is None:
            from llmforge.errors import UsageError

            raise UsageError(f"study {cfg.tune.study} has no finished trial: nothing to apply")
        applied = str(apply_best(loaded.path, result["best"]["params"]))
    if json_:
        print_json({**result, "applied_to": applied})
        return
    _print_table(result)
    if applied:
        console.print(f"wrote the best values into {escape(applied)}")


def _progress(event: dict) -> None:
    if event["event"] == "trial":
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in event["params"].items())
        console.print(f"trial {event['number']} ({escape(event['run'])}): {escape(values)}")
    elif event["event"] == "trial_done":
        tail = f"eval loss {event['value']:.4f}" if event["value"] is not None else event["state"].lower()
        console.print(f"trial {event['number']}: {tail}")


def _print_table(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"study {result['study']}")
    for column in ("trial", "params", "eval loss", "state"):
        table.add_column(column)
    best = (result["best"] or {}).get("trial")
    for row in result["trials"]:
        params = ", ".join(f"{k.removeprefix('train.')}={v:.3g}" if isinstance(v, float) else
                           f"{k.removeprefix('train.')}={v}" for k, v in row["params"].items())
        loss = f"{row['eval_loss']:.4f}" if row["eval_loss"] is not None else "-"
        mark = " (best)" if row["trial"] == best else ""
        table.add_row(str(row["trial"]), escape(params), loss + mark, row["state"].lower())
    print_table(table)
    console.print(f"results: {escape(result['results'])}" + (f", plot: {escape(result['plot'])}" if result["plot"] else ""))
