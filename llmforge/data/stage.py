"""The data stage in two parts. `llmforge data prepare`: plan() decides what to prepare (the input files, resolved
and minus the workspace's own; the output folder, refused when a prepared dataset is there and not forced; the
options), run(plan) reads, cleans, deduplicates and splits them through the pipeline and publishes data/.

`llmforge data validate` has the same two parts: plan_validate() resolves the inputs, run_validate(plan) reads and
checks every record and writes nothing. `llmforge data select`: plan_select() reads the train split and decides how
many records go where, run_select(plan) chooses them and writes the folder. `llmforge data augment`: plan_augment()
checks the request and reads the splits, run_augment(plan) asks the endpoint and writes the new folder.
`data convert`, `data stats`, `data preview` and `data generate` likewise: plan_<verb>() resolves the dataset or
documents and refuses what it can before any work, run_<verb>(plan) does it.

The work itself (the streaming pass, dedupe, splits, report and publishing) is pipeline._prepare and _publish; the
check, pipeline.validate; the selection, selection.select; the requests, augmentation.augment; conversion.convert, inspect.stats and inspect.preview, generation.generate.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmforge import atomic, manifest
from llmforge.config.data import AugmentConfig, DataConfig, DedupeConfig, GenerateConfig
from llmforge.config.model import ModelConfig
from llmforge.errors import ConfigError, UsageError
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show."""

    data: DataConfig
    model: ModelConfig
    workspace: Workspace
    files: list[Path]
    blocklist: re.Pattern | None  # data.filter.blocklist, compiled (a bad pattern is refused by plan)
    timer: manifest.Timer  # started as planning began: the manifest's wall time counts the whole command


@dataclass(frozen=True)
class DataPlan:
    """A `data prepare` decided but not done: every input resolved and checked, and all `run` needs."""

    inputs: list[str]  # the files read, in order (folders and globs expanded, Hub datasets in the datasets cache)
    ignored_inputs: list[str]  # files inside the workspace, left out (earlier splits must not be read back)
    format: str  # data.format ("auto": detected per record)
    on_error: str  # "fail": any invalid record stops the run and nothing is written; "skip": rejected.jsonl
    output_dir: str  # the workspace's data/
    tokenizer: str | None  # lengths in this model's tokens when its tokenizer is local, else in characters
    force: bool
    prepared: _Prepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        data = self.prepared.data
        return {
            "dry_run": True, "inputs": self.inputs, "ignored_inputs": self.ignored_inputs, "format": self.format,
            "on_error": self.on_error, "output_dir": self.output_dir, "tokenizer": self.tokenizer,
            "filter": data.filter.model_dump(mode="json"), "dedupe": data.dedupe.model_dump(mode="json"),
            "split": data.split.model_dump(mode="json"), "languages": list(data.languages),
            "transforms": list(data.transforms), "force": self.force,
        }  # fmt: skip


@dataclass(frozen=True)
class DataResult:
    """A prepared dataset: data/report.json as written. as_dict() is `llmforge data prepare --json`, key for key."""

    report: dict[str, Any]
    output_dir: Path  # the workspace's data/
    report_md: Path

    @property
    def dataset_kind(self) -> str:
        return self.report["dataset_kind"]

    @property
    def dataset_id(self) -> str:
        return self.report["dataset_id"]

    @property
    def counts(self) -> dict[str, int]:
        """read, valid, rejected, filtered, transformed_out, exact/near duplicates, written, train, val, test."""
        return self.report["counts"]

    @property
    def pii_replaced(self) -> dict[str, int]:
        """PII replacements by kind, the kinds with any."""
        return {kind: n for kind, n in self.report["pii"].items() if n}

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        """(file, why) for each input that could not be read to its end."""
        return [(entry["file"], entry["error"]) for entry in self.report["inputs"] if "error" in entry]

    @property
    def rejected_file(self) -> str | None:
        """rejected.jsonl when invalid records were skipped."""
        return self.report["outputs"].get("rejected")

    @property
    def outputs(self) -> dict[str, str]:
        return self.report["outputs"]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.report)


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------


