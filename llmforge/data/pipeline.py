"""`data prepare` and `data validate`: ingest -> validate -> normalize -> clean -> filter -> deduplicate -> split
-> write, streaming. Records pass through once into a spill file; only compact per-record arrays (origin,
content hash, length, MinHash band hashes) stay in memory; a second pass writes the splits.

`data prepare` and `data validate` are decided and started by llmforge/data/stage.py (plan and run, plan_validate and
run_validate); the work is here: _prepare and _publish, validate.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from llmforge import atomic, manifest, registry
from llmforge.config.data import DataConfig
from llmforge.config.model import ModelConfig
from llmforge.data import chunks, sources
from llmforge.data import hub as hub_inputs
from llmforge.data import records as rec
from llmforge.data.clean import PiiScrubber
from llmforge.data.stage import ValidateResult
from llmforge.errors import InputError, UsageError
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)
Progress = Callable[[str, int], None]
MAX_PROBLEMS_KEPT = 100_000
MAX_PROBLEMS_SHOWN = 200
SPLITS = ("train", "val", "test")


@dataclass
class Problem:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file  # line 0: the file as a whole
        return f"{where}: {self.field}: {self.reason}"


class _Tally:
    """What a pass over every input counts, in input order: `validate` reads records itself (_Scan), `prepare` gets
    the same counts back from its chunks."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.problem_count = 0
        self.records = 0
        self.kinds: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.per_file: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.unreadable: dict[str, str] = {}
        self.dataset_kind: str | None = None

    def add_problem(self, file: str, line: int, field_: str, reason: str) -> Problem:
        """Count a problem; keep the first MAX_PROBLEMS_KEPT of them."""
        self.problem_count += 1
        found = Problem(file, line, field_, reason)
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(found)
        return found


class _Scan(_Tally):
    """Reads every input and yields (item, kind, canonical record) for valid records; collects problems."""

    def __init__(self, data: DataConfig, files: list[Path]):
        super().__init__()
        self.data = data
        self.files = files
        self.read_seconds = 0.0
        self.validate_seconds = 0.0

    def problem(self, item: sources.Item, field_: str, reason: str) -> Problem:
        return self.add_problem(item.file, item.line, field_, reason)

    def __iter__(self) -> Iterator[tuple[sources.Item, str, dict[str, Any], Problem | None]]:
        fmt = self.data.format
        limit = self.data.max_record_chars
        clock = time.perf_counter
        for path in self.files:
            before = self.records
            stream = sources.read(path, limit, self.warnings)
            while True:
                t0 = clock()
                item = next(stream, None)
                t1 = clock()
                self.read_seconds += t1 - t0
                if item is None:
                    self.per_file[str(path)] += self.records - before
                    break
                self.records += 1
                if item.reason is not None:
                    if item.field == "file":
                        self.unreadable[item.file] = item.reason
                        before += 1  # the file's own problem is no record of it
                    yield item, "", {}, self.problem(item, item.field or "record", item.reason)
                    continue
                try:
                    detected = rec.detect(item.obj, self.dataset_kind) if fmt == "auto" else fmt
                    kind, record = rec.canonical(item.obj, detected)
                    if self.dataset_kind is None:
                        self.dataset_kind = kind
                    elif kind != self.dataset_kind:
                        raise rec.RecordError(
                            "record", f"a {kind} record in a {self.dataset_kind} dataset (one kind per dataset)"
                        )
                except rec.RecordError as exc:
                    self.validate_seconds += clock() - t1
                    yield item, "", {}, self.problem(item, exc.field, exc.reason)
                    continue
                self.validate_seconds += clock() - t1
                self.kinds[kind] += 1
                self.formats[detected] += 1
                yield item, kind, record, None

    def result(self) -> ValidateResult:
        return ValidateResult(
            files=[str(f) for f in self.files],
            records=self.records,
            valid=self.records - self.problem_count,
            problems=self.problems,
            problem_count=self.problem_count,
            kinds=dict(self.kinds),
            formats=dict(self.formats),
            warnings=self.warnings,
            unreadable=dict(self.unreadable),
        )


