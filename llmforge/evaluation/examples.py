"""The evaluation set: canonical records read from the test split, each turned into a scored conversation and a
generation prompt (the conversation up to its last assistant turn) with that turn's content as the reference."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import InputError

ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Example:
    index: int
    line: int
    messages: list[dict[str, str]] | None = None  # the whole conversation, scored for loss/perplexity
    text: str | None = None  # plain-text records: scored over every token, no generation
    prompt: list[dict[str, str]] | None = field(default=None)
    reference: str | None = None

    @property
    def key(self) -> str:
        """Stable id of this example's prompt (for caches and per-example tables)."""
        body = json.dumps(self.prompt if self.prompt is not None else self.text, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def generates(self) -> bool:
        return self.prompt is not None and self.reference is not None


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: messages: expected a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: messages[{i}]: expected {{role: system|user|assistant|tool, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse(record: Any, index: int, where: str, line: int) -> Example:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object")
    if "messages" in record:
        messages = _messages(record["messages"], where)
    elif "prompt" in record and "chosen" in record:  # preference data: the chosen answer is the reference
        prompt = record["prompt"]
        chosen = record["chosen"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
        messages = _messages(prompt, where) + _messages(chosen, where)
    elif isinstance(record.get("text"), str):
        return Example(index=index, line=line, text=record["text"])
    else:
        raise InputError(f"{where}: expected a 'messages', 'prompt'/'chosen' or 'text' field")
    example = Example(index=index, line=line, messages=messages)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is not None and last > 0:
        example.prompt = messages[:last]
        example.reference = messages[last]["content"]
    return example


def load(path: Path, limit: int | None = None) -> list[Example]:
    """Read a canonical JSONL file; bad lines are input errors naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"evaluation data not found: {path}",
            hint="prepare data first (llmforge data prepare) or set eval.data to a JSONL file",
        )
    examples: list[Example] = []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise InputError(f"{where}: not valid JSON ({exc})") from None
            examples.append(parse(record, len(examples), where, number))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise InputError(f"{path}: no records to evaluate")
    return examples
