"""`llmforge data prepare|validate|stats|preview|convert|generate|select|augment`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, ForceOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, plain, print_json, print_table

app = typer.Typer(
    help="Ingest, validate, clean, deduplicate, split, inspect, convert and generate training data.\n\n"
    "Example:  llmforge data prepare examples/support-faq/faq.jsonl && llmforge data stats",
    no_args_is_help=True,
)

InputsArgument = Annotated[
    Optional[list[str]],
    typer.Argument(help="Input files, folders or globs, or Hugging Face dataset ids (default: data.inputs).",
                   show_default=False),
]
HubSplitOption = Annotated[
    Optional[str],
    typer.Option("--split", help="Split of a Hugging Face dataset input (data.hub.split, default train).",
                 show_default=False),
]
DatasetArgument = Annotated[
    Optional[str],
    typer.Argument(help="Dataset file, folder or glob (default: the workspace's prepared splits).", show_default=False),
]
# `data generate` and `data augment` both ask an OpenAI-compatible endpoint (data.generate): the same two options,
# each verb wording --endpoint's help its own way.
EndpointModelOption = Annotated[Optional[str], typer.Option("--model", help="Model name at the endpoint.")]


def _endpoint_option(help_text: str):
    """--endpoint (data.generate.endpoint) with its verb's own help line: docs/cli.md keeps each wording."""
    return Annotated[Optional[str], typer.Option("--endpoint", help=help_text)]


def _endpoint_overrides(endpoint: str | None, model: str | None) -> dict[str, str | None]:
    """The config overrides --endpoint and --model stand for."""
    return {"data__generate__endpoint": endpoint, "data__generate__model": model}


def _spinner(json_: bool):
    """A live status line for long passes; quiet with --json, and in a log (see prepare's progress) instead."""
    import contextlib

    if json_ or plain:
        return contextlib.nullcontext(None)
    return console.status("reading...", spinner="dots")


