"""`data stats` and `data preview`: what a dataset holds, and what training will see of it token by token."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge.data import records as rec
from llmforge.data import sources
from llmforge.errors import UsageError
from llmforge.workspace import Workspace

if TYPE_CHECKING:
    from llmforge.data.stage import PreviewPlan, PreviewResult, StatsPlan, StatsResult


def dataset_files(dataset: str | None, workspace: Workspace) -> list[Path]:
    """The files of DATASET (a file, folder or glob), by default the workspace's prepared splits."""
    if dataset:
        return sources.resolve_inputs([dataset])
    files = [workspace.split_file(s) for s in ("train", "val", "test") if workspace.split_file(s).is_file()]
    if not files:
        raise UsageError(
            f"no prepared data in {workspace.data_dir}",
            hint="run `llmforge data prepare INPUTS` or name a dataset file",
        )
    return files


def iter_records(files: list[Path], max_record_chars: int = 10_000_000):
    """(file, line, kind, canonical record or None, problem or None) for every record of `files`."""
    warnings: list[str] = []
    for path in files:
        for item in sources.read(path, max_record_chars, warnings):
            if item.reason is not None:
                yield item.file, item.line, None, None, f"{item.field}: {item.reason}"
                continue
            try:
                kind, record = rec.canonical(item.obj)
            except rec.RecordError as exc:
                yield item.file, item.line, None, None, f"{exc.field}: {exc.reason}"
                continue
            yield item.file, item.line, kind, record, None


def stats(plan: StatsPlan) -> StatsResult:
    """stage.run_stats: every record counted and measured, the histogram written."""
    import numpy as np

    from llmforge import checkpoints
    from llmforge.data.report import histogram
    from llmforge.data.stage import StatsResult
    from llmforge.data.tokens import TokenCounter

    files, model = plan.prepared.files, plan.prepared.model
    tokenizer = checkpoints.load_tokenizer(model.name, revision=model.revision,
                                           trust_remote_code=model.trust_remote_code, download=False, required=False)
    if tokenizer is not None:
        checkpoints.use_training_template(tokenizer, model.chat_template, untrainable="keep")
    counter = TokenCounter(tokenizer) if tokenizer is not None else None
    per_file: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    turns: list[int] = []
    lengths: list[int] = []
    problems: list[str] = []
    invalid = 0
    for file, line, kind, record, problem in iter_records(files):
        per_file[file] += 1
        if problem:
            invalid += 1
            if len(problems) < 20:
                problems.append(f"{file}:{line}: {problem}")
            continue
        kinds[kind] += 1
        messages = record.get("messages") or (record.get("prompt", []) + record.get("chosen", record.get("completion", [])))
        for m in messages:
            roles[m["role"]] += 1
        if messages:
            turns.append(len(messages))
        lengths.append(counter.count(record) if counter else len(rec.plain(record)))
    unit = "tokens" if counter else "characters"
    length: dict[str, Any] = {"unit": unit}
    if lengths:
        arr = np.asarray(lengths)
        p = np.percentile(arr, [50, 90, 99])
        length.update(min=int(arr.min()), mean=round(float(arr.mean()), 1), p50=float(p[0]), p90=float(p[1]),
                      p99=float(p[2]), max=int(arr.max()))  # fmt: skip
        buckets = np.histogram(arr, bins=10)
        length["histogram"] = [
            {"from": float(lo), "to": float(hi), "records": int(n)}
            for lo, hi, n in zip(buckets[1][:-1], buckets[1][1:], buckets[0])
        ]
    turn_stats = {}
    if turns:
        t = np.asarray(turns)
        turn_stats = {"min": int(t.min()), "mean": round(float(t.mean()), 2), "max": int(t.max())}
    written = None
    if lengths:
        target = plan.prepared.plot
        target.parent.mkdir(parents=True, exist_ok=True)
        from llmforge import atomic

        with atomic.atomic_path(target) as tmp:
            histogram(lengths, tmp, f"record length ({unit})")
        written = str(target)
    return StatsResult(dict(per_file), sum(per_file.values()), invalid, dict(kinds), dict(roles), turn_stats,
                       length, written, problems)  # fmt: skip


# --- preview -----------------------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One rendering: the text in segments, each trained on or masked, and the token counts."""

    title: str
    segments: list[dict[str, Any]]  # {"text": str, "trained": bool}
    tokens: int
    trained_tokens: int


@dataclass
class Example:
    file: str
    line: int
    kind: str
    renderings: list[Rendered]


def _segments(tokenizer, ids: list[int], mask: list[int]) -> list[dict[str, Any]]:
    segments, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            segments.append({"text": tokenizer.decode(ids[start:i]), "trained": bool(mask[start])})
            start = i
    return segments


def preview(plan: PreviewPlan) -> PreviewResult:
    """stage.run_preview: the first plan.count valid records rendered as training renders them."""
    from llmforge import chat_spans, checkpoints
    from llmforge.data.stage import PreviewResult
    from llmforge.data.tokens import conversation

    model, n = plan.prepared.model, plan.count
    tokenizer = checkpoints.load_tokenizer(model.name, revision=model.revision,
                                           trust_remote_code=model.trust_remote_code, download=False, required=False)
    if tokenizer is None:
        raise UsageError(
            f"no tokenizer found for {model.name} on this machine",
            hint="point model.name at a local model folder, or download the model first",
        )
    files = plan.prepared.files
    verdict = checkpoints.use_training_template(tokenizer, model.chat_template, untrainable="keep")
    from datetime import datetime

    from llmforge.chat_spans import encode

    today = datetime.now()  # one "today" for every render, as in a training run
    examples: list[Example] = []
    mask_source = "raw text"
    for file, line, kind, record, problem in iter_records(files):
        if problem:
            continue
        renderings = []
        if kind == "text":
            ids = tokenizer(record["text"])["input_ids"]
            renderings.append(Rendered("text", _segments(tokenizer, ids, [1] * len(ids)), len(ids), len(ids)))
        else:
            chat_spans.require(verdict)  # training could not tell the assistant's tokens either
            family = f" ({verdict.family.name})" if verdict.family else ""
            mask_source = f"{verdict.how}, template: {verdict.source}{family}"
            answers = {"preference": ("chosen", "rejected"), "kto": ("completion",)}.get(kind, ("messages",))
            for which in answers:
                samples = encode(tokenizer, verdict, conversation(record, which), now=today)
                for number, (ids, mask, _turns) in enumerate(samples, start=1):
                    # per-turn prefix: one sample per assistant turn, each shown on its own
                    title = f"{which}, assistant turn {number}" if len(samples) > 1 else which
                    renderings.append(Rendered(title, _segments(tokenizer, ids, mask), len(ids), sum(mask)))
        examples.append(Example(file, line, kind, renderings))
        if len(examples) >= n:
            break
    return PreviewResult(str(model.name), mask_source, examples)
