"""Reading inputs: files, folders and globs of .jsonl/.json/.csv/.tsv/.parquet/.txt/.md (each optionally gzipped),
streamed one record at a time as (file, line, object) or (file, line, problem). A file that cannot be read on (corrupt
compression or parquet, a broken disk) ends in one file-level problem: it never stops the other files.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from llmforge.data.hub import is_hub_id as _is_hub_id
from llmforge.errors import UsageError

RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown")
SUFFIXES = RECORD_SUFFIXES + DOCUMENT_SUFFIXES
# Columns that hold nested structure; in CSV/TSV cells they are JSON text.
_NESTED = ("messages", "conversations", "chosen", "rejected", "prompt", "completion", "response")
BOM = b"\xef\xbb\xbf"
# Bytes of a plain-text document read at a time: memory holds about one block plus one record of it.
DOCUMENT_BLOCK = 1 << 20
log = logging.getLogger(__name__)


class _Unreadable(Exception):
    """A reader's word that the rest of its file cannot be read (the library's own error, as a message)."""


@dataclass
class Item:
    """One record read from a file, or the problem that stopped it from being read."""

    file: str
    line: int
    obj: Any = None
    field: str | None = None  # set when the record could not be read
    reason: str | None = None


def kind_of(path: Path) -> str:
    """The inner suffix of a path ('.jsonl' for data.jsonl.gz), lower case."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def resolve_inputs(
    inputs: list[str], suffixes: tuple[str, ...] = SUFFIXES, hub: Callable[[str], Path] | None = None
) -> list[Path]:
    """Files named by `inputs` (files, folders searched recursively, globs), in a stable order, each once.
    With `hub`, an input that is no local path but a Hub dataset id becomes the file `hub(spec)` returns."""
    if not inputs:
        raise UsageError("no input data given", hint="pass files, folders or globs, or set data.inputs in the config")
    found: list[Path] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files = [p for p in matches if p.is_file() and kind_of(p) in suffixes]
            if not files:
                raise UsageError(f"no data files match {spec}", hint=f"supported: {', '.join(suffixes)} (and .gz)")
            found += files
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and kind_of(p) in suffixes
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            records = [p for p in files if kind_of(p) in RECORD_SUFFIXES]
            if records and len(records) < len(files):
                # A folder of record files: its .txt/.md files are READMEs and notes, not training text.
                log.info("%s: ignoring %d document(s) beside record files", spec, len(files) - len(records))
                files = records
            if not files:
                raise UsageError(f"no data files in folder {spec}", hint=f"supported: {', '.join(suffixes)} (and .gz)")
            found += files
        elif path.is_file():
            if kind_of(path) not in suffixes:
                raise UsageError(
                    f"{spec}: unsupported file type", hint=f"supported: {', '.join(suffixes)} (and .gz of any)"
                )
            found.append(path)
        elif hub is not None and _is_hub_id(spec):
            found.append(hub(spec))
        else:
            raise UsageError(f"input not found: {spec}", hint="check the path (relative paths start at this folder)")
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(str(p.resolve()), p)
    return list(unique.values())


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _bad_utf8(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start + 1}"
    return None


def read(path: Path, max_record_chars: int, warnings: list[str]) -> Iterator[Item]:
    """Every record of one file. Problems (bad JSON, bad UTF-8, BOMs, absurd lengths) come back as Items too, and
    so does a file that breaks off (line 0, field "file"): the records before the break still count.
    Plain-text documents longer than `max_record_chars` come back as several records, cut at paragraph breaks."""
    kind = kind_of(path)
    name = str(path)
    if kind in (".jsonl", ".ndjson"):
        stream = _jsonl(path, name, max_record_chars, warnings)
    elif kind == ".json":
        stream = _json(path, name, max_record_chars, warnings)
    elif kind in (".csv", ".tsv"):
        stream = _csv(path, name, "\t" if kind == ".tsv" else ",", warnings)
    elif kind == ".parquet":
        stream = _parquet(path, name)
    else:
        stream = _document(path, name, max_record_chars, warnings)
    last = 0
    try:
        for item in stream:
            last = item.line
            yield item
    except (OSError, EOFError, zlib.error, _Unreadable) as exc:
        # zlib.error: a gzip stream corrupt in the middle (a bad header is an OSError, a cut-off one an EOFError).
        where = f" past the record at line {last}" if last else ""
        yield Item(name, 0, field="file", reason=f"cannot read{where}: {str(exc).strip()}")