def plan(data: DataConfig, model: ModelConfig, workspace: Workspace, *, force: bool = False) -> DataPlan:
    """Decide the run: resolve data.inputs (a Hub dataset id is read into the datasets cache, as the pipeline
    needs its files), leave out the workspace's own files, refuse to replace prepared data unless `force`, and
    check the blocklist. Reads no record and writes nothing in the workspace."""
    timer = manifest.Timer()
    files, ignored = _outside(_input_files(data), workspace)
    atomic.refuse_overwrite(workspace.split_file("train"), force, "prepared data")
    blocklist = _blocklist(data.filter.blocklist)
    return DataPlan(
        inputs=[str(f) for f in files],
        ignored_inputs=[str(f) for f in ignored],
        format=data.format,
        on_error=data.on_error,
        output_dir=str(workspace.data_dir),
        tokenizer=model.name or None,
        force=force,
        prepared=_Prepared(data=data, model=model, workspace=workspace, files=files, blocklist=blocklist,
                           timer=timer),  # fmt: skip
    )


def _input_files(data: DataConfig) -> list[Path]:
    from llmforge.data.pipeline import _input_files

    return _input_files(data)


def _outside(files: list[Path], workspace: Workspace) -> tuple[list[Path], list[Path]]:
    """(kept, ignored): the inputs minus the workspace's own artifacts (`prepare .` must not eat earlier splits or
    metrics), except the conversation log of `llmforge serve`, which is meant to come back as training data."""
    root, log_dir = workspace.root.resolve(), workspace.conversations_dir.resolve()
    kept, ignored = [], []
    for f in files:
        inside = f.resolve().is_relative_to(root) and not f.resolve().is_relative_to(log_dir)
        (ignored if inside else kept).append(f)
    if ignored:
        log.warning("ignoring %d input file(s) inside the workspace %s", len(ignored), workspace.root)
    if not kept:
        raise UsageError(
            f"every input is inside the workspace {workspace.root}",
            hint="name your source data, not the prepared splits",
        )
    return kept, ignored


def _blocklist(patterns: list[str]) -> re.Pattern | None:
    if not patterns:
        return None
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"data.filter.blocklist: invalid regular expression {pattern!r} ({exc})") from None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# ----------------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------------


