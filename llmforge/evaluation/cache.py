"""Generations cached per (target fingerprint, prompt, decoding) in eval/cache/<fingerprint>.jsonl, so a rerun or
an added target computes only what is new. Append-only JSON lines: a line cut short by a crash is ignored."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def entry_key(prompt: Any, decoding: dict[str, Any]) -> str:
    body = json.dumps({"prompt": prompt, "decoding": decoding}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


class GenerationCache:
    def __init__(self, folder: Path | None, fingerprint: str):
        self.file = None if folder is None else Path(folder) / f"{fingerprint}.jsonl"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.file is not None and self.file.is_file():
            with open(self.file, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                        self.entries[row["key"]] = row["value"]
                    except (ValueError, KeyError, TypeError):
                        log.debug("skipping a damaged cache line in %s", self.file)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = value
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")
