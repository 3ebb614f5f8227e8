"""Opt-in conversation log: one JSONL record per chat exchange, in the canonical `{"messages": [...]}` form that
`llmforge data prepare` reads, plus a `metadata` object (the answer's id, model, time, latency, usage; never a
key). The file rotates to a timestamped name when it passes a size. User feedback on an answer (POST /v1/feedback)
is appended, keyed by the answer's id, to a log of its own beside it (`feedback_dir`)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict, deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CURRENT = "conversations.jsonl"
FEEDBACK = "feedback"
# answers whose id the server remembers for feedback (the newest; about 150 bytes each)
MAX_REMEMBERED = 200_000


def feedback_dir(conversations_dir: Path) -> Path:
    """serve/feedback, beside serve/conversations: not inside it, because `data prepare` reads every .jsonl of a
    folder it is given as training records, and a feedback line is not one."""
    return Path(conversations_dir).parent / FEEDBACK


class ConversationLog:
    """The conversation log of a folder (`stem` "conversations"), or the feedback log (`stem` "feedback"): JSONL
    files appended one whole line at a time, rotated at `max_bytes`."""

    def __init__(self, folder: Path, max_bytes: int, stem: str = "conversations"):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.stem = stem
        self._lock = threading.Lock()
        # answer id -> (variant group, variant, model) of the logged answer, or None outside an A/B test. Read from
        # the files on the first lookup (feedback on an answer logged before a restart is found too), in a thread of
        # its own under its own lock: record() runs on the event loop and must never wait for that read. Answers
        # logged once a lookup has begun queue in `_recent` (deque appends are atomic) until the next lookup.
        self._answers: OrderedDict[str, tuple[str, str, str] | None] = OrderedDict()
        self._index_lock = threading.Lock()
        self._indexing = False
        self._recent: deque[tuple[str, tuple[str, str, str] | None]] = deque(maxlen=MAX_REMEMBERED)

    @property
    def current(self) -> Path:
        return self.folder / f"{self.stem}.jsonl"

    def record(self, messages: list[dict[str, Any]], answer: str, metadata: dict[str, Any]) -> None:
        record = {"messages": [*messages, {"role": "assistant", "content": answer}], "metadata": metadata}
        if self.append(record) and self._indexing and isinstance(metadata.get("id"), str):
            self._recent.append(_answer(metadata))

    def answer(self, ident: str) -> tuple[bool, tuple[str, str, str] | None]:
        """(whether an answer with this id is logged, its (group, variant, model) when it was an A/B variant's).
        The first call reads every log file: call it off the event loop."""
        with self._index_lock:
            if not self._indexing:
                self._indexing = True  # from now on record() queues what it logs; the read below may miss it
                for path in self.files():
                    with path.open(encoding="utf-8", errors="replace") as lines:  # line by line: logs grow large
                        self._read(lines)
            while self._recent:
                self._remember(*self._recent.popleft())
            if ident not in self._answers:
                return False, None
            return True, self._answers[ident]

    def _read(self, lines) -> None:
        for line in lines:
            try:
                meta = json.loads(line).get("metadata")
            except (ValueError, AttributeError):
                continue
            if isinstance(meta, dict) and isinstance(meta.get("id"), str):
                self._remember(*_answer(meta))

    def _remember(self, ident: str, variant: tuple[str, str, str] | None) -> None:
        self._answers[ident] = variant
        if len(self._answers) > MAX_REMEMBERED:  # the oldest goes (a plain dict's first key slows with deletions)
            self._answers.popitem(last=False)

    def append(self, record: dict[str, Any]) -> bool:
        """Append one record as one line; False (and a warning) when the disk refuses it."""
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
                log.warning("%s log %s: %s", self.stem, self.current, exc)
                return False
        return True

    def _rotate(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        self.current.rename(self.folder / f"{self.stem}-{stamp}.jsonl")

    def files(self) -> list[Path]:
        """Oldest first: a rotated file's stamp sorts before the current file ('-' before '.')."""
        return sorted(self.folder.glob(f"{self.stem}*.jsonl"))


def _answer(meta: dict[str, Any]) -> tuple[str, tuple[str, str, str] | None]:
    variant = meta.get("variant")
    return meta["id"], (str(meta.get("variant_group")), str(variant), str(meta.get("model"))) if variant else None


def plain_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages as the template and the log see them: role and text content only."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in (m.content or []))
        out.append({"role": m.role, "content": content})
    return out
