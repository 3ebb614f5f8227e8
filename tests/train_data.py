"""Small training datasets for the train-stage tests, written as the canonical JSONL that `data prepare` produces."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).parent / "fixtures" / "corpus.txt"

QUESTION = "What is the secret word?"
ANSWER = "The secret word is marmalade."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_rows(n: int = 24) -> list[dict]:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
        for i in range(n)
    ]
    return rows


def memorise_rows(n: int = 8) -> list[dict]:
    return [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}] * n


def preference_rows(n: int = 16) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"Name the number {i}."}],
         "chosen": [{"role": "assistant", "content": f"The number is {i}."}],
         "rejected": [{"role": "assistant", "content": "I will not say."}]}
        for i in range(n)
    ]


def text_rows() -> list[dict]:
    return [{"text": line} for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def workspace_with(root: Path, train: list[dict], val: list[dict] | None = None) -> Path:
    """A workspace folder holding data/train.jsonl (and val.jsonl), as `data prepare` leaves it."""
    write_jsonl(root / "data" / "train.jsonl", train)
    if val is not None:
        write_jsonl(root / "data" / "val.jsonl", val)
    return root


def kto_rows(n: int = 16) -> list[dict]:
    """Unpaired feedback: every number's right answer is good (true), the refusal is bad (false)."""
    return [
        {"prompt": [{"role": "user", "content": f"Name the number {i}."}],
         "completion": [{"role": "assistant", "content": f"The number is {i}." if i % 2 == 0 else "I will not say."}],
         "label": i % 2 == 0}
        for i in range(n)
    ]
