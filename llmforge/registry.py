"""The workspace registry: every dataset, run, export and deployment with its parent, for `llmforge runs`.

A JSON file rewritten atomically under a lock, so two stages finishing at once never lose an entry.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from llmforge import atomic
from llmforge.errors import UsageError
from llmforge.manifest import now

Kind = Literal["dataset", "run", "export", "deployment", "eval"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: atomic rename still prevents torn files
            pass
        yield


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(
            f"{path}: the workspace registry is corrupt ({exc})", hint="move it aside; stages rebuild it"
        ) from None
    return list(data.get("entries", []))


def record(registry_file: Path, kind: Kind, id: str, parent: str | None = None, **info: Any) -> dict[str, Any]:
    """Add or replace the entry (kind, id). `parent` is the id of what it was made from.

    Conventional info keys, shown by `llmforge runs`: path (the artifact on disk), status, metrics (a flat dict).
    """
    entry = {"kind": kind, "id": id, "parent": parent, "recorded_at": now(), **info}
    with _locked(registry_file):
        entries = [e for e in read(registry_file) if not (e["kind"] == kind and e["id"] == id)]
        entries.append(entry)
        atomic.write_json(registry_file, {"version": 1, "entries": entries})
    return entry


def find(path: Path, id: str) -> dict[str, Any] | None:
    matches = [e for e in read(path) if e["id"] == id]
    return matches[-1] if matches else None


def lineage(path: Path, id: str) -> list[dict[str, Any]]:
    """The chain from the oldest ancestor down to `id` (dataset -> run -> export -> deployment)."""
    entries = read(path)
    by_key = {e["id"]: e for e in entries}
    chain = []
    seen = set()
    current = by_key.get(id)
    while current is not None and current["id"] not in seen:
        chain.append(current)
        seen.add(current["id"])
        current = by_key.get(current.get("parent")) if current.get("parent") else None
    return list(reversed(chain))


def children(path: Path, id: str) -> list[dict[str, Any]]:
    return [e for e in read(path) if e.get("parent") == id]


def descendants(path: Path, id: str) -> list[dict[str, Any]]:
    """Everything made from `id`, depth first (runs -> exports -> deployments)."""
    entries = read(path)
    out: list[dict[str, Any]] = []

    def walk(parent: str) -> None:
        for entry in entries:
            if entry.get("parent") == parent and entry not in out:
                out.append(entry)
                walk(entry["id"])

    walk(id)
    return out


def size_of(target: Path) -> int | None:
    """Bytes on disk of a file or folder (None when it is gone)."""
    if target.is_file():
        return target.stat().st_size
    if target.is_dir():
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return None


def forget(path: Path, kind: Kind, id: str) -> bool:
    """Remove the entry (kind, id), e.g. a deployment that was removed; True if there was one."""
    with _locked(path):
        entries = read(path)
        kept = [e for e in entries if not (e["kind"] == kind and e["id"] == id)]
        if len(kept) != len(entries):
            atomic.write_json(path, {"version": 1, "entries": kept})
    return len(kept) != len(entries)