@app.command("prepare")
def prepare(
    inputs: InputsArgument = None,
    split: HubSplitOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Ingest, validate, clean, deduplicate and split data into the workspace's data/ (train/val/test.jsonl).

    Example:  llmforge data prepare chats.jsonl docs/ -s data.on_error=skip -s data.split.seed=7
              llmforge data prepare HuggingFaceH4/ultrachat_200k --split train_sft
    """
    from llmforge import data

    loaded = load(config, set_, data__inputs=list(inputs) if inputs else None, data__hub__split=split)
    with _spinner(json_) as status:  # resolving inputs can take a while too (a Hub dataset is read into its cache)
        plan = data.plan(loaded.config.data, loaded.config.model, workspace_of(loaded), force=force)

        def progress(phase: str, n: int) -> None:
            if status is not None:
                status.update(f"{phase}: {n:,} records")
            elif plain and not json_:  # the pipeline reports every 10,000 records read, 50,000 written
                console.print(f"data prepare: {phase} {n:,} records")

        result = data.run(plan, progress=progress)
    if json_:
        print_json(result.as_dict())
        return
    from rich.table import Table

    c = result.counts
    table = Table(title=f"{result.dataset_kind} dataset -> {escape(str(result.output_dir))}")
    table.add_column("what")
    table.add_column("records", justify="right")
    for key in ("read", "rejected", "transformed_out", "filtered", "exact_duplicates", "near_duplicates", "train",
                "val", "test"):
        if key != "transformed_out" or c.get(key):  # only when data.transforms dropped some
            table.add_row(key.replace("_", " "), f"{c[key]:,}")
    print_table(table)
    pii = ", ".join(f"{k} {v}" for k, v in result.pii_replaced.items())
    if pii:
        console.print(f"PII replaced: {pii}")
    for file, why in result.unreadable:
        console.print(f"[yellow]unreadable file skipped[/]: {escape(file)}: {escape(why)}")
    if c["rejected"]:
        console.print(f"[yellow]{c['rejected']} invalid records skipped[/]: see {escape(result.rejected_file)}")
    console.print(f"report: {escape(str(result.report_md))}")


@app.command("validate")
def validate(
    inputs: InputsArgument = None,
    split: HubSplitOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Check every record and list every problem as file:line: field: reason; writes nothing; exit 2 if any.

    Example:  llmforge data validate chats.jsonl --json
    """
    from llmforge import data

    loaded = load(config, set_, data__inputs=list(inputs) if inputs else None, data__hub__split=split)
    result = data.run_validate(data.plan_validate(loaded.config.data))
    if json_:
        print_json(result.as_dict())
    else:
        for problem in result.problems:
            console.print(escape(str(problem)), soft_wrap=True)
        if result.problem_count > len(result.problems):
            console.print(f"... and {result.problem_count - len(result.problems)} more")
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        kinds = ", ".join(f"{k} {v}" for k, v in result.kinds.items())
        verdict = "[green]ok[/]" if result.ok else f"[red]{result.problem_count} invalid[/]"
        console.print(f"{verdict}: {result.records} records in {len(result.files)} file(s) ({kinds or 'none valid'})")
    if not result.ok:
        raise typer.Exit(2)


@app.command("stats")
def stats(
    dataset: DatasetArgument = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Where to save the length histogram PNG.", show_default=False)
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Counts, roles, turns and length distribution (tokens with a local model.name, else characters) + PNG.

    Example:  llmforge data stats llmforge-work/demo/data/train.jsonl -s model.name=./my-model
    """
    from llmforge import data

    loaded = load(config, set_)
    result = data.run_stats(data.plan_stats(dataset, loaded.config.model, workspace_of(loaded), plot=plot))
    if json_:
        print_json(result.as_dict())
        return
    from rich.table import Table

    table = Table(title="records")
    table.add_column("file")
    table.add_column("records", justify="right")
    for file, n in result.files.items():
        table.add_row(escape(file), f"{n:,}")
    print_table(table)
    summary = Table(show_header=False)
    summary.add_row("kinds", ", ".join(f"{k} {v:,}" for k, v in result.kinds.items()))
    summary.add_row("roles", ", ".join(f"{k} {v:,}" for k, v in result.roles.items()))
    if result.turns:
        summary.add_row("turns", f"min {result.turns['min']}, mean {result.turns['mean']}, max {result.turns['max']}")
    if result.invalid:
        summary.add_row("invalid", f"[red]{result.invalid}[/]")
    print_table(summary)
    length = result.length
    if "p50" in length:
        lengths = Table(title=f"length ({length['unit']})")
        for key in ("min", "mean", "p50", "p90", "p99", "max"):
            lengths.add_column(key, justify="right")
        lengths.add_row(*(f"{length[k]:g}" for k in ("min", "mean", "p50", "p90", "p99", "max")))
        print_table(lengths)
        widest = max(b["records"] for b in length["histogram"]) or 1
        for b in length["histogram"]:
            bar = "#" * round(30 * b["records"] / widest)
            console.print(f"{b['from']:>10.0f}-{b['to']:<10.0f} {bar} {b['records']}")
    if result.plot:
        console.print(f"histogram: {escape(result.plot)}")


@app.command("preview")
def preview(
    dataset: DatasetArgument = None,
    n: Annotated[int, typer.Option("-n", "--count", min=1, help="How many records to show.")] = 3,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Show records rendered with the model's chat template: trained tokens highlighted, masked ones dimmed.

    Example:  llmforge data preview -n 3 -s model.name=Qwen/Qwen2.5-0.5B-Instruct
    """
    from llmforge import data

    loaded = load(config, set_)
    result = data.run_preview(data.plan_preview(dataset, loaded.config.model, workspace_of(loaded), n=n))
    if json_:
        print_json(result.as_dict())
        return
    from rich.rule import Rule
    from rich.text import Text

    console.print(f"[bold green]trained[/] / [dim]masked[/]  (mask from {result.mask_source}, {escape(result.model)})")
    for example in result.examples:
        for rendering in example.renderings:
            # a log's console is as wide as the longest line needs: a rule there stays 80 wide
            console.print(Rule(f"{escape(example.file)}:{example.line} {rendering.title}"), width=80 if plain else None)
            text = Text()
            for segment in rendering.segments:
                text.append(segment["text"], style="bold green" if segment["trained"] else "dim")
            console.print(text)
            console.print(f"[bold]{rendering.tokens}[/] tokens, {rendering.trained_tokens} trained")


@app.command("convert")
def convert(
    dataset: DatasetArgument = None,
    to: Annotated[str, typer.Option("--to", help="Target format: chatml, alpaca, sharegpt, openai or text.")] = ...,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Output file (default: <name>.<format>.jsonl beside it).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Write a dataset in another tool's format.

    Example:  llmforge data convert llmforge-work/demo/data/train.jsonl --to sharegpt -o train.sharegpt.jsonl
    """
    from llmforge import data

    loaded = load(config, set_)
    result = data.run_convert(data.plan_convert(dataset, to, output, workspace_of(loaded), force=force))
    if json_:
        print_json(result.as_dict())
        return
    console.print(f"wrote {result.written} records as {result.target} to {escape(result.output)}")
    if result.skipped or result.invalid:
        console.print(f"[yellow]skipped {result.skipped} not representable, {result.invalid} invalid[/]")
        for line in result.examples:
            console.print(f"  {escape(line)}", soft_wrap=True)


@app.command("generate")
def generate(
    docs: Annotated[
        list[str], typer.Option("--from", help="Documents (.txt/.md files, folders or globs); repeatable.")
    ] = ...,
    endpoint: _endpoint_option("OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1.") = None,
    model: EndpointModelOption = None,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Output JSONL (default: data/generated.jsonl).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Start over instead of resuming.")] = False,
    json_: JsonOption = False,
) -> None:
    """Generate question/answer pairs from documents with an OpenAI-compatible endpoint; a rerun resumes.

    Example:  llmforge data generate --from docs/ --endpoint http://127.0.0.1:11434/v1 --model qwen2.5:7b
    """
    from llmforge import data

    loaded = load(config, set_, **_endpoint_overrides(endpoint, model), data__generate__output=output)
    plan = data.plan_generate(docs, loaded.config.data.generate, workspace_of(loaded), force=force)
    if json_:
        print_json(data.run_generate(plan).as_dict())
        return
    if plain:
        tenths = [-1]

        def plain_progress(done: int, total: int) -> None:  # a line at every tenth of the chunks in a log
            if total and done * 10 // total > tenths[0]:
                tenths[0] = done * 10 // total
                console.print(f"data generate: {done}/{total} chunks")

        result = data.run_generate(plan, progress=plain_progress)
        _print_generated(result)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("chunks", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = data.run_generate(plan, progress=progress)
    _print_generated(result)


@app.command("select")
def select(
    dataset: Annotated[
        Optional[str],
        typer.Argument(help="Prepared data folder holding train.jsonl (default: the workspace's data/).",
                       show_default=False),
    ] = None,
    size: Annotated[
        Optional[int], typer.Option("--size", "-n", help="How many train records to keep.", show_default=False)
    ] = None,
    fraction: Annotated[
        Optional[float],
        typer.Option("--fraction", help="Share of the train records to keep (0-1].", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first pick and the coverage yardstick.")] = 0,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Output folder (default: data-select-<N>/ in the workspace).", show_default=False
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Keep a content-diverse subset of a prepared train split (greedy farthest-point over TF-IDF n-grams).

    Only train is thinned; val and test are copied unchanged, so nothing leaks between splits. Coverage is reported
    against a random subset of the same size. The folder is registered as a dataset made from its source.

    Example:  llmforge data select --size 500 && llmforge train -s train.data=llmforge-work/demo/data-select-500
    """
    from llmforge import data

    loaded = load(config, set_)
    plan = data.plan_select(dataset, workspace_of(loaded), size=size, fraction=fraction, seed=seed, output=output,
                            force=force)  # fmt: skip
    result = data.run_select(plan)
    if json_:
        print_json(result.as_dict())
        return
    cov = result.coverage
    chosen, random = cov["selected"], cov["random"]
    console.print(f"kept {result.selected:,} of {result.available:,} train records -> {escape(result.output)}")
    console.print(
        f"coverage of {cov['clusters']} content clusters: {chosen['clusters_covered']} "
        f"(a random subset: {random['clusters_covered']}); mean distance to nearest kept "
        f"{chosen['mean_distance_to_nearest']:.3f} (random {random['mean_distance_to_nearest']:.3f})"
    )
    if result.copied:
        console.print(f"copied unchanged: {', '.join(result.copied)}")
    console.print(
        f"dataset {result.dataset_id} (from {result.parent}); train on it with -s train.data={escape(result.output)}"
    )


def _print_generated(result) -> None:
    console.print(
        f"wrote {result.pairs} pairs from {result.chunks} chunks of {result.documents} document(s) to "
        f"{escape(result.output)} ({result.chunks_skipped} chunks done earlier, {result.chunks_failed} failed)"
    )
    if result.dropped:
        console.print("dropped: " + ", ".join(f"{k} {v}" for k, v in result.dropped.items()))
    for line in result.errors[:10]:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)


@app.command("augment")
def augment(
    dataset: Annotated[
        Optional[str],
        typer.Argument(help="Prepared dataset folder (default: the workspace's data/).", show_default=False),
    ] = None,
    paraphrases: Annotated[
        Optional[int], typer.Option("--paraphrases", min=0, help="Paraphrases per train question (data.augment.paraphrases).",
                                    show_default=False)
    ] = None,
    refusals: Annotated[
        Optional[int], typer.Option("--refusals", min=0, help="Out-of-scope refusal examples to add (data.augment.refusals).",
                                    show_default=False)
    ] = None,
    scope: Annotated[
        Optional[str], typer.Option("--scope", help="What the assistant is for (data.augment.scope).", show_default=False)
    ] = None,
    endpoint: _endpoint_option("OpenAI-compatible base URL (data.generate.endpoint).") = None,
    model: EndpointModelOption = None,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Output dataset folder (default: data/augmented).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Add paraphrased questions and out-of-scope refusals to train only, as a new dataset folder (val/test copied).

    Example:  llmforge data augment --paraphrases 2 --endpoint http://127.0.0.1:11434/v1 --model qwen2.5:7b
              llmforge data augment --refusals 50 --scope "questions about the Acme router" --force
    """
    from llmforge import data

    loaded = load(
        config,
        set_,
        data__augment__paraphrases=paraphrases,
        data__augment__refusals=refusals,
        data__augment__scope=scope,
        data__augment__output=output,
        **_endpoint_overrides(endpoint, model),
    )
    every = loaded.config.data.augment.progress_every

    def progress(done: int, total: int) -> None:
        if not json_ and (done % every == 0 or done == total):
            console.print(f"data augment: {done}/{total} requests")

    plan = data.plan_augment(loaded.config.data, workspace_of(loaded), dataset=dataset, force=force)
    result = data.run_augment(plan, progress=progress)
    if json_:
        print_json(result.as_dict())
        return
    kept, got, asked = result.kept, result.received, result.requested
    console.print(
        f"wrote {escape(result.output)}: {result.train} train records, "
        f"{kept['paraphrases']}/{got['paraphrases']}/{asked['paraphrases']} paraphrases and "
        f"{kept['refusals']}/{got['refusals']}/{asked['refusals']} refusals kept/received/requested; "
        f"duplicates dropped: exact {result.duplicates['exact']}, near {result.duplicates['near']}; "
        f"{result.failed} requests failed, {result.bad_json} replies without usable JSON"
    )
    for line in result.errors[:10]:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    console.print(f"train on it with: -s train.data={escape(result.output)}")
