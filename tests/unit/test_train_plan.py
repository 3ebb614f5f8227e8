"""Train-stage pieces that need no torch: data reading and its errors, the resume fingerprint, the relaunch line."""

from __future__ import annotations

import json
import sys

import pytest

from llmforge.config import load_config
from llmforge.errors import InputError, UsageError
from llmforge.training import data as data_mod
from llmforge.training import launch, stage
from llmforge.workspace import Workspace


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_reads_workspace_splits_and_names_the_dataset(tmp_path):
    ws = Workspace(tmp_path)
    write(ws.split_file("train"), [CHAT, CHAT])
    write(ws.split_file("val"), [CHAT])
    data = data_mod.load(None, ws, "lora")
    assert data.train.kind == "messages" and len(data.train.records) == 2 and len(data.val.records) == 1
    assert data.dataset_id == "data-" + data.train.sha256[:12]


def test_train_data_may_name_a_file_or_a_folder(tmp_path):
    f = write(tmp_path / "mine" / "train.jsonl", [{"text": "abc"}])
    assert data_mod.load(str(f), Workspace(tmp_path / "ws"), "scratch").train.kind == "text"
    assert data_mod.load(str(f.parent), Workspace(tmp_path / "ws"), "sft").val is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "train.jsonl:2: not valid JSON"),
        ({"foo": 1}, "train.jsonl:2: record has none of the fields"),
        ({"messages": []}, "train.jsonl:2: messages: must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "x"}]}, "train.jsonl:2: messages: no assistant turn"),
        ({"text": ""}, "train.jsonl:2: text: must be a non-empty string"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    ws = Workspace(tmp_path)
    write(ws.split_file("train"), [CHAT, line])
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        data_mod.load(None, ws, "lora")


def test_mixed_kinds_and_wrong_kind_for_method(tmp_path):
    ws = Workspace(tmp_path)
    write(ws.split_file("train"), [CHAT, {"text": "x"}])
    with pytest.raises(InputError, match="mixes record kinds"):
        data_mod.load(None, ws, "lora")
    write(ws.split_file("train"), [CHAT])
    with pytest.raises(UsageError, match="--method dpo cannot train on messages records") as info:
        data_mod.load(None, ws, "dpo")
    assert "dpo needs preference records" in info.value.hint


def test_fingerprint_names_what_changed(tmp_path):
    ws = Workspace(tmp_path)
    write(ws.split_file("train"), [CHAT])
    data = data_mod.load(None, ws, "lora")
    a = load_config(None, [], {"model.name": "m", "train.lora.rank": 8}).config
    b = load_config(None, [], {"model.name": "m", "train.lora.rank": 4, "train.run_name": "x",
                               "train.save_every": 3}).config
    fa, fb = stage.fingerprint(a.model, a.train, data), stage.fingerprint(b.model, b.train, data)
    assert stage._changed(fa, fb) == ["config (train.lora)"]
    c = load_config(None, [], {"model.name": "m", "train.lora.rank": 8, "train.save_every": 3}).config
    assert stage._changed(fa, stage.fingerprint(c.model, c.train, data)) == []  # save_every may change
    write(ws.split_file("train"), [CHAT, CHAT])
    changed = stage.fingerprint(a.model, a.train, data_mod.load(None, ws, "lora"))
    assert stage._changed(fa, changed) == ["data"]


def test_relaunch_line_uses_torchrun_and_fixes_the_run_name():
    line = launch.command(["--method", "lora", "-s", "a=b"], 2, "lora-20260101-000000")
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert line[line.index("--nproc_per_node") + 1] == "2"
    assert line[-6:] == ["--method", "lora", "-s", "a=b", "--set", "train.run_name=lora-20260101-000000"]
    assert "-m" in line and line[line.index("llmforge") - 1] == "-m" and line[line.index("llmforge") + 1] == "train"
    acc = launch.command([], 4, None, "fsdp.yaml")
    assert "accelerate.commands.launch" in acc and acc[acc.index("--config_file") + 1] == "fsdp.yaml"


def test_cli_strips_nproc_before_relaunching():
    from llmforge.cli.train import _argv_without_nproc

    assert _argv_without_nproc(["train", "--nproc", "2", "--method", "lora", "--nproc=3"]) == [
        "train", "--method", "lora"]


def test_overlong_policy_truncates_drops_or_fails_and_counts():
    from llmforge.training.template import Encoded, apply_overlong

    def encoded():
        rows = [
            {"input_ids": [1] * 6, "assistant_masks": [0, 0, 0, 1, 1, 1]},  # fits in 8
            {"input_ids": [1] * 12, "assistant_masks": [0] * 6 + [1] * 6},  # over: the answer starts within 8
            {"input_ids": [1] * 12, "assistant_masks": [0] * 9 + [1] * 3},  # over: no answer token within 8
        ]
        return Encoded(rows, [0, 1, 2], [1, 1, 1])

    e = encoded()
    counts = apply_overlong(e, 8, "truncate")
    assert (counts["overlong"], counts["truncated"], counts["dropped"], counts["longest"]) == (2, 1, 1, 12)
    assert [len(r["input_ids"]) for r in e.rows] == [6, 8] and e.rows[1]["assistant_masks"] == [0] * 6 + [1] * 2
    assert e.record_of == [0, 1] and e.turns == [1, 1]
    e = encoded()
    assert apply_overlong(e, 8, "drop")["dropped"] == 2 and e.record_of == [0]
    with pytest.raises(UsageError, match=r"2 of 3 training samples .* record 2 with 12"):
        apply_overlong(encoded(), 8, "fail")
    e = encoded()
    assert apply_overlong(e, 20, "fail")["overlong"] == 0 and len(e.rows) == 3