def validate(data: DataConfig, files: list[Path], progress: Progress | None = None) -> ValidateResult:
    """Read and check every record of `files` (data.inputs, resolved); write nothing."""
    scan = _Scan(data, files)
    for n, _ in enumerate(scan, 1):
        if progress and n % 10_000 == 0:
            progress("validate", n)
    return scan.result()


def _input_files(data: DataConfig) -> list[Path]:
    """The files data.inputs names; Hub dataset ids among them are read into the datasets cache first."""
    return sources.resolve_inputs(data.inputs, hub=partial(hub_inputs.materialize, hub=data.hub))


def problems_error(problems: list[Problem], count: int, unreadable: int = 0) -> InputError:
    shown = "\n".join(str(p) for p in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n... and {count - MAX_PROBLEMS_SHOWN} more" if count > MAX_PROBLEMS_SHOWN else ""
    invalid = count - unreadable
    what = [f"{invalid} invalid record{'s' if invalid != 1 else ''}"] if invalid else []
    if unreadable:
        what.insert(0, f"{unreadable} unreadable file{'s' if unreadable != 1 else ''}")
    fix = "fix them"
    if unreadable:
        fix = "replace or remove the unreadable files" + (" and fix the invalid records" if invalid else "")
    return InputError(
        f"{' and '.join(what)}; nothing written:\n{shown}{more}",
        hint=f"{fix}, or set data.on_error: skip (-s data.on_error=skip) to write the good records and "
        "rejected.jsonl; `llmforge data validate --json` lists every problem",
    )


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    arr = np.asarray(values)
    p = np.percentile(arr, [50, 90, 99])
    return {
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 1),
        "p50": float(p[0]),
        "p90": float(p[1]),
        "p99": float(p[2]),
        "max": int(arr.max()),
    }


def _mix(values, seed: int):
    """splitmix64 of (value xor seed): a stable, well-spread rank for each cluster key."""
    with np.errstate(over="ignore"):
        z = values ^ np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_splits(keys, roots, keep, split, seed: int):
    """Split label (0 train, 1 val, 2 test) for every record: whole clusters go to one split, ranked by a seeded
    hash of the cluster's content key, filled test first, then val, then train, to the configured shares."""
    labels = np.zeros(len(roots), dtype=np.uint8)
    kept_roots = roots[keep]
    if not len(kept_roots):
        return labels
    group_roots, sizes = np.unique(kept_roots, return_counts=True)
    order = np.argsort(_mix(keys[group_roots], seed), kind="stable")
    group_roots, sizes = group_roots[order], sizes[order]
    total = int(sizes.sum())
    want = {}
    for name in ("test", "val"):
        share = getattr(split, name)
        n = int(round(total * share))
        if share > 0 and n == 0 and total >= 3:
            n = 1
        want[name] = n
    if split.train > 0:  # never leave training empty to fill val/test
        while want["test"] + want["val"] >= total and (want["test"] or want["val"]):
            key = "test" if want["test"] >= want["val"] else "val"
            want[key] -= 1
    before = np.cumsum(sizes) - sizes
    is_test = before < want["test"]
    test_total = int(sizes[is_test].sum())
    is_val = ~is_test & (before - test_total < want["val"])
    group_labels = np.zeros(len(group_roots), dtype=np.uint8)
    group_labels[is_val] = 1
    group_labels[is_test] = 2
    by_root = np.zeros(len(roots), dtype=np.uint8)
    by_root[group_roots] = group_labels
    return by_root[roots]


@dataclass(frozen=True)
class _Job:
    """What one `prepare` run works on: its config, its workspace, the input files, and the temp folder inside data/
    where every output is written before all of them are published at once."""

    data: DataConfig
    model: ModelConfig
    workspace: Workspace
    files: list[Path]
    work: Path


