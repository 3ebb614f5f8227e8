"""`llmforge train`: flags -> config -> the training verb -> a progress bar and a summary."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, ForceOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, plain, print_json, print_table

if TYPE_CHECKING:
    from llmforge.training.stage import TrainPlan, TrainResult

METHODS = ["scratch", "sft", "lora", "qlora", "dpo", "orpo", "kto"]


def _method(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in METHODS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(METHODS)}")
    return value


def train(
    config_file: Annotated[
        Optional[Path],
        typer.Argument(help="YAML config file (the same as --config).", show_default=False, metavar="[CONFIG]"),
    ] = None,
    method: Annotated[
        Optional[str],
        typer.Option("--method", "-m", help="scratch, sft, lora, qlora, dpo, orpo or kto (default: train.method).",
                     callback=_method, show_default=False),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest unfinished run (or train.run_name) from its "
                           "newest checkpoint; refused if config or data changed (unless --force).")
    ] = False,
    nproc: Annotated[
        Optional[int], typer.Option("--nproc", min=1, help="Train with N processes (relaunches under torchrun).")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", help="Base model: hub id or local folder (model.name).", show_default=False)
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="Dataset file or folder (train.data; default: the workspace's prepared data).",
                     show_default=False),
    ] = None,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", min=1, help="Stop after N optimizer steps (train.max_steps).",
                                    show_default=False)
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Run name: runs/<name>/ (train.run_name).", show_default=False)
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    dry_run: DryRunOption = False,
    json_: JsonOption = False,
) -> None:
    """Train a model: from scratch, full SFT, LoRA, QLoRA, DPO, ORPO or KTO; writes runs/<run>/ in the workspace.

    Example:  llmforge train my.yaml --method lora --model Qwen/Qwen2.5-0.5B-Instruct --data chats.jsonl --max-steps 200
    """
    if config_file is not None and config is not None and config_file != config:
        raise typer.BadParameter(f"two config files given ({config_file} and --config {config}); give one")
    loaded = load(config or config_file, set_, train__method=method, model__name=model, train__data=data,
                  train__max_steps=max_steps, train__run_name=name)  # fmt: skip
    cfg = loaded.config
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ and not dry_run:
        from llmforge.training import relaunch
        from llmforge.workspace import timestamp

        if cfg.train.accelerate_config:
            from llmforge.training.launch import check_accelerate_config

            check_accelerate_config(cfg.train.accelerate_config, nproc)

        argv = _argv_without_nproc(sys.argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        run_name = None if resume else (cfg.train.run_name or f"{cfg.train.method}-{timestamp()}")
        raise typer.Exit(relaunch(argv, nproc, run_name, cfg.train.accelerate_config))

    from llmforge import training
    from llmforge.errors import TrainingStopped

    try:
        plan = training.plan(cfg.model, cfg.train, workspace_of(loaded), resume=resume, force=force)
        if dry_run:
            result = None
        elif json_ or not plan.is_main:
            result = training.run(plan)
        else:
            with _PlainLog() if plain else _ProgressBar() as bar:
                result = training.run(plan, progress=bar.update)
    except TrainingStopped as exc:
        flags = {"--method": method, "--model": model, "--data": data, "--max-steps": max_steps}
        exc.hint = "continue with: " + _resume_command(exc.run, config or config_file or loaded.path, set_, flags,
                                                       json_)
        raise
    if not plan.is_main:
        return
    if result is None and json_:
        print_json(plan.as_dict())
    elif result is None:
        _print_plan(plan)
    elif json_:
        print_json(result.as_dict())
    else:
        _print_result(result)


def _resume_command(run: str, config, sets: Optional[list[str]], flags: dict, json_: bool) -> str:
    """The command that continues `run`: this command's own config file, -s values and typed flags (the resume
    refuses a changed config, so leaving any out would fail), with train.run_name naming the run (--name is that
    too). Environment variables (LLMFORGE_*) are not repeated: they are still set where the same CI script runs it."""
    args = ["llmforge", "train", "--resume"]
    if config is not None:
        args += ["-c", str(config)]
    for flag, value in flags.items():
        if value is not None:
            args += [flag, str(value)]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # a process relaunched by --nproc: the resume needs as many
        args += ["--nproc", str(world)]
    for item in sets or []:
        if item.partition("=")[0].strip() != "train.run_name":
            args += ["-s", item]
    args += ["-s", f"train.run_name={run}"]
    if json_:
        args.append("--json")
    return shlex.join(args)


def _argv_without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


class _ProgressBar:
    """A rich progress bar fed by the verb's progress events: loss, learning rate, tokens/s and ETA."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=None, stats="")
        return self

    def update(self, event: dict) -> None:
        if event.get("event") == "begin":
            self.progress.console.print(_begin_line(event))
        if event.get("total_steps"):
            self.progress.update(self.task, total=event["total_steps"])
        if event.get("event") in ("start", "step"):
            parts = []
            if event.get("loss") is not None:
                parts.append(f"loss {event['loss']:.4f}")
            if event.get("learning_rate") is not None:
                parts.append(f"lr {event['learning_rate']:.2e}")
            if event.get("tokens_per_second"):
                parts.append(f"{event['tokens_per_second']:.0f} tok/s")
            self.progress.update(self.task, completed=event.get("step", 0), stats="  ".join(parts))
        elif event.get("event") == "eval":
            self.progress.console.print(f"step {event['step']}: eval loss {event['eval_loss']:.4f}")
        elif event.get("event") == "resume":
            _print_resume(self.progress.console, event["checkpoint"], event.get("skipped") or [])

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:  # a failed run: its error stands alone, without an empty bar above it
            self.progress.live.transient = True
        return self.progress.__exit__(exc_type, exc, tb)


