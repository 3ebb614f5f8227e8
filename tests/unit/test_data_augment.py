"""`data augment` against the stand-in OpenAI-compatible server: paraphrases and refusals go to train only,
keep the original answer, are marked, are deduplicated against every split, and a dead endpoint writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmforge.cli.app import app
from llmforge.config.data import DataConfig
from llmforge.data import augment
from llmforge.data.augmentation import parse_strings
from llmforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.openai_server import FakeOpenAI  # noqa: E402

runner = CliRunner()
WORK = Path("llmforge-work/llmforge-project")  # the default workspace, from the tests' working folder
SYSTEM = {"role": "system", "content": "You are the Acme router helpdesk."}
TOPICS = ["reset the router to factory settings", "change the wifi password", "update the firmware safely",
          "find the admin page address", "set up a guest network", "forward a port for a game server"]  # fmt: skip


def chat(i: int) -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": f"How do I {TOPICS[i]} on model {i}?"},
                         {"role": "assistant", "content": f"Answer {i}: open the app and follow step {i}."}]}  # fmt: skip


def prepared() -> Path:
    """A prepared data folder: 4 train, 1 val, 1 test record."""
    data = WORK / "data"
    data.mkdir(parents=True)
    for name, rows in (("train", [0, 1, 2, 3]), ("val", [4]), ("test", [5])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(chat(i)) + "\n" for i in rows))
    return data


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def config(server: FakeOpenAI, **augment_fields) -> DataConfig:
    return DataConfig(
        generate={"endpoint": server.url, "model": "fake-model", "backoff": 0.01, "retries": 1},
        augment=augment_fields,
    )


def test_paraphrases_go_to_train_only_with_the_original_answer(server):
    data = prepared()
    result = augment(config(server, paraphrases=2), Workspace(WORK))
    out = data / "augmented"
    assert (out / "val.jsonl").read_bytes() == (data / "val.jsonl").read_bytes()
    assert (out / "test.jsonl").read_bytes() == (data / "test.jsonl").read_bytes()
    train = read(out / "train.jsonl")
    originals = read(data / "train.jsonl")
    assert train[:4] == originals  # the originals first, unchanged
    generated = train[4:]
    assert len(generated) == 8 == result.kept["paraphrases"] == result.received["paraphrases"]
    assert result.requested == {"paraphrases": 8, "refusals": 0} and result.failed == 0
    for record in generated:
        meta = record["meta"]
        assert meta["generated"] == "paraphrase" and meta["model"] == "fake-model"
        source = originals[meta["source_line"] - 1]
        # the same system prompt and answer, a new question that still contains the original
        assert record["messages"][0] == SYSTEM
        assert record["messages"][2] == source["messages"][2]
        assert record["messages"][1]["content"] != source["messages"][1]["content"]
        assert source["messages"][1]["content"] in record["messages"][1]["content"]
    assert len(server.requests) == 4  # one request per train record, none for val or test
    asked = [r["messages"][-1]["content"] for r in server.requests]
    assert not any(TOPICS[4] in a or TOPICS[5] in a for a in asked)
    written = json.loads((out / "manifest.json").read_text())
    assert written["stage"] == "data augment" and written["summary"]["kept"]["paraphrases"] == 8
    assert written["inputs"]["train.jsonl"]["sha256"]
    # train.data can point at the folder: the loader takes the marked records and the untouched val split
    from llmforge.training.data import chat_rows, load

    loaded = load(str(out), Workspace(WORK), "sft")
    assert len(loaded.train.records) == 12 and len(loaded.val.records) == 1
    assert "meta" not in chat_rows(loaded.train.records)[-1]


def test_paraphrases_that_repeat_an_original_are_dropped(server):
    data = prepared()
    server.mode = "echo"  # the question itself, then a near copy (case and a leading word differ)
    result = augment(config(server, paraphrases=2), Workspace(WORK))
    assert result.received["paraphrases"] == 8
    assert result.duplicates == {"exact": 4, "near": 4} and result.kept["paraphrases"] == 0
    assert read(data / "augmented" / "train.jsonl") == read(data / "train.jsonl")
    dropped = read(data / "augmented" / "duplicates.jsonl")
    assert {d["kind"] for d in dropped} == {"exact", "near"}
    assert all(d["duplicate_of"] == {"file": "train.jsonl", "line": d["source_line"]} for d in dropped)


def test_a_paraphrase_of_a_val_question_is_dropped(server, monkeypatch):
    data = prepared()
    val_question = chat(4)["messages"][1]["content"]
    monkeypatch.setattr(server, "_paraphrases", lambda prompt: json.dumps({"paraphrases": [val_question]}))
    result = augment(config(server, paraphrases=1), Workspace(WORK))
    assert result.duplicates["exact"] == 4 and result.kept["paraphrases"] == 0
    assert read(data / "augmented" / "duplicates.jsonl")[0]["duplicate_of"] == {"file": "val.jsonl", "line": 1}


def test_refusals_are_marked_and_added_to_train(server):
    data = prepared()
    result = augment(config(server, refusals=5, batch=3, scope="questions about the Acme router"), Workspace(WORK))
    assert len(server.requests) == 2  # 3 + 2
    assert "questions about the Acme router" in server.requests[0]["messages"][-1]["content"]
    generated = read(data / "augmented" / "train.jsonl")[4:]
    assert len(generated) == 5 == result.kept["refusals"] and result.requested["refusals"] == 5
    for record in generated:
        assert record["meta"] == {"generated": "refusal", "model": "fake-model"}
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert record["messages"][0] == SYSTEM  # the system prompt all train records share
        assert record["messages"][2]["content"].startswith("Sorry")
    assert read(data / "augmented" / "val.jsonl") == read(data / "val.jsonl")


def test_refusals_need_a_scope(server):
    prepared()
    result = runner.invoke(app, ["data", "augment", "--refusals", "3", "--endpoint", server.url, "--model", "m"])
    assert result.exit_code == 2 and "data.augment.scope" in result.output
    assert server.requests == []


def test_a_dead_endpoint_exits_1_with_a_hint_and_writes_nothing(server):
    data = prepared()
    server.fail_next = 100
    result = runner.invoke(
        app, ["data", "augment", "--paraphrases", "2", "--endpoint", server.url, "--model", "m",
              "-s", "data.generate.retries=0", "-s", "data.generate.backoff=0"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "every request failed" in result.output and "hint: is the endpoint running?" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in data.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_bad_json_from_the_model_exits_1_with_a_hint(server):
    data = prepared()
    server.mode = "garbage"
    result = runner.invoke(app, ["data", "augment", "--paraphrases", "1", "--endpoint", server.url, "--model", "m"])
    assert result.exit_code == 1 and "no usable JSON" in result.output and "hint:" in result.output
    assert not (data / "augmented").exists()


def test_cli_json_summary_progress_and_no_overwrite(server):
    prepared()
    args = ["data", "augment", "--paraphrases", "1", "--endpoint", server.url, "--model", "m"]
    shown = runner.invoke(app, [*args, "-s", "data.augment.progress_every=2"])
    assert shown.exit_code == 0, shown.output
    assert "data augment: 2/4 requests" in shown.output and "data augment: 4/4 requests" in shown.output
    assert "data augment: 1/4" not in shown.output
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, [*args, "--json", "--force"])
    summary = json.loads(forced.output)
    assert summary["requested"]["paraphrases"] == 4 and summary["received"]["paraphrases"] == 4
    assert summary["kept"]["paraphrases"] == 4 and summary["failed"] == 0
    assert summary["duplicates"] == {"exact": 0, "near": 0} and summary["train"] == 8


@pytest.mark.parametrize(
    "reply, found",
    [
        ('{"paraphrases": ["A?", "B?"]}', ["A?", "B?"]),
        ('```json\n["A?",]\n```', ["A?"]),
        ("no JSON here", []),
        ('{"other": ["A?"]}', []),
    ],
)
def test_parse_strings(reply, found):
    assert parse_strings(reply, "paraphrases") == found