def run(plan: DataPlan, *, progress=None) -> DataResult:
    """Read, validate, clean, filter, deduplicate and split the planned inputs and publish the workspace's data/
    (all outputs at once). `progress(phase, records)` is called every 10,000 records read and 50,000 written.
    With data.on_error 'fail' any invalid record raises InputError listing every problem and nothing is written."""
    from llmforge.data import pipeline

    p = plan.prepared
    settings = _settings(p.data, p.blocklist, _token_counter(p.model))
    out_dir = p.workspace.data_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir))  # inside data/: publishing is a rename
    try:
        job = pipeline._Job(p.data, p.model, p.workspace, p.files, work)
        report = pipeline._prepare(job, settings, p.timer, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DataResult(report=report, output_dir=out_dir, report_md=p.workspace.data_report_md)


def _token_counter(model: ModelConfig):
    """Counts lengths in the model's tokens when its tokenizer is local (with the training chat template), else
    None: lengths are then counted in characters."""
    from llmforge import checkpoints
    from llmforge.data.tokens import TokenCounter

    tokenizer = checkpoints.load_tokenizer(model.name, revision=model.revision,
                                           trust_remote_code=model.trust_remote_code, download=False, required=False)
    if tokenizer is None:
        return None
    checkpoints.use_training_template(tokenizer, model.chat_template, untrainable="keep")
    return TokenCounter(tokenizer)


def _settings(data: DataConfig, blocklist: re.Pattern | None, counter):
    """What every chunk of records is cleaned, filtered and measured with."""
    from llmforge.data import chunks

    return chunks.Settings(
        fmt=data.format, max_record_chars=data.max_record_chars, pii=data.pii.model_dump(),
        min_len=data.filter.min_tokens, max_len=data.filter.max_tokens, min_answer=data.filter.min_answer_chars,
        blocklist=blocklist, unit="tokens" if counter else "characters", skip=data.on_error == "skip",
        counter=counter, transforms=tuple(data.transforms), languages=frozenset(data.languages),
        near=(data.dedupe.num_perm, data.dedupe.shingle) if data.dedupe.near else None,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# validate
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ValidatePrepared:
    data: DataConfig
    files: list[Path]


@dataclass(frozen=True)
class ValidatePlan:
    """A `data validate` decided: the files it reads (data.inputs resolved) and the format it expects."""

    inputs: list[str]
    format: str  # data.format ("auto": detected per record)
    prepared: _ValidatePrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "inputs": self.inputs, "format": self.format}


@dataclass(frozen=True)
class ValidateResult:
    """Every record checked. as_dict() is `llmforge data validate --json`, key for key."""

    files: list[str]
    records: int
    valid: int
    problems: list[Any]  # pipeline.Problem: file, line, field, reason (the first MAX_PROBLEMS_KEPT)
    problem_count: int
    kinds: dict[str, int]
    formats: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> why it could not be read to its end

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["problems"] = [str(p) for p in self.problems]
        return out


def plan_validate(data: DataConfig) -> ValidatePlan:
    """Resolve data.inputs (a Hub dataset id is read into the datasets cache). Reads no record."""
    files = _input_files(data)
    return ValidatePlan(inputs=[str(f) for f in files], format=data.format,
                        prepared=_ValidatePrepared(data=data, files=files))  # fmt: skip


def run_validate(plan: ValidatePlan, *, progress=None) -> ValidateResult:
    """Read and check every record of the planned files; writes nothing. `progress(phase, records)` every 10,000."""
    from llmforge.data import pipeline

    return pipeline.validate(plan.prepared.data, plan.prepared.files, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# select
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SelectPrepared:
    workspace: Workspace
    source: Path
    output: Path
    lines: list[bytes]  # the train split's non-blank lines
    texts: list[str]  # their text, as the features see it
    timer: manifest.Timer


@dataclass(frozen=True)
class SelectPlan:
    """A `data select` decided: from which prepared folder, how many of its train records, into which folder."""

    source: str
    output: str
    selected: int
    available: int
    seed: int
    force: bool
    prepared: _SelectPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "source": self.source, "output": self.output, "selected": self.selected,
                "available": self.available, "seed": self.seed, "force": self.force}  # fmt: skip


@dataclass(frozen=True)
class SelectResult:
    """A selected dataset folder. as_dict() is `llmforge data select --json`, key for key."""

    source: str
    output: str
    dataset_id: str
    parent: str  # the source's dataset id
    selected: int
    available: int
    seed: int
    coverage: dict[str, Any] = field(default_factory=dict)  # clusters covered and distances, selected vs random
    copied: list[str] = field(default_factory=list)  # val/test, copied unchanged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_select(dataset: str | None, workspace: Workspace, *, size: int | None = None, fraction: float | None = None,
                seed: int = 0, output: Path | None = None, force: bool = False) -> SelectPlan:
    """Decide a selection: the source folder (default the workspace's data/), its train lines (read: how many to
    keep depends on them, and a line that is not JSON is refused here), the size, and the output folder (refused
    when it is the source, or exists and not `force`). Writes nothing."""
    from llmforge.data import selection

    timer = manifest.Timer()
    source = selection._source_dir(dataset, workspace)
    train_file = source / "train.jsonl"
    lines = [line for line in train_file.read_bytes().splitlines(keepends=True) if line.strip()]
    k = selection.target_size(len(lines), size, fraction)
    out_dir = Path(output).expanduser() if output else workspace.root / f"data-select-{k}"
    if out_dir.resolve() == source.resolve():
        raise UsageError(f"--output {out_dir} is the source dataset", hint="choose a new folder")
    atomic.refuse_overwrite(out_dir, force, "selected dataset")
    texts = selection.texts(train_file, lines)
    return SelectPlan(
        source=str(source), output=str(out_dir), selected=k, available=len(lines), seed=seed, force=force,
        prepared=_SelectPrepared(workspace=workspace, source=source, output=out_dir, lines=lines, texts=texts,
                                 timer=timer),
    )  # fmt: skip


def run_select(plan: SelectPlan) -> SelectResult:
    """Choose the planned number of train records by k-center, write them with val/test copied and a manifest as
    the output folder (atomically), and register it."""
    from llmforge.data import selection

    return selection.select(plan)


# ----------------------------------------------------------------------------------------------------------------
# augment
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _AugmentPrepared:
    augment: AugmentConfig
    generate: GenerateConfig
    dedupe: DedupeConfig
    source: Path
    output: Path
    splits: dict[str, list[tuple[int, str, dict[str, Any]]]]  # (line, raw text, record) of each split read
    jobs: list[tuple[int, dict[str, Any]]]  # the train records to paraphrase: (line, record)


