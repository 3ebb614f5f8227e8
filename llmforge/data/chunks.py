"""The per-record work of `data prepare`, a chunk of records at a time: parse, validate, normalize, apply the
user's data.transforms, scrub PII, filter (lengths, blocklist, language), hash and serialize. Chunks are
independent, so a process pool can share them out; the caller takes the results in order and does what needs all records in sequence (exact dedupe, counts, the spill file).
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmforge.data import records as rec
from llmforge.data import sources
from llmforge.data.clean import PiiScrubber
from llmforge.data.dedupe import exact_key, words
from llmforge.extensions import load, one_line


@dataclass
class Settings:
    """What a worker needs to know about the run (sent to each worker once)."""

    fmt: str
    max_record_chars: int
    pii: dict[str, bool]
    min_len: int
    max_len: int | None
    min_answer: int
    blocklist: Any  # a compiled pattern or None
    unit: str
    skip: bool  # data.on_error == "skip": rejected.jsonl lines are wanted
    near: tuple[int, int] | None  # (num_perm, shingle) when near-duplicate signatures are wanted
    counter: Any = None  # a TokenCounter: chunks then run in-process only
    transforms: tuple[str, ...] = ()  # data.transforms entries, imported by each Worker
    languages: frozenset[str] = frozenset()  # data.languages; empty: no detection


@dataclass
class Result:
    """A chunk's records, in three ordered streams (problems, filtered, passed); `items` counts them all."""

    file: str
    items: int = 0
    dataset_kind: str | None = None
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (line, field, reason)
    rejected: list[bytes] = field(default_factory=list)  # a rejected.jsonl line per problem (on_error: skip)
    kinds: Counter = field(default_factory=Counter)
    transformed_out: int = 0  # records a data.transforms function dropped (returned None)
    # (message, hint) when a transform raised: the chunk stops there and the caller raises the UsageError (a
    # UsageError raised in a pool worker would lose its hint on the way back)
    failure: tuple[str, str] | None = None
    formats: Counter = field(default_factory=Counter)
    filtered: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    lines: array = field(default_factory=lambda: array("I"))  # passed records: line, content key, size
    keys: array = field(default_factory=lambda: array("Q"))
    sizes: array = field(default_factory=lambda: array("I"))
    ends: array = field(default_factory=lambda: array("Q"))  # end offset of each record's line in `spill`
    spill: bytes = b""
    signatures: bytes = b""  # num_perm uint32 values per passed record
    pii: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)  # detected language of each record past the other filters
    seconds: Counter = field(default_factory=Counter)