class _PlainLog:
    """Progress for a log (stdout not a terminal): a plain line per train.logging_steps and per evaluation, where
    a bar would redraw itself with carriage returns, or (rich's non-terminal mode) print nothing until the end."""

    def __enter__(self):
        self.first: tuple[float, int] | None = None  # (time, step) of the first step this process trained
        return self

    def update(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "begin":
            console.print(_begin_line(event))
        elif kind == "step" and self.first is None:
            # the first step, not the "start" event: on a resume, the trainer restores the step count after "start"
            self.first = (time.monotonic(), event["step"])
        elif kind == "log":
            step, total = event["step"], event.get("total_steps")
            parts = [f"step {step}/{total}" if total else f"step {step}", f"loss {event['loss']:.4f}"]
            if event.get("learning_rate") is not None:
                parts.append(f"lr {event['learning_rate']:.2e}")
            if event.get("tokens_per_second"):
                parts.append(f"{event['tokens_per_second']:.0f} tok/s")
            if self.first is not None and total and step > self.first[1]:
                left = (time.monotonic() - self.first[0]) / (step - self.first[1]) * (total - step)
                parts.append(f"ETA {_duration(left)}")
            console.print("train: " + ", ".join(parts))
        elif kind == "resume":
            _print_resume(console, event["checkpoint"], event.get("skipped") or [])
        elif kind == "eval":
            total = event.get("total_steps")
            console.print(f"train: step {event['step']}{f'/{total}' if total else ''}, "
                          f"eval loss {event['eval_loss']:.4f}")

    def __exit__(self, exc_type, exc, tb):
        return False


def _begin_line(event: dict) -> str:
    line = (f"run {escape(event['run'])}: {event['method']} with the {event['backend']} backend "
            f"({escape(event['backend_why'])}), {event['total_steps']:,} steps")
    return line  # a resume's checkpoint gets its own line, from the "resume" event


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _print_plan(plan: TrainPlan) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    mem = plan.memory_estimate
    rows = [
        ("method", plan.method),
        ("backend", f"{plan.backend} ({plan.backend_why})"),
        ("base model", plan.base_model),
        ("parameters", f"{plan.parameters:,}"),
        ("trainable", f"{plan.trainable_parameters:,} ({plan.trainable_share:.2%})"),
        ("data", f"{plan.train_examples:,} {plan.data_kind} records, {plan.val_examples:,} for validation"),
        ("tokens per epoch", f"{plan.tokens_per_epoch:,}"),
        ("steps", f"{plan.steps:,} ({plan.steps_per_epoch:,} per epoch, batch {plan.effective_batch})"),
        ("learning rate", f"{plan.learning_rate:g}"),
        ("precision", plan.precision),
        ("memory estimate", f"{mem['total_gib']:.2f} GiB (weights {mem['weights_gib']:.2f}, optimizer "
         f"{mem['gradients_optimizer_gib']:.2f}, activations {mem['activations_gib']:.2f})"),
    ]
    if plan.four_bit:
        rows.append(("4-bit", plan.four_bit))
    if plan.chat_template:
        rows.append(("chat template", f"{plan.chat_template} {plan.chat_template_family or ''}".strip()))
    if plan.loss_mask:
        how = plan.loss_mask
        if plan.records_split_per_turn:
            how += f" ({plan.records_split_per_turn:,} records trained as one sample per assistant turn)"
        if plan.chat_template_date:
            how += f"; the template's date is {plan.chat_template_date}"
        rows.append(("loss mask", how))
    if plan.overlong:
        rows.append(("over max_length", overlong_text(plan.overlong)))
    if plan.resume_from:
        rows.append(("resume from", plan.resume_from))
    for skip in plan.resume_skipped:
        rows.append(("skipped", f"{skip['checkpoint']}: {skip['reason']}"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    console.print("[bold]training plan[/] (dry run: nothing trained)")
    print_table(table)
    for note in plan.notes:
        console.print(f"[dim]note: {escape(note)}[/]")


def _print_resume(out, checkpoint: str, skipped: list[dict]) -> None:
    for skip in skipped:
        out.print(f"[yellow]skipped[/] {escape(skip['checkpoint'])}: {escape(skip['reason'])}")
    out.print(f"resuming from {escape(checkpoint)}")


def overlong_text(o: dict) -> str:
    """What train.overlong did, in one line: '3 of 40 samples over 32 tokens (longest 57): 2 truncated, 1 dropped'."""
    if not o["overlong"]:
        return f"none of {o['rows']:,} samples (longest {o['longest']:,} tokens)"
    done = {"truncate": f"{o['truncated']:,} truncated, {o['dropped']:,} dropped (no answer token left)",
            "drop": f"{o['dropped']:,} dropped"}.get(o["policy"], o["policy"])  # fmt: skip
    return (f"{o['overlong']:,} of {o['rows']:,} samples over {o['max_length']:,} tokens (longest {o['longest']:,}): "
            f"{done} (train.overlong: {o['policy']})")


def _print_result(result: TrainResult) -> None:
    loss = result.final_loss
    first = result.first_loss
    line = f"[green]trained[/] {escape(result.run)}: {result.steps} steps"
    if loss is not None:
        line += f", loss {first:.4f} -> {loss:.4f}" if first is not None else f", loss {loss:.4f}"
    if result.final_eval_loss is not None:
        line += f", eval loss {result.final_eval_loss:.4f}"
    line += f", {result.tokens_seen:,} tokens in {result.train_seconds:.1f} s"
    console.print(line)
    if result.overlong and result.overlong["overlong"]:
        console.print(f"[yellow]over max_length[/]: {escape(overlong_text(result.overlong))}")
    console.print(f"output: {escape(result.output)}")
    if result.removed_temporaries:
        console.print(f"removed {result.removed_temporaries} temporary file(s) left by an interrupted run")
