"""Names that become paths (runs, exports, deployments, eval stamps, the project) are checked in one place,
workspace.check_name: a hostile name is exit 2 naming the field and the value, before anything is created or deleted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmforge import workspace
from llmforge.cli.app import app
from llmforge.config import load_config
from llmforge.errors import ConfigError, UsageError
from llmforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
runner = CliRunner()

BAD_NAMES = ["", " ", "..", ".", "../victim", "../../../victim", "a/b", "a\\b", "/tmp/abs", ".hidden", "C:evil",
             "line\nbreak", "tab\there", "nul\x00", "bell\x07", "rtl\u202eoverride", " padded", "x" * 200]  # fmt: skip
GOOD_NAMES = ["lora-20261122-101500", "my_run.v2", "Run 1", "sft", "run:v2", "ü-run"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_naming_field_and_value(name):
    assert workspace.name_problem(name) is not None
    with pytest.raises(UsageError) as caught:
        workspace.check_name(name, "train.run_name")
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith("train.run_name: ") and repr(name) in str(caught.value)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_ordinary_names_pass(name):
    assert workspace.check_name(name, "train.run_name") == name


def test_every_workspace_path_from_a_name_goes_through_the_check(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for make in (ws.run_dir, ws.checkpoints_dir, ws.adapter_dir, ws.model_dir, ws.metrics_file, ws.run_manifest,
                 ws.export_dir, ws.merged_dir, ws.export_manifest, ws.deploy_dir, ws.modelfile, ws.eval_dir):
        with pytest.raises(UsageError):
            make("../escape")
    with pytest.raises(UsageError):
        ws.gguf_file("run", "../../escape", "q8_0")
    assert ws.run_dir("ok") == tmp_path / "ws" / "runs" / "ok"


@pytest.mark.parametrize("key", ["train.run_name", "project.name"])
@pytest.mark.parametrize("value", ["../../../victim", "/tmp/abs", ".x", "a/b"])
def test_config_names_fail_at_load_with_path_and_value(key, value):
    with pytest.raises(ConfigError) as caught:
        load_config(sets=[f"{key}={value}"], env={})
    assert key in str(caught.value) and repr(value) in str(caught.value) and "--set" in str(caught.value)


def test_deploy_name_keeps_ollama_namespace_and_tag_but_not_escapes():
    assert load_config(sets=["deploy.name=team/bot:v1"], env={}).config.deploy.name == "team/bot:v1"
    for value in ("..", "../x", "a\\b", ".x"):
        with pytest.raises(ConfigError, match="deploy.name"):
            load_config(sets=[f"deploy.name={value}"], env={})


def test_run_name_from_yaml_and_env_names_its_source(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  run_name: ../../victim\n")
    with pytest.raises(ConfigError, match=r"train\.run_name.*'\.\./\.\./victim'.*c\.yaml:2"):
        load_config(cfg, env={})
    with pytest.raises(ConfigError, match=r"train\.run_name.*env LLMFORGE_TRAIN__RUN_NAME"):
        load_config(env={"LLMFORGE_TRAIN__RUN_NAME": "/abs/victim"})


def test_train_with_escaping_run_name_and_force_deletes_nothing(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    ws = tmp_path / "a" / "b" / "ws"
    out = runner.invoke(app, ["train", "-s", f"project.workdir={ws}", "-s", "train.run_name=../../../victim",
                              "-s", "model.name=no/such-model", "--force"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "train.run_name" in out.output and "../../../victim" in out.output
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not ws.exists()


def test_export_name_with_separators_is_refused_before_anything_is_written(tmp_path):
    ws = tmp_path / "ws"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = runner.invoke(app, ["export", "gguf", str(model), "--name", "../../../../escape", "--no-verify",
                              "-s", f"project.workdir={ws}"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "--name" in out.output and "../../../../escape" in out.output
    assert not ws.exists() and not list(tmp_path.rglob("*.gguf"))


@pytest.mark.parametrize("command", [["export", "gguf"], ["export", "merge"], ["export", "lora-gguf"]])
def test_export_run_argument_that_is_no_folder_must_be_a_name(tmp_path, command):
    out = runner.invoke(app, [*command, "../outside", "-s", f"project.workdir={tmp_path / 'ws'}"])
    assert out.exit_code == 2, out.output
    assert "run name" in out.output and "'../outside'" in out.output


def test_deploy_remove_of_dotdot_never_reaches_the_workspace_root(tmp_path, monkeypatch):
    pytest.importorskip("ollama")
    from fakes.ollama_server import StandIn

    ws = tmp_path / "ws"
    (ws / "deploy").mkdir(parents=True)
    (ws / "registry.json").write_text(json.dumps({"version": 1, "entries": []}))
    with StandIn() as server:  # answers 404 for a model it does not have: the removal would then go on
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        out = runner.invoke(app, ["deploy", "remove", "..", "-s", f"project.workdir={ws}"])
        assert not [r for r in server.requests if r[0] == "DELETE"]
    assert out.exit_code == 2, out.output
    assert "deploy name" in out.output and "'..'" in out.output
    assert (ws / "registry.json").is_file()


def test_eval_run_target_with_an_escaping_name_is_usage_error(tmp_path):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    out = runner.invoke(app, ["eval", "run:../../x", "-s", f"project.workdir={tmp_path / 'ws'}"])
    assert out.exit_code == 2, out.output
    assert "run:../../x" in out.output and "'../../x'" in out.output
    assert not (tmp_path / "ws" / "eval").exists()


def test_serve_model_that_cannot_be_a_name_is_never_joined_to_the_workspace(tmp_path):
    ws = tmp_path / "a" / "ws"
    outside = tmp_path / "export"  # ws/export/../../export would be this folder
    outside.mkdir()
    (ws / "export").mkdir(parents=True)
    (outside / "manifest.json").write_text("{}")
    (outside / "stolen-q8_0.gguf").write_bytes(b"GGUF")
    out = runner.invoke(app, ["serve", "--dry-run", "--json", "--engine", "llamacpp", "--model", "../../../export",
                              "-s", f"project.workdir={ws}"])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert "serve.model" in out.output and "'../../../export'" in out.output and "stolen" not in out.output


@pytest.mark.parametrize("key", ["data.hub.split", "data.hub.subset"])
def test_hub_split_and_subset_name_cache_files_so_they_are_names(key):
    # they become <datasets cache>/llmforge-jsonl/<owner___name>/<subset>/<split>-<hash>.jsonl
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r".*'\.\./\.\./x'"):
        load_config(sets=[f"{key}=../../x"], env={})
    assert load_config(sets=["data.hub.split=train[:10%]"], env={}).config.data.hub.split == "train[:10%]"


def test_hub_materialize_checks_its_names_before_loading_anything():
    from llmforge.config.data import HubConfig
    from llmforge.data.hub import materialize

    hub = HubConfig.model_construct(split="../../escape", subset=None, revision=None)  # as if built unchecked
    with pytest.raises(UsageError, match=r"data\.hub\.split: '\.\./\.\./escape'"):
        materialize("owner/name", hub)
