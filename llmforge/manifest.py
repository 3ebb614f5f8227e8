"""Manifests: what a stage read (with sha256), which library versions ran, how long it took."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import llmforge
from llmforge.secrets import mask_argv

# Libraries whose versions decide results; read from metadata, never imported.
TRACKED = [
    "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "safetensors",
    "bitsandbytes", "unsloth", "gguf", "llama-cpp-python", "ollama", "fastapi",
]  # fmt: skip


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path | str) -> str:
    """sha256 of a file, or of a folder (its relative file names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {"llmforge": llmforge.__version__, "python": platform.python_version()}
    for name in TRACKED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Timer:
    """Wall time of a stage, for its manifest."""

    def __init__(self) -> None:
        self.started_at = now()
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self._start, 3)


def build(stage: str, inputs: dict[str, Path | str], timer: Timer, *, input_sha256: dict[str, str | None] | None = None,
          **extra: Any) -> dict[str, Any]:
    """A manifest: stage, inputs with sha256, versions, platform, timings, plus stage-specific fields.
    `input_sha256`: the inputs' hashes where the caller computed them already (by input name)."""
    hashed = {}
    known = input_sha256 or {}
    for name, path in inputs.items():
        p = Path(path)
        sha = known[name] if name in known else sha256_path(p) if p.exists() else None
        hashed[name] = {"path": str(p), "sha256": sha}
    return {
        "stage": stage,
        "inputs": hashed,
        "versions": versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "argv": mask_argv(sys.argv[1:])},
        "started_at": timer.started_at,
        "finished_at": now(),
        "wall_seconds": timer.seconds,
        **extra,
    }
