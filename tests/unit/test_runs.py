"""`llmforge runs list|show` over a registry the stages would have written."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmforge import registry
from llmforge.cli.app import app
from llmforge.workspace import Workspace

runner = CliRunner()


def populate(root):
    ws = Workspace(root)
    (ws.run_dir("lora-1") / "adapter").mkdir(parents=True)
    (ws.run_dir("lora-1") / "adapter" / "w.bin").write_bytes(b"x" * 2048)
    path = ws.registry_file
    registry.record(path, "dataset", "data-abc", path=str(ws.data_dir), metrics={"train": 90})
    registry.record(
        path, "run", "lora-1", parent="data-abc", path=str(ws.run_dir("lora-1")), metrics={"eval_loss": 1.25}
    )
    registry.record(path, "export", "lora-1/q8_0", parent="lora-1", path=str(root / "gone.gguf"))
    registry.record(path, "deployment", "bot", parent="lora-1/q8_0")
    return ws


def test_list_json_has_sizes_and_missing_status(tmp_path):
    populate(tmp_path / "llmforge-work" / "p")
    result = runner.invoke(app, ["runs", "list", "--json", "-s", "project.name=p"])
    assert result.exit_code == 0, result.output
    entries = {e["id"]: e for e in json.loads(result.output)["entries"]}
    assert entries["lora-1"]["size_bytes"] == 2048
    assert entries["lora-1/q8_0"]["status"] == "missing"
    assert [e["kind"] for e in json.loads(result.output)["entries"]] == ["dataset", "run", "export", "deployment"]


def test_list_table_and_kind_filter(tmp_path):
    populate(tmp_path / "llmforge-work" / "p")
    result = runner.invoke(app, ["runs", "list", "-s", "project.name=p", "--kind", "run"])
    assert result.exit_code == 0 and "lora-1" in result.output and "data-abc" in result.output
    assert "bot" not in result.output
    assert runner.invoke(app, ["runs", "list", "--kind", "runz"]).exit_code == 2


def test_show_lineage_both_ways(tmp_path):
    populate(tmp_path / "llmforge-work" / "p")
    result = runner.invoke(app, ["runs", "show", "lora-1", "-s", "project.name=p", "--json"])
    data = json.loads(result.output)
    assert [e["id"] for e in data["lineage"]] == ["data-abc", "lora-1"]
    assert [e["id"] for e in data["descendants"]] == ["lora-1/q8_0", "bot"]
    text = runner.invoke(app, ["runs", "show", "bot", "-s", "project.name=p"]).output
    assert "dataset data-abc -> run lora-1 -> export lora-1/q8_0 -> deployment bot" in text


def test_show_unknown_id_exits_2():
    result = runner.invoke(app, ["runs", "show", "nope"])
    assert result.exit_code == 2 and "no run, export or deployment called 'nope'" in result.output


def test_empty_workspace():
    result = runner.invoke(app, ["runs", "list"])
    assert result.exit_code == 0 and "nothing recorded yet" in result.output