def _json_error(raw: bytes) -> str:
    """orjson's message for a line, parsed without its newline so the position reads naturally."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    return "not a JSON value"


def jsonl_item(name: str, number: int, raw: bytes, limit: int) -> Item | None:
    """The record (or problem) on one line of a JSONL file; None for a blank line. A byte-order mark at the start of
    line 1 is the reader's to remove (and warn about) before this sees the line."""
    if number > 1 and raw.startswith(BOM):
        return Item(name, number, field="encoding", reason="byte-order mark inside the file (concatenated files?)")
    if len(raw) > limit:
        return Item(name, number, field="record", reason=f"absurd length: {len(raw)} bytes (limit {limit})")
    try:
        return Item(name, number, orjson.loads(raw))
    except orjson.JSONDecodeError:
        if not raw.strip():
            return None
        bad = _bad_utf8(raw)
        if bad:
            return Item(name, number, field="encoding", reason=bad)
        return Item(name, number, field="json", reason=f"invalid JSON ({_json_error(raw.strip())})")


def _jsonl_lines(path: Path, name: str, warnings: list[str]) -> Iterator[bytes]:
    """The lines of a JSONL file as bytes, a byte-order mark at the very start removed (with a warning)."""
    with _open_binary(path) as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[3:]
                warnings.append(f"{name}:1: encoding: UTF-8 byte-order mark at the start of the file removed")
            yield raw


def _jsonl(path: Path, name: str, limit: int, warnings: list[str]) -> Iterator[Item]:
    for number, raw in enumerate(_jsonl_lines(path, name, warnings), 1):
        item = jsonl_item(name, number, raw, limit)
        if item is not None:
            yield item


@dataclass
class Lines:
    """A run of whole lines of a JSONL file, `first` the number of the first, for `jsonl_items` to turn into records
    elsewhere (in a worker process: parsing is most of the cost of reading)."""

    file: str
    first: int
    data: bytes
    # where `data` starts in the file, for a file read as it is (not gzip): a pool worker is sent the place rather
    # than the bytes (`at`) and reads them itself (`load`), which spares pickling them through a pipe
    offset: int | None = None
    size: int = 0  # the length of the bytes an `at` chunk stands for

    def at(self) -> Lines:
        """This chunk without its bytes, to be `load`ed where it is processed."""
        return Lines(self.file, self.first, b"", self.offset, len(self.data)) if self.offset is not None else self

    def load(self) -> Lines:
        if self.data or self.offset is None:
            return self
        size = self.size
        with open(self.file, "rb", buffering=0) as fh:
            data = os.pread(fh.fileno(), size, self.offset)
        if len(data) != size:
            raise OSError(f"{self.file} changed while it was read")
        return Lines(self.file, self.first, data)


def jsonl_items(chunk: Lines, limit: int) -> list[Item | tuple[int, Any]]:
    """What `jsonl_item` makes of each line of `chunk`, in order, blank lines left out; a parsed record comes as
    (line number, value) rather than an Item (a million records make a million fewer objects)."""
    lines = chunk.data.split(b"\n")
    ended = not lines[-1]  # the chunk's last line has its newline (every line but a file's last one has)
    if ended:
        lines.pop()
    out: list[Item | tuple[int, Any]] = []
    if not lines:
        return out
    name, first, loads = chunk.file, chunk.first, orjson.loads
    # The checks jsonl_item makes before parsing, each skipped when the chunk as a whole passes it.
    # (a BOM starts with \xef, which most text never has: memchr rules it out at once)
    checked = (b"\xef" in chunk.data and BOM in chunk.data) or max(map(len, lines)) >= limit
    if not checked:
        try:  # every line a JSON value (the common case): parsed without a Python step per line
            return list(zip(range(first, first + len(lines)), map(loads, lines)))
        except orjson.JSONDecodeError:
            pass  # a blank or bad line: line by line
    for number, raw in enumerate(lines, first):
        if checked:
            item = jsonl_item(name, number, raw + b"\n" if ended or number < first + len(lines) - 1 else raw, limit)
            if item is not None:
                out.append(item if item.reason is not None else (number, item.obj))
            continue
        try:
            out.append((number, loads(raw)))
        except orjson.JSONDecodeError:
            item = jsonl_item(name, number, raw, limit)
            if item is not None:
                out.append(item)
    return out


def _last_record_line(data: bytes, first: int, limit: int) -> int:
    """The number of the last line of `data` (lines from line `first`) that `jsonl_item` does not skip as blank, or
    0 if there is none."""
    body = data.rstrip()
    if len(data) - len(body) < limit:  # no blank line long enough to count as a record in the trailing blanks
        return first + body.count(b"\n") if body else 0
    last = 0
    for number, raw in enumerate(io.BytesIO(data), first):
        if len(raw) > limit or not raw.isspace():
            last = number
    return last


