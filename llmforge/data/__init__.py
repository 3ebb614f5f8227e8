"""The data stage: ingest, validate, clean, deduplicate, split, inspect, convert and generate training data.

Outputs in the workspace's data/ folder (llmforge.workspace names them), the contract with `train` and `eval`:

- train.jsonl, val.jsonl, test.jsonl: one canonical record per line, all of one kind per dataset:
    chat        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                (system only first, no two user or two assistant turns in a row, at least one assistant turn)
    preference  {"prompt": [messages ending with a user turn],
                 "chosen": [{"role": "assistant", "content": str}], "rejected": [...]}  (TRL's conversational DPO)
    kto         {"prompt": [messages ending with a user turn],
                 "completion": [{"role": "assistant", "content": str}], "label": true|false}  (TRL's unpaired KTO)
    text        {"text": str}  (raw text for pretraining from scratch; .txt/.md documents become these)
  No other keys: metadata of the inputs (such as `llmforge serve`'s conversation log) is dropped.
- rejected.jsonl: invalid records (data.on_error: skip), each {"file", "line", "field", "reason", "record"}.
- duplicates.jsonl: dropped duplicates, each {"file", "line", "kind": "exact"|"near", "duplicate_of": {file, line}}.
- report.json / report.md: counts, formats, PII replacements, filters, clusters, lengths, timings; lengths.png.
- manifest.json (inputs with sha256, outputs, versions, timings) and config.yaml (the resolved model + data config).

`data prepare` has the stage's two parts: plan() decides and returns a DataPlan, run(plan) does the work and returns
a DataResult (llmforge/data/stage.py); prepare() is run(plan(...)).report. `data validate` likewise: plan_validate,
run_validate, and validate() for both; `data select`: plan_select, run_select, select(); `data augment`:
plan_augment, run_augment, augment(); `data stats`, `data preview`, `data convert` and `data generate` the same
(plan_stats, run_stats, stats(); ...). Implementation modules are imported inside each verb, so importing this
package stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmforge.config.data import DataConfig, GenerateConfig
    from llmforge.config.model import ModelConfig
    from llmforge.data.stage import (
        AugmentPlan,
        AugmentResult,
        ConvertPlan,
        ConvertResult,
        DataPlan,
        DataResult,
        GeneratePlan,
        GenerateResult,
        PreviewPlan,
        PreviewResult,
        SelectPlan,
        SelectResult,
        StatsPlan,
        StatsResult,
        ValidatePlan,
        ValidateResult,
    )
    from llmforge.workspace import Workspace

__all__ = ["plan", "run", "prepare", "plan_validate", "run_validate", "validate", "plan_select", "run_select", "select",
           "plan_augment", "run_augment", "augment", "plan_stats", "run_stats", "stats", "plan_preview", "run_preview",
           "preview", "plan_convert", "run_convert", "convert", "plan_generate", "run_generate", "generate"]


def plan(data: DataConfig, model: ModelConfig, workspace: Workspace, *, force: bool = False) -> DataPlan:
    """Decide a `data prepare`: the input files (resolved, minus the workspace's own), the output folder (refused
    when prepared data is there, unless `force`) and the options. Reads no record and writes nothing."""
    from llmforge.errors import require_extra

    require_extra("llmforge data prepare", "data", "orjson", "numpy", "matplotlib")
    if data.dedupe.near:
        require_extra("near-duplicate detection (data.dedupe.near)", "data", "datasketch")
    if data.languages:
        require_extra("language filtering (data.languages)", "data", "py3langid")
    from llmforge.data import stage

    return stage.plan(data, model, workspace, force=force)


def run(plan: DataPlan, *, progress: Callable[[str, int], None] | None = None) -> DataResult:
    """Ingest the planned inputs, validate, clean, filter, deduplicate, split and write the workspace's data/
    folder. With data.on_error 'fail' any invalid record raises InputError listing every problem and nothing is
    written. The result's report is also written as report.json."""
    from llmforge.data import stage

    return stage.run(plan, progress=progress)


