"""The per-record work of `data prepare`, a chunk of records at a time: parse, validate, normalize, apply the
user's data.transforms, scrub PII, filter (lengths, blocklist, language), hash and serialize. Chunks are
independent, so a process pool can share them out; the caller takes the results in order and does what needs all
records in sequence (exact dedupe, counts, the spill file).

Each step runs over the whole chunk before the next one (per-step timings cost a clock reading per chunk, not per
record), and the common record shapes (chat messages and alpaca rows of plain strings) skip most of the per-record
Python: their texts are normalized all together (clean.normalize_texts) and they travel as (roles, contents) until
they are serialized. Everything else goes through records.canonical one record at a time, as before.
"""

from __future__ import annotations

import gc
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from llmforge.data import records as rec
from llmforge.data import sources
from llmforge.data.clean import PiiScrubber, normalize_texts
from llmforge.data.dedupe import exact_digests, joined_words
from llmforge.extensions import load, one_line


@dataclass(frozen=True)
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
    spilled_to: str | None = None  # the file a pool worker wrote `spill` and `signatures` to instead (see `run`)
    signatures: bytes = b""  # num_perm uint32 values per passed record
    pii: Counter = field(default_factory=Counter)
    languages: Counter = field(default_factory=Counter)  # detected language of each record past the other filters
    seconds: Counter = field(default_factory=Counter)