class _Phases:
    """Seconds per phase of a `prepare` run, for the report's timings: `with phases("write"): ...`, plus the
    seconds the chunks measured in the workers."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, seconds: Counter[str]) -> None:
        self.seconds.update(seconds)


# Records per chunk handed to a worker, for inputs read as records (CSV, parquet, JSON arrays, documents); JSONL is
# cut into chunks of CHUNK_BYTES, a few thousand typical records. Big enough that pickling and scheduling cost little
# per record, small enough that a few chunks in flight per worker hold a few MB.
CHUNK_RECORDS = 2000
CHUNK_BYTES = 1 << 20
# Below this much input a process pool costs more than it saves.
POOL_MIN_BYTES = 8 << 20


def _workers(data: DataConfig, files: list[Path], counter) -> int:
    if counter is not None:  # a tokenizer stays in this process (fork and tokenizers' own threads do not mix)
        return 1
    if data.workers is not None:
        return data.workers
    if sys.platform != "linux":  # workers are forked: elsewhere start methods re-import everything per worker
        return 1
    jsonl = sum(f.stat().st_size for f in files if sources.kind_of(f) in (".jsonl", ".ndjson") and f.is_file())
    if jsonl < POOL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


class _Chunks:
    """Runs chunks through workers (a forked process pool, or in this process) and gives back results in order.
    JSONL chunks go to the pool; other formats arrive parsed and are cheap to read, so they run here."""

    def __init__(self, settings: chunks.Settings, workers: int, work: Path):
        self.local = chunks.Worker(settings)
        self.pool = None
        self.work = work  # where pool workers write their chunks' spill lines
        self.submitted = 0
        if workers > 1:
            import gc
            import multiprocessing

            # Objects from before the fork stay out of the workers' collections: a collection would write to every
            # one of them and copy every page they sit on into the worker (Python's advice for fork without exec).
            gc.freeze()
            try:
                self.pool = multiprocessing.get_context("fork").Pool(workers, chunks.start, (settings,))
            except BaseException:
                gc.unfreeze()
                raise
        self.in_flight = 2 * workers + 1
        self.pending: deque = deque()

    def submit(self, chunk, dataset_kind: str | None) -> None:
        if self.pool is not None and isinstance(chunk, sources.Lines):
            self.submitted += 1
            spill_to = str(self.work / f"spill-{self.submitted}.part")
            self.pending.append(self.pool.apply_async(chunks.run, (chunk.at(), dataset_kind, spill_to)))
        else:
            self.pending.append(self.local.run(chunk, dataset_kind))

    def ready(self, drain: bool = False) -> Iterator[chunks.Result]:
        """Results in submission order: while more than `in_flight` are pending, or all of them with `drain`."""
        while self.pending and (drain or len(self.pending) > self.in_flight):
            head = self.pending.popleft()
            yield head if isinstance(head, chunks.Result) else head.get()

    def close(self, ok: bool) -> None:
        if self.pool is not None:
            if ok:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            import gc

            gc.unfreeze()


class _Collected:
    """What this process keeps of the chunks' results, in input order: counts and problems (a _Tally), then for each
    record that passed validation and the filters its origin, content key, size and where its line ends in the spill
    file (compact arrays: exact duplicates are found once everything is read), its serialized line (the spill file)
    and MinHash signature (the signatures file); rejected.jsonl as it comes."""

    def __init__(self, job: _Job, skip: bool, near: bool):
        self.scan = _Tally()
        self.skip = skip
        self.file_index = {str(f): i for i, f in enumerate(job.files)}
        self.origin_file, self.origin_line = array("I"), array("I")
        self.keys, self.sizes, self.ends = array("Q"), array("I"), array("Q")
        self.filtered: Counter[str] = Counter()
        self.filtered_examples: list[str] = []
        self.languages: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()
        self.transformed_out = 0
        self.spill = open(job.work / "records.jsonl", "wb")
        self.rejected = open(job.work / "rejected.jsonl", "wb")
        self.signatures = open(job.work / "signatures.bin", "wb") if near else None
        self.spilled = 0  # bytes written to the spill file

    def take(self, result: chunks.Result) -> None:
        if result.failure is not None:
            raise UsageError(*result.failure)
        scan, name = self.scan, result.file
        self.transformed_out += result.transformed_out
        scan.records += result.items
        scan.per_file[name] += result.items
        for line, field_, reason in result.problems:
            scan.add_problem(name, line, field_, reason)
            if field_ == "file" and line == 0:
                scan.unreadable[name] = reason
                scan.per_file[name] -= 1  # the file's own problem is no record of it
        self.rejected.writelines(result.rejected)
        scan.kinds.update(result.kinds)
        scan.formats.update(result.formats)
        if scan.dataset_kind is None:
            scan.dataset_kind = result.dataset_kind
        self.pii.update(result.pii)
        if scan.problem_count and not self.skip:
            return  # failing anyway: only collect the remaining problems
        self.languages.update(result.languages)
        for line, reason in result.filtered:
            self.filtered[reason.split(":")[0].split(" (")[0]] += 1
            if len(self.filtered_examples) < 20:
                self.filtered_examples.append(f"{name}:{line}: {reason}")
        self.origin_file.extend(array("I", [self.file_index[name]]) * len(result.lines))
        self.origin_line.extend(result.lines)
        self.keys.extend(result.keys)
        self.sizes.extend(result.sizes)
        self.ends.frombytes((np.frombuffer(result.ends, dtype=np.uint64) + np.uint64(self.spilled)).tobytes())
        if result.spilled_to is not None:
            self._append(result.spilled_to, result.ends[-1])
        else:
            self.spill.write(result.spill)
            self.spilled += len(result.spill)
            if self.signatures is not None:
                self.signatures.write(result.signatures)

    def _append(self, piece: str, lines: int) -> None:
        """A chunk's spill lines and signatures a worker wrote to `piece` (the lines its first `lines` bytes), onto
        the ends of the spill and signatures files (copied by the kernel); the piece then removed."""
        with open(piece, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            self._copy(src.fileno(), 0, lines, self.spill)
            if self.signatures is not None:
                self._copy(src.fileno(), lines, size - lines, self.signatures)
        os.unlink(piece)
        self.spilled += lines

    @staticmethod
    def _copy(src: int, offset: int, size: int, dst) -> None:
        dst.flush()
        end = offset + size
        while offset < end:
            sent = os.sendfile(dst.fileno(), src, offset, end - offset)
            if not sent:
                raise OSError("a spill file piece ended early")
            offset += sent

    def close(self) -> None:
        for fh in (self.spill, self.rejected, self.signatures):
            if fh is not None:
                fh.close()


def _first_of(keys: np.ndarray) -> np.ndarray:
    """first[i] = the index of the first record whose key equals keys[i] (i itself for a first occurrence)."""
    order = np.argsort(keys, kind="stable")  # equal keys stay in record order: the first of a run is the first seen
    ordered = keys[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]][: len(keys)]
    first = np.empty(len(keys), dtype=np.int64)
    first[order] = order[starts][np.cumsum(starts) - 1]
    return first


def _prepare(job: _Job, settings: chunks.Settings, timer: manifest.Timer, progress: Progress | None) -> dict[str, Any]:
    data, files = job.data, job.files
    phases = _Phases()
    near = None
    if data.dedupe.near:
        from llmforge.data.dedupe import NearDuplicates

        near = NearDuplicates(job.work / "signatures.bin", data.dedupe.threshold, data.dedupe.num_perm,
                              data.dedupe.shingle, spilled=True)  # fmt: skip
    workers = _workers(data, files, settings.counter)
    log.info("preparing with %d worker process(es)", workers if workers > 1 else 0)
    got = _Collected(job, settings.skip, near is not None)
    scan = got.scan

    reported = [0]  # the multiples of 10,000 records read that progress has been told of

    def take(result: chunks.Result) -> None:
        phases.add(result.seconds)
        with phases("collect"):
            got.take(result)
        # a chunk holds any number of records: report each 10,000 it took the count past, as a log expects
        while progress and scan.records >= reported[0] + 10_000:
            reported[0] += 10_000
            progress("read", reported[0])

    pool = _Chunks(settings, workers, job.work)
    # The manifest's sha256 of the inputs, computed in a thread (hashlib lets go of the GIL) where a core is idle:
    # beside the work when it runs in this process, after it when worker processes keep every core busy (then it
    # runs beside the serial end: dedupe, split, writing).
    hashing = ThreadPoolExecutor(1, thread_name_prefix="llmforge-hash")

    def hash_inputs() -> dict[str, str | None]:
        return {str(f): manifest.sha256_path(f) for f in files if f.exists()}

    input_sha256 = hashing.submit(hash_inputs) if pool.pool is None else None
    ok = False
    try:
        for path in files:
            for chunk in sources.read_batches(path, data.max_record_chars, scan.warnings, _chunk_size(path)):
                if scan.dataset_kind is None:  # the chunk needs to know: wait for the ones before it
                    for result in pool.ready(drain=True):
                        take(result)
                pool.submit(chunk, scan.dataset_kind)
                for result in pool.ready():
                    take(result)
            scan.per_file[str(path)] += 0  # listed even when empty
        for result in pool.ready(drain=True):
            take(result)
        ok = True
    finally:
        if input_sha256 is None and ok:
            input_sha256 = hashing.submit(hash_inputs)
        hashing.shutdown(wait=False)
        pool.close(ok)
        got.close()

    if scan.problem_count and not settings.skip:
        raise problems_error(scan.problems, scan.problem_count, len(scan.unreadable))

    with phases("exact_dedupe"):
        keys = np.frombuffer(got.keys, dtype=np.uint64)
        first = _first_of(keys) if data.dedupe.exact else np.arange(len(keys))
        is_copy = first != np.arange(len(keys))
        kept = np.flatnonzero(~is_copy)  # the records left after exact dedupe, in order; below, i means kept[i]
        exact_dupes = len(keys) - len(kept)
    n = len(kept)
    if n == 0:
        raise InputError(
            f"no records left to write: {scan.records} read, {scan.problem_count} invalid, "
            + (f"{got.transformed_out} dropped by data.transforms, " if got.transformed_out else "")
            + f"{sum(got.filtered.values())} filtered out, {exact_dupes} duplicates",
            hint="check data.filter settings and the inputs; `llmforge data validate` lists invalid records",
        )
    with phases("near_cluster"):
        if near is not None:
            if progress:
                progress("near-dedupe", n)
            roots = near.clusters(rows=kept if exact_dupes else None)
        else:
            roots = np.arange(n, dtype=np.int64)
    is_root = roots == np.arange(n)
    drop_near = data.dedupe.near_action == "drop"
    keep = is_root if drop_near else np.ones(n, dtype=bool)
    with phases("split"):
        labels = assign_splits(keys[kept], roots, keep, data.split, data.split.seed)

    origin_file, origin_line = np.frombuffer(got.origin_file, np.uint32), np.frombuffer(got.origin_line, np.uint32)
    names = [str(f) for f in files]
    with phases("write"), open(job.work / "duplicates.jsonl", "wb") as duplicates:
        dumps = orjson.dumps

        def where(p: int) -> dict[str, Any]:
            return {"file": names[origin_file[p]], "line": int(origin_line[p])}

        for p in np.flatnonzero(is_copy).tolist():
            duplicates.write(dumps({**where(p), "kind": "exact", "duplicate_of": where(int(first[p]))}) + b"\n")
        near_dupes = 0
        if drop_near:
            for i in np.flatnonzero(~is_root).tolist():
                near_dupes += 1
                duplicates.write(dumps({**where(int(kept[i])), "kind": "near",
                                        "duplicate_of": where(int(kept[roots[i]]))}) + b"\n")  # fmt: skip
        # where each spilled line goes: 0-2 a split, 3 nowhere (an exact or, when dropped, a near duplicate)
        target = np.full(len(keys), 3, dtype=np.uint8)
        target[kept] = np.where(keep, labels, 3)
        counts = {name: int(np.count_nonzero(target == k)) for k, name in enumerate(SPLITS)}
        _write_splits(job.work, target, np.frombuffer(got.ends, np.uint64), progress)

    with phases("report"):
        scrub_examples = PiiScrubber(**data.pii.model_dump())
        # exact-duplicate clusters by size, ties in the order their first duplicate came (as Counter.most_common)
        targets = first[is_copy]
        firsts, seen_at, sizes = np.unique(targets, return_index=True, return_counts=True)
        largest = [(int(np.searchsorted(kept, firsts[k])), int(sizes[k])) for k in np.lexsort((seen_at, -sizes))[:10]]
        clusters = _clusters(names, origin_file[kept], origin_line[kept], roots, len(firsts), largest)
        lengths = np.frombuffer(got.sizes, np.uint32)[kept]
        report = {
            "dataset_kind": scan.dataset_kind,
            "inputs": [_input_entry(f, scan) for f in files],
            "counts": {
                "read": scan.records,
                "valid": scan.records - scan.problem_count,
                "rejected": scan.problem_count,
                "filtered": sum(got.filtered.values()),
                "transformed_out": got.transformed_out,
                "exact_duplicates": exact_dupes,
                "near_duplicates": near_dupes,
                "near_duplicate_clusters": clusters["near"]["count"],
                "written": sum(counts.values()),
                **counts,
            },
            "formats": dict(scan.formats),
            "kinds": dict(scan.kinds),
            "pii": {kind: got.pii.get(kind, 0) for kind in ("email", "url", "phone", "ip", "card")},
            "filtered": dict(got.filtered),
            "filtered_examples": got.filtered_examples,
            **(
                {"languages": dict(sorted(got.languages.items(), key=lambda kv: (-kv[1], kv[0])))}
                if data.languages
                else {}
            ),  # fmt: skip
            # they quote the inputs: scrubbed like the records, counted apart from them
            "rejected_examples": [_scrubbed(str(p), scrub_examples) for p in scan.problems[:20]],
            "warnings": scan.warnings[:100],
            "length": {"unit": settings.unit, **_percentiles(lengths)},
            "clusters": clusters,
            "split": {**data.split.model_dump(), "near_action": data.dedupe.near_action, "groups": int(keep.sum())},
        }
    report["timings"] = {k: round(v, 3) for k, v in sorted(phases.seconds.items())}
    report["records_per_second"] = round(scan.records / max(timer.seconds, 1e-9))
    return _publish(job, report, lengths, timer, input_sha256.result())


def _chunk_size(path: Path) -> int:
    return CHUNK_BYTES if sources.kind_of(path) in (".jsonl", ".ndjson") else CHUNK_RECORDS


# Bytes of the spill file read at a time in the second pass.
WRITE_BLOCK = 4 << 20


def _write_splits(work: Path, target: np.ndarray, ends: np.ndarray, progress: Progress | None) -> None:
    """The spill file's lines into train/val/test.jsonl by `target` (0-2; 3: nowhere), a run of lines bound for the
    same place at a time."""
    if not len(target):
        for name in SPLITS:
            (work / f"{name}.jsonl").write_bytes(b"")
        return
    change = np.flatnonzero(target[1:] != target[:-1]) + 1  # first line of each run but the first
    run_target = target[np.r_[0, change]].tolist()
    run_end = ends[np.r_[change - 1, len(target) - 1]].tolist()  # byte offset where each run ends
    run_last = np.r_[change, len(target)].tolist()
    # 1 MB buffers: the runs are short (a few lines between two val/test lines), and with the default 8 KB one a
    # write call reached the file system every few runs (0.72 s -> 0.30 s for a million lines)
    outs = [open(work / f"{name}.jsonl", "wb", buffering=1 << 20) for name in SPLITS]
    reported = 0
    try:
        with open(work / "records.jsonl", "rb", buffering=0) as spill:
            block, start, at = memoryview(spill.read(WRITE_BLOCK)), 0, 0  # start: the block's offset in the file
            for where, end, last in zip(run_target, run_end, run_last):
                while end > start + len(block):  # the run goes on past this block
                    if where < 3:
                        outs[where].write(block[at - start :])
                    start += len(block)
                    at = start
                    block = memoryview(spill.read(WRITE_BLOCK))
                if where < 3:
                    outs[where].write(block[at - start : end - start])
                at = end
                if progress and last - reported >= 50_000:
                    reported = last
                    progress("write", last)
    finally:
        for fh in outs:
            fh.close()


def _scrubbed(text: str, scrub: PiiScrubber) -> str:
    return scrub(text) if scrub.active else text


def _input_entry(path: Path, scan: _Tally) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": str(path), "records": scan.per_file.get(str(path), 0)}
    if str(path) in scan.unreadable:
        entry["error"] = scan.unreadable[str(path)]
    return entry


def _clusters(names, origin_file, origin_line, roots, exact_count, exact_largest) -> dict[str, Any]:
    """The report's clusters: exact (`exact_count` of them; `exact_largest`: (record, duplicates) of the largest) and
    near (from `roots`). Records are indexes into origin_file/origin_line."""

    def where(i: int) -> str:
        return f"{names[origin_file[i]]}:{origin_line[i]}"

    out: dict[str, Any] = {"exact": {"count": exact_count, "largest": []}, "near": {"count": 0, "largest": []}}
    for first, dupes in exact_largest:
        out["exact"]["largest"].append({"first": where(first), "duplicates": dupes})
    members = roots[roots != np.arange(len(roots))]
    if len(members):
        ids, sizes = np.unique(members, return_counts=True)
        out["near"]["count"] = int(len(ids))
        for idx in np.argsort(-sizes, kind="stable")[:10]:
            root = int(ids[idx])
            others = np.flatnonzero(roots == root)
            out["near"]["largest"].append(
                {"first": where(root), "size": int(sizes[idx]) + 1, "members": [where(int(i)) for i in others[:10]]}
            )
    return out


def _publish(job: _Job, report: dict[str, Any], lengths: np.ndarray, timer: manifest.Timer,
             input_sha256: dict[str, str | None]) -> dict[str, Any]:
    """Report, plot, manifest and config in the work folder, then everything renamed into data/ at once.
    Empty splits are not written (train reads an existing val.jsonl as a validation set; an empty one is an error)."""
    from llmforge.data.report import histogram, markdown

    data, model, workspace, files, work = job.data, job.model, job.workspace, job.files, job.work
    counts, rejected_count = report["counts"], report["counts"]["rejected"]
    out_dir = workspace.data_dir
    written = [name for name in SPLITS if counts[name]]
    with ThreadPoolExecutor(max(1, len(written)), thread_name_prefix="llmforge-hash") as hashing:
        # the splits hashed while the plot is drawn: hashlib lets go of the GIL
        hashed = {name: hashing.submit(manifest.sha256_file, work / f"{name}.jsonl") for name in written}
        plot = histogram(lengths, work / "lengths.png", f"record length ({report['length']['unit']})")
        shas = {name: future.result() for name, future in hashed.items()}
    # The same id `llmforge train` records for the run's parent: the train split's sha256.
    report["dataset_id"] = "data-" + shas[written[0]][:12]
    report["plots"] = [str(out_dir / "lengths.png")] if plot else []
    report["outputs"] = {name: str(workspace.split_file(name)) for name in written}
    report["outputs"]["duplicates"] = str(workspace.duplicates_file)
    if rejected_count:
        report["outputs"]["rejected"] = str(workspace.rejected_file)
    report["finished_at"] = manifest.now()
    atomic.write_json(work / "report.json", report)
    atomic.write_text(work / "report.md", markdown(report))
    import yaml

    resolved = {"model": model.model_dump(mode="json"), "data": data.model_dump(mode="json")}
    atomic.write_text(work / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    info = manifest.build(
        "data",
        inputs={str(f): f for f in files},
        timer=timer,
        input_sha256=input_sha256,
        outputs={
            name: {"path": str(workspace.split_file(name)), "records": counts[name], "sha256": shas[name]}
            for name in written
        },
        counts=report["counts"],
        dataset_id=report["dataset_id"],
    )
    atomic.write_json(work / "manifest.json", info)
    moves = [f"{name}.jsonl" for name in written] + ["duplicates.jsonl", "report.json", "report.md", "config.yaml"]
    moves += ["lengths.png"] if plot else []
    stale = [workspace.split_file(name) for name in SPLITS if name not in written]
    if rejected_count:
        moves.append("rejected.jsonl")
    else:
        stale.append(workspace.rejected_file)  # a stale one from an earlier run would mislead
    for name in moves + ["manifest.json"]:  # the manifest last: its presence marks a finished dataset
        atomic.publish(work / name, out_dir / name)
    for path in stale:
        path.unlink(missing_ok=True)
    registry.record(
        workspace.registry_file, "dataset", report["dataset_id"], path=str(out_dir), status="complete",
        counts=counts, metrics={split: counts[split] for split in ("train", "val", "test")},
    )  # fmt: skip
    log.info("prepared %s records into %s", report["counts"]["written"], out_dir)
    return report
