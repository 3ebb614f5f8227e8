"""Atomic outputs: everything a stage writes appears whole or not at all (temp name in the same folder, then rename).

Temporaries are named `.<final name>.<pid>.<random>.tmp`: the pid lets a later run tell what a killed process left
behind (`remove_stale`) from what a live one is still writing. What is published gets the permissions the umask
gives a new file (0644 / 0755 under umask 022), so a service running as another user (Ollama, a llama.cpp server)
can read it: a rename keeps the mode, and mkstemp, mkdtemp and safetensors' own writer all make theirs private.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmforge.errors import UsageError

TEMP_SUFFIX = ".tmp"


def refuse_overwrite(path: Path, force: bool, what: str = "output") -> None:
    """Nothing a user made is overwritten without --force."""
    if path.exists() and not force:
        raise UsageError(f"{what} already exists: {path}", hint="pass --force to replace it")


def _umask() -> int:
    """The process umask. Linux shows it in /proc; elsewhere reading it means setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_new(path: Path) -> None:
    """Give `path` (and, for a folder, all it holds) the mode a file or folder created now would get."""
    mask = _umask()
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            paths += [Path(root, name) for name in dirs + files]
    for p in paths:
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        full = 0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666
        os.chmod(p, full & ~mask)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def reserve(path: Path | str, *, folder: bool = False) -> Path:
    """Create (and return) an empty temporary file, or folder, beside `path`, with the permissions the umask gives
    a new file (0644 / 0755 under umask 022). The caller publishes it with os.replace, or removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            if folder:
                tmp.mkdir(0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary (from `reserve`) onto its final name, with a new file's permissions."""
    _as_if_new(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    tmp_path = reserve(path)
    try:
        yield tmp_path
        publish(tmp_path, path)  # whatever the writer did (some write their own temp file and rename it here)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an existing one only with force)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_overwrite(path, force)
    tmp = reserve(path, folder=True)
    try:
        yield tmp
        _as_if_new(tmp)
        if path.exists():
            old = _temp_name(path)  # a crash between the two renames leaves it for remove_stale
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _writer_alive(name: str) -> bool:
    """Whether the process whose pid is in a temporary's name still runs (a name without a pid: no)."""
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        return False  # written before temporaries carried a pid: nothing alive can own it
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: Path | str, extra: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporaries in `folder` that a killed process left (their writer is gone), and the names in
    `extra` (globs for leftovers of older versions). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for child in sorted(folder.iterdir()):
        name = child.name
        temporary = name.startswith(".") and name.endswith(TEMP_SUFFIX) and not _writer_alive(name)
        if temporary or any(child.match(pattern) for pattern in extra):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