# A record in the common shape: its roles and the contents of its turns, as canonical's {"messages": [...]} holds them.
Turns = tuple[tuple[str, ...], list[str]]
PREFIX = {role: f"{role}: " for role in rec.ROLES}  # records.plain's "role: content"
ROLES = frozenset(rec.ROLES)


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
        # the roles of a conversation -> whether records.canonical accepts them (checked once per sequence)
        self.turns_ok: dict[tuple[str, ...], bool] = {}

    def run(self, chunk: sources.Lines | list[sources.Item], dataset_kind: str | None) -> Result:
        """`dataset_kind`: the kind of the dataset's first valid record, if one came before this chunk."""
        # A chunk makes tens of thousands of short-lived containers, freed by reference counting: the cycle collector
        # would only walk them over and over (5% of the time). Cycles a chunk makes are collected after it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(chunk, dataset_kind)
        finally:
            if collecting:
                gc.enable()

    def _run(self, chunk: sources.Lines | list[sources.Item], dataset_kind: str | None) -> Result:
        clock = time.perf_counter
        t0 = clock()
        if isinstance(chunk, sources.Lines):
            entries = sources.jsonl_items(chunk, self.settings.max_record_chars)
            out = Result(file=chunk.file, items=len(entries))
        else:
            entries = [item if item.reason is not None else (item.line, item.obj) for item in chunk]
            out = Result(file=chunk[0].file, items=len(entries))
        t1 = clock()
        passed = self._validate(out, entries, dataset_kind)
        t2 = clock()
        out.seconds.update(read=t1 - t0, validate_normalize=t2 - t1)
        if passed:
            self._process(out, passed)
        return out

    # --- validate and normalize --------------------------------------------------------------------------------

    def _validate(self, out: Result, entries: list, dataset_kind: str | None) -> list[tuple[int, Any]]:
        """Each entry to its kind and canonical form, in order: (line, Turns or record dict) of the records that pass,
        problems into `out`."""
        s = self.settings
        fmt, skip, transforms = s.fmt, s.skip, self.transforms
        shapes = self._shapes(entries) if not transforms and fmt in ("auto", "messages", "alpaca") else None
        passed: list[tuple[int, Any]] = []
        problems = out.problems
        kinds: list[str] = []
        formats: list[str | None] = []
        for index, entry in enumerate(entries):
            if type(entry) is sources.Item:
                self._problem(out, entry, entry.field or "record", entry.reason)
                continue
            line, obj = entry
            turns = shapes[index] if shapes is not None else None
            try:
                if turns is not None:
                    kind, detected = "messages", turns[2]
                    record: Any = turns[:2]
                else:
                    detected = rec.detect(obj, dataset_kind) if fmt == "auto" else fmt
                    kind, record = rec.canonical(obj, detected)
                    if transforms:
                        record = self._transform(out, line, record)
                        if out.failure is not None:
                            break
                        if record is None:
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
                self._problem(out, sources.Item(out.file, line, obj), exc.field, exc.reason)
                continue
            kinds.append(kind)
            formats.append(detected)
            if problems and not skip:
                continue  # failing anyway: only collect the remaining problems
            passed.append((line, record))
        # counted once per chunk (a Counter increment per record costs more); the same keys in the same order
        out.kinds.update(kinds)
        out.formats.update(formats)
        out.dataset_kind = dataset_kind
        return passed

    def _shapes(self, entries: list) -> list[tuple[tuple[str, ...], list[str], str] | None]:
        """For each entry in the common shape that canonical would accept: (roles, normalized contents, format),
        what canonical makes of it; None for every other entry (canonical then decides, and says what is wrong).

        The common shapes: {"messages": [{"role": system/user/assistant, "content": a string}, ...]} and
        {"instruction": a string, "input": a string or null, "output": a string}, without a "system" field."""
        fmt = self.settings.fmt
        texts: list[str] = []
        found: list[tuple[str, Any] | None] = []
        for entry in entries:
            obj = entry[1] if type(entry) is tuple else None
            shape = None
            if type(obj) is dict and obj.get("system") in (None, ""):
                detected = fmt if fmt != "auto" else _format(obj)
                if detected == "messages":
                    messages = obj.get("messages")
                    if type(messages) is list and messages:
                        try:  # anything but dicts with a known role and a string content raises or fails the test
                            roles = tuple([m["role"] for m in messages])
                            contents = [m["content"] for m in messages]
                            if ROLES.issuperset(roles) and "".join(contents) is not None:
                                shape = ("messages", roles)
                                texts += contents
                        except (KeyError, TypeError):
                            pass
                elif detected == "alpaca":
                    instruction, extra, output = obj.get("instruction"), obj.get("input"), obj.get("output")
                    if type(instruction) is str and type(output) is str and (extra is None or type(extra) is str):
                        texts += (instruction, extra or "", output)
                        shape = ("alpaca", None)
            found.append(shape)
        normalized = normalize_texts(texts)
        shapes: list[tuple[tuple[str, ...], list[str], str] | None] = []
        at, turns_ok = 0, self.turns_ok
        for shape in found:
            if shape is None:
                shapes.append(None)
                continue
            detected, roles = shape
            if detected == "messages":
                contents = normalized[at : at + len(roles)]
                at += len(roles)
                ok = turns_ok.get(roles)
                if ok is None:
                    ok = turns_ok[roles] = _turns_ok(roles)
                shapes.append((roles, contents, detected) if ok and all(contents) else None)
            else:
                instruction, extra, output = normalized[at : at + 3]
                at += 3
                if instruction and output:
                    user = f"{instruction}\n\n{extra}" if extra else instruction
                    shapes.append((("user", "assistant"), [user, output], detected))
                else:
                    shapes.append(None)
        return shapes

    # --- clean, filter, hash, serialize ---------------------------------------------------------------------------

    def _process(self, out: Result, passed: list[tuple[int, Any]]) -> None:
        s = self.settings
        clock = time.perf_counter
        seconds = out.seconds
        t0 = clock()
        scrub = self.scrub
        if scrub.active and scrub.may_change("\x00".join([
            text for _, record in passed for text in (record[1] if type(record) is tuple else rec.texts(record))
        ])):  # fmt: skip
            passed = [
                (line, (record[0], [scrub(c) for c in record[1]]) if type(record) is tuple
                 else rec.map_texts(record, scrub))
                for line, record in passed
            ]  # fmt: skip
        out.pii = scrub.counts.copy()
        scrub.counts.clear()
        t1 = clock()
        seconds["clean"] += t1 - t0

        counter, blocklist, detect, wanted = s.counter, s.blocklist, self.detect, s.languages
        min_len, max_len, min_answer, unit = s.min_len, s.max_len, s.min_answer, s.unit
        kept: list[tuple[int, Any, str, int]] = []  # line, record, plain text, size
        language_seconds = 0.0
        for line, record in passed:
            if type(record) is tuple:
                roles, contents = record
                text = "\n\n".join([PREFIX[r] + c for r, c in zip(roles, contents)])
                if counter is not None or detect is not None:
                    record = _as_dict(record)
                answer = min([len(c) for r, c in zip(roles, contents) if r == "assistant"])
            else:
                text = rec.plain(record)
                answer = rec.answer_chars(record) if "text" not in record else min_answer
            size = counter.count(_as_dict(record)) if counter else len(text)
            reason = None
            if size < min_len:
                reason = f"too short: {size} {unit} (min {min_len})"
            elif max_len is not None and size > max_len:
                reason = f"too long: {size} {unit} (max {max_len})"
            elif answer < min_answer:
                reason = f"answer shorter than {min_answer} characters"
            elif blocklist is not None and (hit := blocklist.search(text)):
                reason = f"matches the blocklist ({hit.group(0)[:40]!r})"
            if detect is not None and reason is None:  # the costliest filter, so the last
                t = clock()
                language = detect(_as_dict(record))
                language_seconds += clock() - t
                out.languages[language] += 1
                if language not in wanted:
                    reason = f"language: {language} (not in data.languages)"
            if reason:
                out.filtered.append((line, reason))
                continue
            kept.append((line, record, text, size))
        t2 = clock()
        seconds["filter"] += t2 - t1 - language_seconds
        if detect is not None:
            seconds["language"] += language_seconds
        if not kept:
            return

        texts = [text for _, _, text, _ in kept]
        joined = joined_words(texts)
        digests = exact_digests(joined)
        # each text's encoded_words, for the near-duplicate shingles only: its words joined by one space, split again
        split = [piece.split(b" ") if piece else [] for piece in joined] if self.hasher is not None else None
        if sys.byteorder == "little":
            # on a little-endian machine array("Q") holds a digest's bytes as the int that exact_key reads from
            # them, so no int is made per record
            out.keys.frombytes(b"".join(digests))
        else:
            out.keys.extend([int.from_bytes(d, "little") for d in digests])
        t3 = clock()
        seconds["exact_dedupe"] += t3 - t2

        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        spill = [
            dumps(
                {"messages": [{"role": r, "content": c} for r, c in zip(*record)]} if type(record) is tuple else record,
                option=newline,
            )
            for _, record, _, _ in kept
        ]
        out.spill = b"".join(spill)
        out.ends.extend(accumulate(map(len, spill)))
        out.lines.extend([line for line, _, _, _ in kept])
        out.sizes.extend([size for _, _, _, size in kept])
        t4 = clock()
        seconds["spill"] += t4 - t3
        if self.hasher is not None:
            out.signatures = self.hasher.signatures(split)
            seconds["near_signatures"] += clock() - t4

    def _transform(self, out: Result, line: int, record: dict[str, Any]) -> dict[str, Any] | None:
        """The record through each data.transforms function in turn; None once one drops it."""
        for entry, function in self.transforms:
            try:
                record = function(record)
            except Exception as exc:  # the user's code: any failure is theirs to fix, reported where it happened
                out.failure = (
                    f"data.transforms: {entry} failed on {out.file}:{line}: {one_line(exc)}",
                    "fix the function, or have it return None to drop such records",
                )
                return None
            if record is None:
                return None
        return record

    def _problem(self, out: Result, item: sources.Item, field_: str, reason: str) -> None:
        out.problems.append((item.line, field_, reason))
        if self.settings.skip:
            out.rejected.append(rejected_line(item, field_, reason, self.scrub_rejected))


