"""`llmforge eval`: metrics for one model form, or a side-by-side comparison of several, with a report."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, plain, print_json, print_table

TARGET_HELP = "base, run[:NAME], gguf:QUANT, ollama:NAME, http://HOST:PORT/v1[?model=M], a model folder or a .gguf file"


def evaluate(
    target: Annotated[Optional[str], typer.Argument(help=f"What to evaluate: {TARGET_HELP}.", show_default=False)] = None,
    compare: Annotated[
        Optional[str],
        typer.Option("--compare", help="Comma-separated targets to compare side by side, e.g. base,run,gguf:q4_k_m."),
    ] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate at most N examples.")] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", min=1, help="Generation length for the text metrics.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling and bootstrap intervals.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Evaluate a model form (or compare several) on the test split: perplexity, BLEU, ROUGE, chrF, EM, F1.

    Without TARGET or --compare, evaluates eval.targets (default: base,run). Writes eval/<stamp>/report.md,
    report.json and plots; generations are cached, so a rerun only computes what is new. Exit code 0 when
    every target reported, 1 when any target failed (the others still report), 2 for bad usage or input.

    Example:  llmforge eval --compare base,run,gguf:q4_k_m --limit 50
    """
    from llmforge import evaluation
    from llmforge.errors import UsageError

    if target and compare:
        raise UsageError("give either TARGET or --compare, not both", hint="e.g. --compare base,run")
    loaded = load(config, set_, eval__limit=limit, eval__max_new_tokens=max_new_tokens, eval__seed=seed)
    cfg = loaded.config
    plan = evaluation.plan(cfg.model, cfg.eval, workspace_of(loaded), targets=target, compare=compare)
    if json_:
        result = evaluation.run(plan)
        print_json(result.as_dict())
    elif plain:
        result = evaluation.run(plan, progress=_plain_progress())
        show(result.report, str(result.folder))
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            tasks: dict[tuple[str, str], int] = {}

            def progress(label: str, phase: str, done: int, total: int) -> None:
                if phase in ("load", "done"):
                    return
                key = (label, phase)
                if key not in tasks:
                    tasks[key] = bar.add_task(escape(f"{label}: {phase}"), total=total)
                bar.update(tasks[key], completed=done, total=total)

            result = evaluation.run(plan, progress=progress)
        show(result.report, str(result.folder))
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _plain_progress():
    """Progress for a log: a line when a target loads, then per phase at every tenth done, and when it is done."""
    tenths: dict[tuple[str, str], int] = {}

    def progress(label: str, phase: str, done: int, total: int) -> None:
        if phase == "load":
            console.print(f"eval: {escape(label)}: loading")
        elif phase == "done":
            console.print(f"eval: {escape(label)}: done")
        elif total:
            tenth = done * 10 // total
            if tenth > tenths.get((label, phase), -1):
                tenths[(label, phase)] = tenth
                console.print(f"eval: {escape(label)}: {phase} {done}/{total}")

    return progress


def show(report: dict, folder: str) -> None:
    """One row per metric, one column per target (a table stays readable in 80 columns with several targets)."""
    from rich.table import Table

    keys = ["perplexity", "loss", "bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "f1", "latency_s",
            "tokens_per_second"]
    keys += sorted({k for ms in report["metrics"].values() for k in ms if k.startswith("judge_")})
    keys = [k for k in keys if any(ms.get(k) is not None for ms in report["metrics"].values())]
    table = Table(title=f"eval {report['stamp']}: {report['data']['examples']} examples", header_style="bold")
    table.add_column("metric")
    targets = report["targets"]
    for t in targets:
        table.add_column(escape(t["label"]), justify="right", overflow="fold")
    deltas = report.get("deltas", {})
    for k in keys:
        cells = []
        for t in targets:
            if t["error"]:
                cells.append("[red]failed[/]")
                continue
            cell = _fmt(report["metrics"][t["label"]].get(k))
            d = deltas.get(t["label"], {}).get(k)
            if d and d.get("low") is not None:
                significant = d["low"] > 0 or d["high"] < 0
                cell += f" ({'[bold]' if significant else '[dim]'}{d['delta']:+.3g}[/])"
            cells.append(cell)
        table.add_row(k, *cells)
    if not keys:
        table.add_row("(no metrics)", *["[red]failed[/]" if t["error"] else "" for t in targets])
    print_table(table)
    if deltas:
        console.print(f"[dim](deltas against {escape(report['reference'])}; bold = 95% interval excludes 0)[/]")
    for label, f in report["failed"].items():
        console.print(f"[red]{escape(label)} failed:[/] {escape(f['error'])}"
                      + (f"\n  [yellow]hint:[/] {escape(f['hint'])}" if f.get("hint") else ""))
    for t in targets:
        if t.get("judge_error"):
            console.print(f"[yellow]judge failed for {escape(t['label'])}:[/] {escape(t['judge_error'])}")
    console.print(f"report: {escape(folder)}/report.md", soft_wrap=True)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