@dataclass(frozen=True)
class AugmentPlan:
    """A `data augment` decided: what to ask the endpoint for, from which folder, into which; nothing requested."""

    source: str
    output: str
    endpoint: str
    model: str
    requested: dict[str, int]  # paraphrases / refusals to ask for
    requests: int  # requests to make (retries aside)
    skipped_records: int  # train records not paraphrased: more than one user turn
    force: bool
    prepared: _AugmentPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "source": self.source, "output": self.output, "endpoint": self.endpoint,
                "model": self.model, "requested": self.requested, "requests": self.requests,
                "skipped_records": self.skipped_records, "force": self.force}  # fmt: skip


@dataclass(frozen=True)
class AugmentResult:
    """A written augmented folder. as_dict() is `llmforge data augment --json`, key for key."""

    output: str
    source: str
    requested: dict[str, int]  # paraphrases / refusals asked for
    received: dict[str, int] = field(default_factory=dict)  # usable items in the replies
    kept: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)  # exact / near
    requests: int = 0  # requests made, retries included
    retries: int = 0
    failed: int = 0  # requests that failed after every retry
    bad_json: int = 0  # replies with nothing usable in them
    skipped_records: int = 0  # train records not paraphrased: more than one user turn
    train: int = 0  # records in the new train.jsonl
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_augment(data: DataConfig, workspace: Workspace, *, dataset: str | None = None,
                 force: bool = False) -> AugmentPlan:
    """Check the request (something to generate, a scope for refusals, an endpoint and a model), the source folder
    (default the workspace's data/; chat records only) and the output (not the source; refused when it exists and
    not `force`), before any request is paid for. Reads the splits; contacts nothing and writes nothing."""
    from llmforge.data.augmentation import SPLITS, _read_split

    cfg, endpoint = data.augment, data.generate
    if not cfg.paraphrases and not cfg.refusals:
        raise UsageError("nothing to generate", hint="pass --paraphrases N and/or --refusals N")
    if cfg.refusals and not (cfg.scope or "").strip():
        raise UsageError(
            "refusals need a scope to stay out of",
            hint="set data.augment.scope, e.g. -s data.augment.scope='questions about the Acme router'",
        )
    if not endpoint.endpoint:
        raise UsageError("no endpoint to generate with", hint="pass --endpoint URL (e.g. http://127.0.0.1:11434/v1)")
    if not endpoint.model:
        raise UsageError("no model named for the endpoint", hint="pass --model NAME")
    source = Path(dataset).expanduser() if dataset else workspace.data_dir
    if not (source / "train.jsonl").is_file():
        raise UsageError(f"no prepared train split: {source / 'train.jsonl'}", hint="run `llmforge data prepare` first")
    output = Path(cfg.output).expanduser() if cfg.output else workspace.data_dir / "augmented"
    if output.resolve() == source.resolve():
        raise UsageError("data.augment.output is the folder being augmented", hint="choose another output folder")
    atomic.refuse_overwrite(output, force, "augmented dataset")

    splits = {name: _read_split(source / f"{name}.jsonl") for name in SPLITS if (source / f"{name}.jsonl").is_file()}
    train = splits["train"]
    if any("messages" not in record for _, _, record in train):
        raise UsageError(
            f"{source / 'train.jsonl'}: augment works on chat records only", hint='only {"messages": [...]} data'
        )
    jobs = [(n, r) for n, _, r in train if sum(m.get("role") == "user" for m in r["messages"]) == 1]
    refusal_requests = math.ceil(cfg.refusals / cfg.batch) if cfg.refusals else 0
    return AugmentPlan(
        source=str(source), output=str(output), endpoint=endpoint.endpoint, model=endpoint.model,
        requested={"paraphrases": cfg.paraphrases * len(jobs), "refusals": cfg.refusals},
        requests=(len(jobs) if cfg.paraphrases else 0) + refusal_requests,
        skipped_records=len(train) - len(jobs) if cfg.paraphrases else 0, force=force,
        prepared=_AugmentPrepared(augment=cfg, generate=endpoint, dedupe=data.dedupe, source=source, output=output,
                                  splits=splits, jobs=jobs),
    )  # fmt: skip