def read_batches(path: Path, max_record_chars: int, warnings: list[str], size: int) -> Iterator[Lines | list[Item]]:
    """`read` in batches: a JSONL file as Lines of about `size` bytes, other files as lists of `size` Items.
    Problems and a file that breaks off come back exactly as `read` gives them (the break as a last one-Item batch)."""
    if kind_of(path) not in (".jsonl", ".ndjson"):
        batch: list[Item] = []
        for item in read(path, max_record_chars, warnings):
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    name = str(path)
    first = 1
    # the last Lines with a line jsonl_item does not skip as blank: what a break in the file is reported after
    last: Lines | None = None
    pending: list[bytes] = []  # lines of a gzip file not given out yet
    try:
        if path.name.lower().endswith(".gz"):
            # a line at a time, as `read` reads: where the stream breaks off, the same lines came out before it
            held = 0
            for raw in _jsonl_lines(path, name, warnings):
                pending.append(raw)
                held += len(raw)
                if held >= size:
                    data, pending, held = b"".join(pending), [], 0
                    chunk = Lines(name, first, data)
                    last = chunk if _holds_record(data, first, max_record_chars) else last
                    yield chunk
                    first += _newlines(data)
        else:
            for offset, data in _blocks(path, name, warnings, size):
                chunk = Lines(name, first, data, offset)
                last = chunk if _holds_record(data, first, max_record_chars) else last
                yield chunk
                first += _newlines(data)
    except (OSError, EOFError, zlib.error) as exc:
        if pending:
            chunk = Lines(name, first, b"".join(pending))
            last = chunk if _holds_record(chunk.data, first, max_record_chars) else last
            yield chunk
        line = _last_record_line(last.data, last.first, max_record_chars) if last is not None else 0
        where = f" past the record at line {line}" if line else ""
        yield [Item(name, 0, field="file", reason=f"cannot read{where}: {str(exc).strip()}")]
        return
    if pending:
        yield Lines(name, first, b"".join(pending))


def _holds_record(data: bytes, first: int, limit: int) -> bool:
    """Whether a line of `data` is one jsonl_item does not skip as blank."""
    return not data.isspace() or (len(data) > limit and _last_record_line(data, first, limit) > 0)


def _newlines(data: bytes) -> int:
    # numpy counts a byte several times faster than bytes.count, which reads one byte at a time
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))


def _blocks(path: Path, name: str, warnings: list[str], size: int) -> Iterator[tuple[int, bytes]]:
    """An uncompressed JSONL file as runs of whole lines of about `size` bytes (a longer line: one run), a byte-order
    mark at the very start removed, each with its offset in the file."""
    with open(path, "rb") as fh:
        held: list[bytes] = []  # the start of a line that no block read so far has ended
        at = 0  # the file offset of the next run
        block = fh.read(max(size, len(BOM)))
        if block.startswith(BOM):
            block = block[3:] or fh.read(size)
            at = len(BOM)
            warnings.append(f"{name}:1: encoding: UTF-8 byte-order mark at the start of the file removed")
        while block:
            cut = block.rfind(b"\n") + 1
            if not cut:
                held.append(block)
            else:
                run = b"".join([*held, block[:cut]]) if held else block[:cut]
                yield at, run
                at += len(run)
                held = [block[cut:]] if cut < len(block) else []
            block = fh.read(size)
        if held:
            yield at, b"".join(held)


def _decode_document(path: Path, name: str, warnings: list[str]) -> tuple[str | None, Item | None]:
    with _open_binary(path) as fh:
        raw = fh.read()
    if raw.startswith(BOM):
        raw = raw[3:]
        warnings.append(f"{name}:1: encoding: UTF-8 byte-order mark at the start of the file removed")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return None, Item(name, line, field="encoding", reason=f"invalid UTF-8 (byte {exc.start + 1} of the file)")