def _format(obj: dict) -> str | None:
    """records.detect for the two common formats (its order of keys); None for any other."""
    if "messages" in obj:
        return "messages"
    if "conversations" in obj or "chosen" in obj or "rejected" in obj:
        return None
    if "instruction" in obj:
        return "alpaca"
    return None


def _turns_ok(roles: tuple[str, ...]) -> bool:
    try:
        rec._check_turns([{"role": role} for role in roles], "messages")
    except rec.RecordError:
        return False
    return True


def _as_dict(record: Any) -> dict[str, Any]:
    if type(record) is tuple:
        return {"messages": [{"role": r, "content": c} for r, c in zip(*record)]}
    return record


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
    _keep_heap()
    _worker = Worker(settings)


def _keep_heap() -> None:
    """Every chunk allocates and frees buffers of a few MB (its bytes, the texts joined, its spill lines). glibc
    serves such sizes with mmap and hands the pages back when they are freed (or trims them off the top of the heap),
    so each chunk faults them in anew: half of a worker's system time, ~3 us a record. A pool worker runs nothing
    but chunks, so it keeps them on its heap. Only the workers: the caller's process is left as it is."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest (blocks up to it come from the heap)
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: free heap kept before any is given back


def run(chunk: sources.Lines | list[sources.Item], dataset_kind: str | None, spill_to: str | None = None) -> Result:
    """A pool task: the chunk through this process's Worker. A chunk sent as a place in its file (Lines.at) is read
    here; with `spill_to`, the spill lines go to that new file rather than back through the pool's pipe (the bytes
    both ways were most of what pickling and the pipe cost)."""
    if isinstance(chunk, sources.Lines):
        chunk = chunk.load()
    result = _worker.run(chunk, dataset_kind)
    if spill_to is not None and result.spill:
        with open(spill_to, "xb") as fh:
            fh.write(result.spill)
            fh.write(result.signatures)  # after the lines: `ends` tells where they stop
        result.spill, result.signatures, result.spilled_to = b"", b"", spill_to
    return result