def run_augment(plan: AugmentPlan, *, progress=None) -> AugmentResult:
    """Ask the endpoint for the planned paraphrases and refusals, drop those that duplicate any split's question,
    and write the new folder: train plus what was kept, val/test copied, duplicates.jsonl and a manifest.
    `progress(done, total)` after each request. Raises LlmforgeError when every request fails or no reply is
    usable (nothing written)."""
    from llmforge.data import augmentation

    return augmentation.augment(plan, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvertPrepared:
    files: list[Path]
    output: Path


@dataclass(frozen=True)
class ConvertPlan:
    """A `data convert` decided: which files, into which format, written where (refused when it exists, unless
    `force`)."""

    inputs: list[str]
    target: str  # chatml, alpaca, sharegpt, openai or text
    output: str
    force: bool
    prepared: _ConvertPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "inputs": self.inputs, "target": self.target, "output": self.output,
                "force": self.force}  # fmt: skip


@dataclass(frozen=True)
class ConvertResult:
    """A converted file. as_dict() is `llmforge data convert --json`, key for key."""

    output: str
    target: str
    written: int
    skipped: int  # valid records the target format cannot hold
    invalid: int
    examples: list[str]  # file:line: why, for the first 10 skipped or invalid records

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_convert(dataset: str | None, target: str, output: Path | None, workspace: Workspace, *,
                 force: bool = False) -> ConvertPlan:
    """Check the target format, resolve the dataset (default the workspace's prepared splits) and the output
    (default <name>.<format>.jsonl beside it; refused when it exists and not `force`). Reads no record."""
    from llmforge.data.conversion import TARGETS
    from llmforge.data.inspect import dataset_files

    if target not in TARGETS:
        raise UsageError(f"unknown target format {target!r}", hint=f"choose one of {', '.join(TARGETS)}")
    files = dataset_files(dataset, workspace)
    if output is None:
        first = files[0]
        stem = first.name.split(".")[0] if len(files) == 1 else "dataset"
        output = (first.parent if dataset else workspace.data_dir) / f"{stem}.{target}.jsonl"
    atomic.refuse_overwrite(output, force)
    return ConvertPlan(inputs=[str(f) for f in files], target=target, output=str(output), force=force,
                       prepared=_ConvertPrepared(files=files, output=Path(output)))  # fmt: skip


def run_convert(plan: ConvertPlan) -> ConvertResult:
    """Write every planned record in the target format (atomically); records it cannot hold are counted, not
    written."""
    from llmforge.data import conversion

    return conversion.convert(plan)


# ----------------------------------------------------------------------------------------------------------------
# stats
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StatsPrepared:
    model: ModelConfig
    files: list[Path]
    plot: Path


@dataclass(frozen=True)
class StatsPlan:
    """A `data stats` decided: which files, measured with which tokenizer (when local), the histogram where."""

    inputs: list[str]
    tokenizer: str | None  # lengths in this model's tokens when its tokenizer is local, else in characters
    plot: str  # written when any record is valid
    prepared: _StatsPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "inputs": self.inputs, "tokenizer": self.tokenizer, "plot": self.plot}


@dataclass(frozen=True)
class StatsResult:
    """What a dataset holds. as_dict() is `llmforge data stats --json`, key for key."""

    files: dict[str, int]  # records per file
    records: int
    invalid: int
    kinds: dict[str, int]
    roles: dict[str, int]
    turns: dict[str, float]  # min, mean, max messages per record ({} when none)
    length: dict[str, Any]  # unit, then min/mean/p50/p90/p99/max and a 10-bucket histogram when any is valid
    plot: str | None = None  # the histogram PNG written
    problems: list[str] = field(default_factory=list)  # the first 20 invalid records, file:line: why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_stats(dataset: str | None, model: ModelConfig, workspace: Workspace, *,
               plot: Path | None = None) -> StatsPlan:
    """Resolve the dataset (default the workspace's prepared splits) and where the histogram goes (default
    data/stats-lengths.png). Reads no record and loads no tokenizer."""
    from llmforge.data.inspect import dataset_files

    files = dataset_files(dataset, workspace)
    target = plot or workspace.data_dir / "stats-lengths.png"
    return StatsPlan(inputs=[str(f) for f in files], tokenizer=model.name or None, plot=str(target),
                     prepared=_StatsPrepared(model=model, files=files, plot=Path(target)))  # fmt: skip