class Worker:
    """Turns chunks into Results. One per process: its scrubbers and MinHash object are reused across chunks."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.scrub = PiiScrubber(**settings.pii)
        # rejected.jsonl quotes the inputs: scrubbed like the records, counted apart from them
        self.scrub_rejected = PiiScrubber(**settings.pii)
        # imported once per process (a forked worker finds the modules already imported by the parent)
        self.transforms = [(entry, load(entry, "data.transforms")) for entry in settings.transforms]
        self.hasher = None
        if settings.near is not None:
            from llmforge.data.dedupe import MinHasher

            self.hasher = MinHasher(*settings.near)
        self.detect = None
        if settings.languages:
            from llmforge.data import languages

            languages.load()
            self.detect = languages.detect

    def run(self, chunk: sources.Lines | list[sources.Item], dataset_kind: str | None) -> Result:
        """`dataset_kind`: the kind of the dataset's first valid record, if one came before this chunk."""
        s = self.settings
        clock = time.perf_counter
        seconds: Counter[str] = Counter()
        if isinstance(chunk, sources.Lines):
            t0 = clock()
            name, limit, item_of = chunk.file, s.max_record_chars, sources.jsonl_item
            items = [item_of(name, number, raw, limit) for number, raw in enumerate(chunk.lines, chunk.first)]
            items = [item for item in items if item is not None]
            seconds["read"] += clock() - t0
        else:
            items = chunk
        out = Result(file=chunk.file if isinstance(chunk, sources.Lines) else chunk[0].file, items=len(items))
        scrub, counter, blocklist, detect, wanted = self.scrub, s.counter, s.blocklist, self.detect, s.languages
        min_len, max_len, min_answer, unit = s.min_len, s.max_len, s.min_answer, s.unit
        spill: list[bytes] = []
        signatures: list[bytes] = []
        offset = 0
        dumps = orjson.dumps
        for item in items:
            if item.reason is not None:
                self._problem(out, item, item.field or "record", item.reason)
                continue
            t1 = clock()
            try:
                detected = rec.detect(item.obj, dataset_kind) if s.fmt == "auto" else s.fmt
                kind, record = rec.canonical(item.obj, detected)
                if self.transforms:
                    record = self._transform(out, item, record)
                    if out.failure is not None:
                        break
                    if record is None:
                        seconds["transform"] += clock() - t1
                        out.transformed_out += 1
                        continue
                    # a returned record is checked and normalized again, like any input record
                    try:
                        kind, record = rec.canonical(record, rec.detect(record))
                    except rec.RecordError as exc:
                        raise rec.RecordError(exc.field, f"after data.transforms: {exc.reason}") from None
                if dataset_kind is None:
                    dataset_kind = kind
                elif kind != dataset_kind:
                    raise rec.RecordError(
                        "record", f"a {kind} record in a {dataset_kind} dataset (one kind per dataset)"
                    )
            except rec.RecordError as exc:
                seconds["validate_normalize"] += clock() - t1
                self._problem(out, item, exc.field, exc.reason)
                continue
            t2 = clock()
            seconds["validate_normalize"] += t2 - t1
            out.kinds[kind] += 1
            out.formats[detected] += 1
            if out.problems and not s.skip:
                continue  # failing anyway: only collect the remaining problems
            if scrub.active:
                record = rec.map_texts(record, scrub)
            t3 = clock()
            text = rec.plain(record)
            reason = None
            size = counter.count(record) if counter else len(text)
            if size < min_len:
                reason = f"too short: {size} {unit} (min {min_len})"
            elif max_len is not None and size > max_len:
                reason = f"too long: {size} {unit} (max {max_len})"
            elif kind != "text" and rec.answer_chars(record) < min_answer:
                reason = f"answer shorter than {min_answer} characters"
            elif blocklist is not None and (hit := blocklist.search(text)):
                reason = f"matches the blocklist ({hit.group(0)[:40]!r})"
            t4 = clock()
            seconds["clean"] += t3 - t2
            seconds["filter"] += t4 - t3
            if detect is not None and reason is None:  # the costliest filter, so the last
                language = detect(record)
                out.languages[language] += 1
                if language not in wanted:
                    reason = f"language: {language} (not in data.languages)"
                t5 = clock()
                seconds["language"] += t5 - t4
                t4 = t5
            if reason:
                out.filtered.append((item.line, reason))
                continue
            split = words(text)  # for the exact key and, when wanted, the near-duplicate shingles
            out.keys.append(exact_key(text, split))
            t5 = clock()
            line = dumps(record) + b"\n"
            spill.append(line)
            offset += len(line)
            out.ends.append(offset)
            out.lines.append(item.line)
            out.sizes.append(size)
            t6 = clock()
            seconds["exact_dedupe"] += t5 - t4
            seconds["spill"] += t6 - t5
            if self.hasher is not None:
                signatures.append(self.hasher.signature(text, split))
                seconds["near_signatures"] += clock() - t6
        out.dataset_kind = dataset_kind
        out.spill = b"".join(spill)
        out.signatures = b"".join(signatures)
        out.pii = scrub.counts.copy()
        scrub.counts.clear()
        out.seconds = seconds
        return out

    def _transform(self, out: Result, item: sources.Item, record: dict[str, Any]) -> dict[str, Any] | None:
        """The record through each data.transforms function in turn; None once one drops it."""
        for entry, function in self.transforms:
            try:
                record = function(record)
            except Exception as exc:  # the user's code: any failure is theirs to fix, reported where it happened
                out.failure = (f"data.transforms: {entry} failed on {item.file}:{item.line}: {one_line(exc)}",
                               "fix the function, or have it return None to drop such records")
                return None
            if record is None:
                return None
        return record

    def _problem(self, out: Result, item: sources.Item, field_: str, reason: str) -> None:
        out.problems.append((item.line, field_, reason))
        if self.settings.skip:
            out.rejected.append(rejected_line(item, field_, reason, self.scrub_rejected))


def rejected_line(item: sources.Item, field_: str, reason: str, scrub: PiiScrubber) -> bytes:
    """One line of rejected.jsonl: where, why, and the record as read, PII scrubbed when data.pii asks for it."""
    record = item.obj
    if scrub.active and record is not None:
        try:
            record = scrub.scrub_value(record)
        except RecursionError:
            record = None
    entry = {"file": item.file, "line": item.line, "field": field_,
             "reason": scrub(reason) if scrub.active else reason, "record": record}  # fmt: skip
    try:
        return orjson.dumps(entry, default=str) + b"\n"
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (255 levels): keep where and why
        return orjson.dumps({**entry, "record": None}) + b"\n"


# The worker process's own Worker, made by `start` when the pool starts it.
_worker: Worker | None = None


def start(settings: Settings) -> None:
    global _worker
    _worker = Worker(settings)


def run(chunk: sources.Lines | list[sources.Item], dataset_kind: str | None) -> Result:
    """A pool task: the chunk through this process's Worker."""
    return _worker.run(chunk, dataset_kind)
