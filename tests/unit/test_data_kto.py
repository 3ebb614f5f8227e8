"""KTO data, {prompt, completion, label: true|false}: detected, checked line by line, written canonical."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmforge.cli.app import app
from llmforge.data import records

runner = CliRunner()


def kto(i: int, label=True, **extra) -> dict:
    return {"prompt": f"Question number {i}?", "completion": f"Answer number {i}.", "label": label, **extra}


def write(path: str, rows: list) -> str:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_names_the_line_of_a_missing_or_non_bool_label(tmp_path):
    no_label = kto(2)
    del no_label["label"]
    write("kto.jsonl", [kto(0), kto(1, False), no_label, kto(3, 1), kto(4, "true"), kto(5, None)])
    result = runner.invoke(app, ["data", "validate", "kto.jsonl", "--json"])
    assert result.exit_code == 2, result.output
    data = json.loads(result.output)
    assert data["problems"] == [
        "kto.jsonl:3: label: missing (expected true or false: was the completion good?)",
        "kto.jsonl:4: label: expected true or false, got int 1",
        "kto.jsonl:5: label: expected true or false, got string 'true'",
        "kto.jsonl:6: label: expected true or false, got null None",
    ]
    assert data["kinds"] == {"kto": 2}


def test_kto_records_validate_and_prepare_to_the_canonical_form(tmp_path):
    write("kto.jsonl", [kto(i, i % 3 != 0, system="Be brief.") for i in range(30)])
    checked = runner.invoke(app, ["data", "validate", "kto.jsonl", "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["kinds"] == {"kto": 30}
    prepared = runner.invoke(app, ["data", "prepare", "kto.jsonl", "--json"])
    assert prepared.exit_code == 0, prepared.output
    rows = [json.loads(line) for line in Path("llmforge-work").rglob("train.jsonl").__next__().read_text().splitlines()]
    assert rows and all(set(r) == {"prompt", "completion", "label"} for r in rows)
    first = rows[0]
    assert first["prompt"][0] == {"role": "system", "content": "Be brief."} and first["prompt"][-1]["role"] == "user"
    assert first["completion"] == [{"role": "assistant", "content": first["completion"][0]["content"]}]
    assert {r["label"] for r in rows} == {True, False}


def test_detection_keeps_prompt_completion_chats_and_names_kto_fields():
    assert records.detect({"prompt": "a", "completion": "b"}) == "prompt_response"  # no label: a chat, as before
    assert records.detect({"prompt": "a", "completion": "b", "label": False}) == "kto"
    kind, record = records.canonical({"prompt": "a", "completion": "b", "label": False})
    assert kind == "kto" and record["label"] is False
    assert records.plain(record) == "user: a\n\nbad: b"
    assert records.map_texts(record, str.upper)["label"] is False  # cleaning passes never touch the label
