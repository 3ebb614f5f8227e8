"""Training data: the workspace's canonical JSONL splits (or `train.data`), read and checked record by record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import InputError, UsageError
from llmforge.manifest import sha256_file
from llmforge.workspace import Workspace

KINDS = ("messages", "text", "preference", "kto")


@dataclass
class Split:
    path: Path
    records: list[dict[str, Any]]
    kind: str
    sha256: str


@dataclass
class TrainingData:
    train: Split
    val: Split | None
    notes: list[str] = field(default_factory=list)
    # Chat records tokenized with their assistant-only loss masks ({"input_ids", "assistant_masks"} per sample),
    # set by the plan when it masks (training.stage): the trainer then trains on exactly these.
    train_rows: list[dict[str, list[int]]] | None = None
    val_rows: list[dict[str, list[int]]] | None = None

    @property
    def sha256(self) -> str:
        return self.train.sha256

    @property
    def dataset_id(self) -> str:
        """The registry id of the dataset the run was made from (data prepare records the same id)."""
        return f"data-{self.train.sha256[:12]}"


def kind_of(record: dict[str, Any]) -> str | None:
    if "chosen" in record and "rejected" in record:
        return "preference"
    if "completion" in record and "label" in record:
        return "kto"
    if "messages" in record:
        return "messages"
    if "text" in record:
        return "text"
    return None


def _check(record: Any, path: Path, line: int) -> str:
    where = f"{path}:{line}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: a record must be a JSON object", hint="run `llmforge data prepare` first")
    kind = kind_of(record)
    if kind is None:
        raise InputError(
            f"{where}: record has none of the fields messages, text, prompt/chosen/rejected or prompt/completion/label",
            hint="canonical records are {\"messages\": [...]}, {\"text\": ...}, "
            "{\"prompt\": [...], \"chosen\": [...], \"rejected\": [...]} or "
            "{\"prompt\": [...], \"completion\": [...], \"label\": true}; `llmforge data prepare` writes them",
        )
    if kind == "messages":
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: messages: must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: messages[{i}]: needs string fields role and content")
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{where}: messages: no assistant turn, so nothing would be trained")
    elif kind == "text":
        if not isinstance(record["text"], str) or not record["text"]:
            raise InputError(f"{where}: text: must be a non-empty string")
    elif kind == "kto":
        if "prompt" not in record:
            raise InputError(f"{where}: prompt: missing from a KTO record")
        if not isinstance(record["label"], bool):
            raise InputError(f"{where}: label: expected true or false, got {record['label']!r}")
    else:
        for key in ("prompt", "chosen", "rejected"):
            if key not in record:
                raise InputError(f"{where}: {key}: missing from a preference record")
    return kind


def read_jsonl(path: Path) -> Split:
    records = []
    kinds = set()
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            kinds.add(_check(record, path, line_no))
            records.append(record)
    if not records:
        raise InputError(f"{path}: no records", hint="run `llmforge data prepare` or point train.data at a dataset")
    if len(kinds) > 1:
        raise InputError(f"{path}: mixes record kinds {sorted(kinds)}; one file holds one kind")
    return Split(path, records, kinds.pop(), sha256_file(path))


def resolve_files(train_data: str | None, workspace: Workspace) -> tuple[Path, Path | None]:
    """The train file and (optional) validation file: `train.data` (file or folder) else the workspace's data/."""
    if train_data:
        given = Path(train_data).expanduser()
        if given.is_dir():
            train_file, val_file = given / "train.jsonl", given / "val.jsonl"
        elif given.is_file():
            return given, None
        else:
            raise InputError(
                f"train.data: {given} does not exist",
                hint="point train.data at a JSONL file or a folder holding train.jsonl (and val.jsonl)",
            )
    else:
        train_file, val_file = workspace.split_file("train"), workspace.split_file("val")
    if not train_file.is_file():
        raise InputError(
            f"no training data: {train_file} does not exist",
            hint="run `llmforge data prepare` first, or set train.data to a JSONL file or folder "
            "(-s train.data=path/to/train.jsonl)",
        )
    return train_file, (val_file if val_file.is_file() else None)


def load(train_data: str | None, workspace: Workspace, method: str) -> TrainingData:
    train_file, val_file = resolve_files(train_data, workspace)
    train = read_jsonl(train_file)
    val = read_jsonl(val_file) if val_file is not None else None
    notes = []
    if val is not None and val.kind != train.kind:
        raise InputError(f"{val_file}: holds {val.kind} records but {train_file} holds {train.kind} records")
    wanted = {
        "dpo": ("preference",), "orpo": ("preference",), "kto": ("kto",), "scratch": ("text", "messages")
    }.get(method, ("messages", "text"))  # fmt: skip
    if train.kind not in wanted:
        if method in ("dpo", "orpo"):
            hint = f"{method} needs preference records {{\"prompt\", \"chosen\", \"rejected\"}}"
        elif method == "kto":
            hint = "kto needs labelled records {\"prompt\", \"completion\", \"label\": true|false}"
        else:
            hint = {"preference": "use --method dpo or orpo for preference data",
                    "kto": "use --method kto for labelled (prompt, completion, label) data"}.get(train.kind)  # fmt: skip
        raise UsageError(f"--method {method} cannot train on {train.kind} records ({train_file})", hint=hint)
    if val is None:
        notes.append("no validation split: eval_every and early stopping are off")
    return TrainingData(train, val, notes)


def texts_of(records: list[dict[str, Any]]) -> list[str]:
    """Plain text for pretraining and tokenizer training: text records as they are, chats as their turns."""
    out = []
    for record in records:
        if "text" in record:
            out.append(record["text"])
        elif "messages" in record:
            out.append("\n".join(m["content"] for m in record["messages"]))
    return out


def chat_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only role and content of each turn: extra fields would confuse the trainers' column handling."""
    return [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in records]


def preference_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def turns(value):
        if isinstance(value, str):
            return value
        return [{"role": m["role"], "content": m["content"]} for m in value]

    return [{"prompt": turns(r["prompt"]), "chosen": turns(r["chosen"]), "rejected": turns(r["rejected"])}
            for r in records]


def kto_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's unpaired preference columns: prompt, completion and the bool label."""
    def turns(value):
        if isinstance(value, str):
            return value
        return [{"role": m["role"], "content": m["content"]} for m in value]

    return [{"prompt": turns(r["prompt"]), "completion": turns(r["completion"]), "label": r["label"]}
            for r in records]