def _json(path: Path, name: str, limit: int, warnings: list[str]) -> Iterator[Item]:
    text, problem = _decode_document(path, name, warnings)
    if problem:
        yield problem
        return
    try:
        top = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Item(name, exc.lineno, field="json", reason=f"invalid JSON ({exc.msg}, column {exc.colno})")
        return
    except RecursionError:
        yield Item(name, 1, field="json", reason="invalid JSON (nested too deeply)")
        return
    except ValueError as exc:  # an integer of more digits than Python converts (the rest: Python's own advice)
        yield Item(name, 1, field="json", reason=f"invalid JSON ({str(exc).split(';')[0]})")
        return
    if isinstance(top, dict):
        lists = [k for k, v in top.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        record_keys = {"messages", "conversations", "instruction", "text", "prompt", "chosen"}
        if record_keys & set(top) or len(lists) != 1:
            yield Item(name, 1, top)  # one record in a .json file
            return
        key = lists[0]
        items = top[key]
        marker = f"{json.dumps(key)}"
        start = text.find("[", text.find(marker) + len(marker))
    elif isinstance(top, list):
        items = top
        start = text.find("[")
    else:
        yield Item(name, 1, field="json", reason="expected an array of records or an object holding one")
        return
    # Line numbers: walk the array with the decoder to find where each element starts.
    decoder = json.JSONDecoder()
    pos, line, counted = start + 1, 1, 0
    for obj in items:
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        _, end = decoder.raw_decode(text, pos)
        if end - pos > limit:
            yield Item(name, line, field="record", reason=f"absurd length: {end - pos} characters (limit {limit})")
        else:
            yield Item(name, line, obj)
        pos = end


def _csv(path: Path, name: str, delimiter: str, warnings: list[str]) -> Iterator[Item]:
    raw = _open_binary(path)
    with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        first = fh.read(1)
        if first == "\ufeff":
            warnings.append(f"{name}:1: encoding: UTF-8 byte-order mark at the start of the file removed")
        elif first:
            fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Item(name, 1, field="header", reason=str(exc))
            return
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # a cell over the csv module's size limit: this row only, the reader goes on
                line, start = start, reader.line_num + 1
                yield Item(name, line, field="row", reason=str(exc))
                continue
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield Item(name, line, field="row", reason=f"{len(row)} fields, the header has {len(header)}")
                continue
            if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
                yield Item(name, line, field="encoding", reason="invalid UTF-8")
                continue
            obj: dict[str, Any] = {}
            for key, cell in zip(header, row):
                if key in _NESTED and cell[:1] in ("[", "{"):
                    try:
                        cell = json.loads(cell)
                    except json.JSONDecodeError as exc:
                        yield Item(name, line, field=key, reason=f"invalid JSON in cell ({exc.msg})")
                        break
                obj[key] = cell
            else:
                yield Item(name, line, obj)


def _parquet(path: Path, name: str) -> Iterator[Item]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    source = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path
    number = 0
    try:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=4096):
            for obj in batch.to_pylist():
                number += 1
                yield Item(name, number, obj)
    except ArrowException as exc:  # not parquet, truncated, corrupt pages, an unsupported codec
        raise _Unreadable(str(exc)) from exc


def _document(path: Path, name: str, limit: int, warnings: list[str]) -> Iterator[Item]:
    """A plain-text document as one {"text"} record or, when it is longer than `limit` characters, as several,
    each cut at a paragraph break (else a line break, else anywhere) in the second half of its `limit` characters.
    Read a block at a time: memory holds about one block and one record, whatever the size of the file."""
    pending = ""  # decoded text not yet given out; it starts on line `line` of the file
    line, offset, newlines, carry = 1, 0, 0, b""  # offset, newlines: bytes and newlines decoded so far
    given = False
    with _open_binary(path) as fh:
        while True:
            block = fh.read(DOCUMENT_BLOCK)
            raw = carry + block
            if offset == 0 and raw.startswith(BOM):
                raw, offset = raw[3:], 3
                warnings.append(f"{name}:1: encoding: UTF-8 byte-order mark at the start of the file removed")
            try:
                text, carry = raw.decode("utf-8"), b""
            except UnicodeDecodeError as exc:
                if not (block and exc.end == len(raw) and exc.reason == "unexpected end of data"):
                    line_of = newlines + raw.count(b"\n", 0, exc.start) + 1
                    where = f"byte {offset + exc.start + 1} of the file"
                    yield Item(name, line_of, field="encoding", reason=f"invalid UTF-8 ({where})")
                    return
                # a character cut by the end of the block: it completes with the next one
                text, carry = raw[: exc.start].decode("utf-8"), raw[exc.start :]
            offset += len(raw) - len(carry)
            newlines += text.count("\n")
            pending += text
            if not block:
                break
            start = 0
            while len(pending) - start > limit:
                cut = _cut(pending, start, limit)
                piece = pending[start:cut]
                if piece.strip():  # a run of blank space longer than half a record is no record
                    given = True
                    yield Item(name, line, {"text": piece})
                line += piece.count("\n")
                start = cut
            pending = pending[start:]
    if not given or pending.strip():  # an empty document is still reported, as one empty record
        yield Item(name, line, {"text": pending})


def _cut(text: str, start: int, limit: int) -> int:
    """Where the piece of `text` that begins at `start` ends: after the last blank line in the second half of its
    `limit` characters, else after the last newline there, else at `limit`."""
    end, half = start + limit, start + limit // 2
    cut = max(text.rfind("\n\n", half, end) + 2, text.rfind("\n\r\n", half, end) + 3)
    if cut > half:
        return cut
    newline = text.rfind("\n", half, end)
    return newline + 1 if newline >= 0 else end