def run_stats(plan: StatsPlan) -> StatsResult:
    """Count records, kinds, roles and turns, measure lengths (tokens when the tokenizer is local) and write the
    histogram."""
    from llmforge.data import inspect

    return inspect.stats(plan)


# ----------------------------------------------------------------------------------------------------------------
# preview
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreviewPrepared:
    model: ModelConfig
    files: list[Path]


@dataclass(frozen=True)
class PreviewPlan:
    """A `data preview` decided: which files, how many records, rendered with which model's tokenizer."""

    inputs: list[str]
    model: str
    count: int
    prepared: _PreviewPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "inputs": self.inputs, "model": self.model, "count": self.count}


@dataclass(frozen=True)
class PreviewResult:
    """The first records as training sees them. as_dict() is `llmforge data preview --json`, key for key."""

    model: str
    mask_source: str  # how training makes the mask (chat_spans.HOW) and where the template came from, or "raw text"
    examples: list[Any]  # inspect.Example: file, line, kind, renderings (trained and masked segments)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_preview(dataset: str | None, model: ModelConfig, workspace: Workspace, *, n: int = 3) -> PreviewPlan:
    """Refuse a preview without model.name, resolve the dataset (default the workspace's prepared splits). Loads
    no tokenizer (run does: a tokenizer not on this machine is refused there) and reads no record."""
    from llmforge.data.inspect import dataset_files

    if not model.name:
        raise UsageError("preview needs the model's tokenizer", hint="set model.name (a local folder or hub id)")
    files = dataset_files(dataset, workspace)
    return PreviewPlan(inputs=[str(f) for f in files], model=str(model.name), count=n,
                       prepared=_PreviewPrepared(model=model, files=files))  # fmt: skip


def run_preview(plan: PreviewPlan) -> PreviewResult:
    """Render the first `count` valid records with the model's tokenizer and the template training uses, split
    into trained and masked segments."""
    from llmforge.data import inspect

    return inspect.preview(plan)


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GeneratePrepared:
    generate: GenerateConfig
    files: list[Path]
    output: Path
    state: Path  # the progress file beside the output: the chunks done, for a rerun to skip
    jobs: list[tuple[str, int, str, str]]  # (document, chunk index, chunk, chunk id)
    done: dict[str, dict[str, Any]]  # chunk id -> its entry in the progress file (empty with `force`)


@dataclass(frozen=True)
class GeneratePlan:
    """A `data generate` decided: the documents, cut in chunks; the chunks an earlier run finished; the endpoint."""

    inputs: list[str]
    output: str
    endpoint: str
    model: str
    chunks: int
    chunks_done: int  # finished by an earlier run: skipped (0 with `force`)
    requests: int  # one per chunk left (retries not counted)
    force: bool
    prepared: _GeneratePrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "inputs": self.inputs, "output": self.output, "endpoint": self.endpoint,
                "model": self.model, "chunks": self.chunks, "chunks_done": self.chunks_done,
                "requests": self.requests, "force": self.force}  # fmt: skip


@dataclass(frozen=True)
class GenerateResult:
    """The generated pairs file. as_dict() is `llmforge data generate --json`, key for key."""

    output: str
    documents: int
    chunks: int
    chunks_skipped: int  # done by an earlier run
    chunks_failed: int
    pairs: int
    dropped: dict[str, int] = field(default_factory=dict)  # bad_json / ungrounded / duplicate
    repaired_json: int = 0
    requests: int = 0  # requests made, retries included
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_generate(docs: list[str], generate: GenerateConfig, workspace: Workspace, *,
                  force: bool = False) -> GeneratePlan:
    """Check the endpoint and model are named, read and chunk the documents (an unreadable one is refused here),
    and read what an earlier run finished (a rerun resumes; `force` starts over; an output without a progress
    file is refused unless `force`). Contacts nothing and writes nothing."""
    from llmforge.data import generation

    return generation.plan(docs, generate, workspace, force=force)


def run_generate(plan: GeneratePlan, *, progress=None) -> GenerateResult:
    """Ask the endpoint for pairs from each chunk left, keep those grounded in their chunk, drop repeated
    questions and write the output (atomically). `progress(done, total)` after each chunk. Raises LlmforgeError
    when every request fails."""
    from llmforge.data import generation

    return generation.generate(plan, progress=progress)
