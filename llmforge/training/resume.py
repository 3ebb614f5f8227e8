"""Which checkpoint a resume starts from: the newest complete one. A process killed while the Trainer saves leaves a
checkpoint folder with some files missing or cut short (a truncated trainer_state.json); resuming from it would fail
or, worse, load half a state. Light on purpose (json, zipfile): `train --resume` decides before torch loads.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from llmforge import atomic

# Written into checkpoint-<step>/ after the Trainer has saved every file of it (callbacks.MarkComplete), with each
# file's size: a checkpoint without it was cut off mid-save, or was saved before llmforge wrote markers.
COMPLETE_MARKER = "llmforge-complete.json"
WEIGHTS = ("adapter_model.safetensors", "model.safetensors")
SHARD_INDEX = "model.safetensors.index.json"


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Every checkpoint-<step> folder, newest (highest step) first."""
    found = []
    for child in folder.glob("checkpoint-*") if folder.is_dir() else []:
        suffix = child.name.split("-")[-1]
        if suffix.isdigit() and child.is_dir():
            found.append((int(suffix), child))
    return sorted(found, reverse=True)


def write_marker(folder: Path, step: int) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER}
    atomic.write_json(folder / COMPLETE_MARKER, {"step": step, "files": files})


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (short, bad header, tensors past its end), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 0 or 8 + length > size:
                return f"{path.name} is cut short ({size} bytes, shorter than its header)"
            header = json.loads(fh.read(length))
    except (OSError, ValueError) as exc:
        return f"{path.name} has an unreadable header ({type(exc).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    need = 8 + length + max(ends, default=0)
    if size < need:
        return f"{path.name} is cut short ({size} of {need} bytes)"
    return None


def _weights_problem(folder: Path) -> str | None:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return _safetensors_problem(folder / name)
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{SHARD_INDEX} is cut short or corrupt"
        for shard in shards:
            if not (folder / shard).is_file():
                return f"{shard} is missing"
            if problem := _safetensors_problem(folder / shard):
                return problem
        return None
    return f"no weights file ({' or '.join(WEIGHTS)})"


def problem(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be resumed from, or None when it is complete."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (cut off while saving)"
    try:
        body = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        return f"trainer_state.json is cut short or corrupt ({type(exc).__name__}{where})"
    if not isinstance(body, dict):
        return "trainer_state.json is not a Trainer state"
    if weights := _weights_problem(folder):
        return weights
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
            recorded = {str(k): int(v) for k, v in recorded.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{COMPLETE_MARKER} is corrupt"
        for name, size in recorded.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} when it was saved"
        return None
    # No marker: saved before llmforge wrote markers, or killed between trainer_state.json (the Trainer's last file)
    # and the marker. Then every torch.save file (a zip archive, read back from its end) must be whole.
    for path in sorted(folder.iterdir()):
        if path.suffix in (".pt", ".pth", ".bin") and path.is_file() and not zipfile.is_zipfile(path):
            return f"{path.name} is cut short or corrupt"
    return None


def newest_complete(folder: Path) -> tuple[Path | None, list[dict[str, Any]]]:
    """The newest complete checkpoint in `folder` (None if there is none), and each newer one skipped, with why."""
    skipped = []
    for _step, path in checkpoints(folder):
        why = problem(path)
        if why is None:
            return path, skipped
        skipped.append({"checkpoint": path.name, "reason": why})
    return None, skipped
