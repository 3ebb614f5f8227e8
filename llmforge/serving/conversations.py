"""Opt-in conversation log: one JSONL record per chat exchange, in the canonical `{"messages": [...]}` form that
`llmforge data prepare` reads, plus a `metadata` object (model, time, latency, usage; never a key). The file
rotates to a timestamped name when it passes a size."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CURRENT = "conversations.jsonl"


class ConversationLog:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    @property
    def current(self) -> Path:
        return self.folder / CURRENT

    def record(self, messages: list[dict[str, Any]], answer: str, metadata: dict[str, Any]) -> None:
        record = {"messages": [*messages, {"role": "assistant", "content": answer}], "metadata": metadata}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                if self.current.exists() and self.current.stat().st_size + len(line.encode()) > self.max_bytes:
                    self._rotate()
                # One write of one whole line with O_APPEND: a crash leaves whole records only.
                fd = os.open(self.current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line.encode("utf-8"))
                finally:
                    os.close(fd)
            except OSError as exc:  # logging must never fail a request
                log.warning("conversation log %s: %s", self.current, exc)

    def _rotate(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        self.current.rename(self.folder / f"conversations-{stamp}.jsonl")

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("conversations*.jsonl"))


def plain_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages as the template and the log see them: role and text content only."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in (m.content or []))
        out.append({"role": m.role, "content": content})
    return out