def prepare(
    data: DataConfig,
    model: ModelConfig,
    workspace: Workspace,
    *,
    force: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """plan() then run(), for callers with nothing to show in between. Returns the report (also report.json)."""
    return run(plan(data, model, workspace, force=force), progress=progress).report


def plan_validate(data: DataConfig) -> ValidatePlan:
    """Decide a `data validate`: the files `data.inputs` names. Reads no record."""
    from llmforge.errors import require_extra

    require_extra("llmforge data validate", "data", "orjson", "numpy")
    from llmforge.data import stage

    return stage.plan_validate(data)


def run_validate(plan: ValidatePlan, *, progress: Callable[[str, int], None] | None = None) -> ValidateResult:
    """Check every record of the planned files and return every problem; writes nothing."""
    from llmforge.data import stage

    return stage.run_validate(plan, progress=progress)


def validate(data: DataConfig, progress: Callable[[str, int], None] | None = None) -> ValidateResult:
    """plan_validate() then run_validate(): every problem of `data.inputs`; writes nothing."""
    return run_validate(plan_validate(data), progress=progress)


def plan_stats(dataset: str | None, model: ModelConfig, workspace: Workspace, *, plot: Path | None = None) -> StatsPlan:
    """Decide a `data stats`: the dataset's files (default the prepared splits) and the histogram's path. Reads
    no record."""
    from llmforge.errors import require_extra

    require_extra("llmforge data stats", "data", "orjson", "numpy", "matplotlib")
    from llmforge.data import stage

    return stage.plan_stats(dataset, model, workspace, plot=plot)


def run_stats(plan: StatsPlan) -> StatsResult:
    """Counts, roles, turns and length distribution of the planned files (tokens with a local model.name, else
    characters), plus the histogram PNG."""
    from llmforge.data import stage

    return stage.run_stats(plan)


def stats(dataset: str | None, model: ModelConfig, workspace: Workspace, plot: Path | None = None) -> StatsResult:
    """plan_stats() then run_stats()."""
    return run_stats(plan_stats(dataset, model, workspace, plot=plot))


def plan_preview(dataset: str | None, model: ModelConfig, workspace: Workspace, *, n: int = 3) -> PreviewPlan:
    """Decide a `data preview`: model.name is needed; the dataset's files (default the prepared splits). Loads
    no tokenizer and reads no record."""
    from llmforge.errors import require_extra

    require_extra("llmforge data preview", "data", "orjson")
    require_extra("llmforge data preview", "train", "transformers")
    from llmforge.data import stage

    return stage.plan_preview(dataset, model, workspace, n=n)


def run_preview(plan: PreviewPlan) -> PreviewResult:
    """The first records rendered with the model's chat template, split into trained and masked spans."""
    from llmforge.data import stage

    return stage.run_preview(plan)


def preview(dataset: str | None, model: ModelConfig, workspace: Workspace, n: int = 3) -> PreviewResult:
    """plan_preview() then run_preview()."""
    return run_preview(plan_preview(dataset, model, workspace, n=n))


def plan_convert(
    dataset: str | None, target: str, output: Path | None, workspace: Workspace, *, force: bool = False
) -> ConvertPlan:
    """Decide a `data convert`: the target format, the dataset's files, the output file (refused when it exists,
    unless `force`). Reads no record."""
    from llmforge.errors import require_extra

    require_extra("llmforge data convert", "data", "orjson")
    from llmforge.data import stage

    return stage.plan_convert(dataset, target, output, workspace, force=force)


def run_convert(plan: ConvertPlan) -> ConvertResult:
    """Write the planned dataset in another tool's format: chatml, alpaca, sharegpt, openai or text."""
    from llmforge.data import stage

    return stage.run_convert(plan)


def convert(
    dataset: str | None, target: str, output: Path | None, workspace: Workspace, *, force: bool = False
) -> ConvertResult:
    """plan_convert() then run_convert()."""
    return run_convert(plan_convert(dataset, target, output, workspace, force=force))


def plan_generate(docs: list[str], generate: GenerateConfig, workspace: Workspace, *,
                  force: bool = False) -> GeneratePlan:
    """Decide a `data generate`: the endpoint and model, the documents read and chunked, what an earlier run
    finished (a rerun resumes). Contacts nothing and writes nothing."""
    from llmforge.data import stage

    return stage.plan_generate(docs, generate, workspace, force=force)


def run_generate(plan: GeneratePlan, *, progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """Question/answer pairs from the planned chunks through the OpenAI-compatible endpoint, written as messages
    JSONL."""
    from llmforge.data import stage

    return stage.run_generate(plan, progress=progress)


def generate(
    docs: list[str],
    generate: GenerateConfig,
    workspace: Workspace,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateResult:
    """plan_generate() then run_generate()."""
    return run_generate(plan_generate(docs, generate, workspace, force=force), progress=progress)


def plan_augment(data: DataConfig, workspace: Workspace, *, dataset: str | None = None,
                 force: bool = False) -> AugmentPlan:
    """Decide a `data augment` (data.augment says what, data.generate where from): the source folder, the output,
    the requests. Reads the splits; contacts nothing and writes nothing."""
    from llmforge.errors import require_extra

    require_extra("llmforge data augment", "data", "numpy")
    if data.dedupe.near:
        require_extra("near-duplicate detection (data.dedupe.near)", "data", "datasketch")
    from llmforge.data import stage

    return stage.plan_augment(data, workspace, dataset=dataset, force=force)


def run_augment(plan: AugmentPlan, *, progress: Callable[[int, int], None] | None = None) -> AugmentResult:
    """A new dataset folder: the prepared splits plus paraphrases and out-of-scope refusals in train only, made
    through the planned OpenAI-compatible endpoint (deduplicated against every split)."""
    from llmforge.data import stage

    return stage.run_augment(plan, progress=progress)


def augment(
    data: DataConfig,
    workspace: Workspace,
    *,
    dataset: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AugmentResult:
    """plan_augment() then run_augment()."""
    return run_augment(plan_augment(data, workspace, dataset=dataset, force=force), progress=progress)


def plan_select(
    dataset: str | None,
    workspace: Workspace,
    *,
    size: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    output: Path | None = None,
    force: bool = False,
) -> SelectPlan:
    """Decide a selection from a prepared folder's train split: how many records, into which folder. Writes
    nothing."""
    from llmforge.errors import require_extra

    require_extra("llmforge data select", "data", "numpy")
    from llmforge.data import stage

    return stage.plan_select(dataset, workspace, size=size, fraction=fraction, seed=seed, output=output, force=force)


def run_select(plan: SelectPlan) -> SelectResult:
    """Write the planned content-diverse subset of the train split (val/test copied unchanged) as a new dataset
    folder."""
    from llmforge.data import stage

    return stage.run_select(plan)


def select(
    dataset: str | None,
    workspace: Workspace,
    *,
    size: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    output: Path | None = None,
    force: bool = False,
) -> SelectResult:
    """plan_select() then run_select(): a content-diverse subset of a prepared train split (val/test copied
    unchanged), as a new dataset folder."""
    return run_select(plan_select(dataset, workspace, size=size, fraction=fraction, seed=seed, output=output,
                                  force=force))  # fmt: skip
