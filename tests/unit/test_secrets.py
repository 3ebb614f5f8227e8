"""Secrets in the config are a secret type, masked in one place (llmforge.secrets) wherever config or argv is shown
or recorded: config show (YAML, --sources, --json), manifests, config.yaml, error messages."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from llmforge import manifest, secrets
from llmforge.cli.app import app
from llmforge.config import dump_config, load_config
from llmforge.config.loader import leaf_paths
from llmforge.errors import ConfigError

runner = CliRunner()
KEY = "sk-planted-4f9c1e77"


def test_every_secret_looking_field_is_a_secret_type():
    words = {"key", "token", "password", "secret", "apikey", "credentials"}
    # api_key_env fields name an environment variable; the key itself never sits in the config
    looks_secret = [p for p in leaf_paths() if words & set(p.split(".")[-1].split("_")) and not p.endswith("_env")]
    assert looks_secret, "the config has API keys; this test must see them"
    assert sorted(looks_secret) == sorted(secrets.secret_paths()) == ["data.generate.api_key", "serve.api_key"]


def test_generate_api_key_from_env_is_masked_in_every_view():
    loaded = load_config(env={"LLMFORGE_DATA__GENERATE__API_KEY": KEY, "LLMFORGE_SERVE__API_KEY": KEY})
    assert loaded.config.data.generate.api_key.get_secret_value() == KEY
    assert KEY not in json.dumps(dump_config(loaded.config))
    assert KEY not in repr(loaded.config) and KEY not in str(loaded.config.model_dump())
    assert dump_config(loaded.config)["data"]["generate"]["api_key"] == secrets.MASK
    assert dump_config(loaded.config)["serve"]["api_key"] == secrets.MASK  # one mask for every secret


@pytest.mark.parametrize("extra", [[], ["--sources"], ["--json"], ["--sources", "--json"]])
def test_config_show_never_prints_a_key(monkeypatch, extra):
    monkeypatch.setenv("LLMFORGE_DATA__GENERATE__API_KEY", KEY)
    out = runner.invoke(app, ["config", "show", "-s", f"serve.api_key={KEY}x", *extra])
    assert out.exit_code == 0, out.output
    assert KEY not in out.output and secrets.MASK in out.output


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["serve", "--api-key", KEY], ["serve", "--api-key", "***"]),
        (["serve", f"--api-key={KEY}"], ["serve", "--api-key=***"]),
        (["train", "-s", f"serve.api_key={KEY}"], ["train", "-s", "serve.api_key=***"]),
        (["train", "--set", f"data.generate.api_key={KEY}"], ["train", "--set", "data.generate.api_key=***"]),
        (["train", f"--set=serve.api_key={KEY}"], ["train", "--set=serve.api_key=***"]),
        (["train", f"-sserve.api_key={KEY}"], ["train", "-sserve.api_key=***"]),
        (["train", "-s", "train.lora.rank=8", "-s", "train.run_name=api_key"],
         ["train", "-s", "train.lora.rank=8", "-s", "train.run_name=api_key"]),
        (["chat", "--api-key", KEY, "--port", "8000"], ["chat", "--api-key", "***", "--port", "8000"]),
    ],
)
def test_argv_is_recorded_with_secret_values_masked(argv, expected):
    assert secrets.mask_argv(argv) == expected


def test_manifest_records_masked_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["llmforge", "serve", "--api-key", KEY, "-s", f"serve.api_key={KEY}"])
    body = manifest.build("serve", {}, manifest.Timer())
    assert KEY not in json.dumps(body)
    assert body["platform"]["argv"] == ["serve", "--api-key", "***", "-s", "serve.api_key=***"]


def test_validation_error_does_not_echo_a_secret(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("serve:\n  api_key: [sk-in-a-list-4f9c]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, env={})
    assert "serve.api_key" in str(caught.value) and "sk-in-a-list-4f9c" not in str(caught.value)


def test_generate_key_is_a_secret_its_value_only_on_request():
    from llmforge.config.data import GenerateConfig

    cfg = GenerateConfig(api_key=KEY)
    assert cfg.api_key.get_secret_value() == KEY and KEY not in json.dumps(cfg.model_dump(mode="json"))


def test_every_secret_looking_flag_is_masked_in_argv():
    import typer.main

    def options(command):  # typer carries its own click: walk by attributes, as cli.app.command_paths does
        yield from (o for p in command.params for o in getattr(p, "opts", ()) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            yield from options(sub)

    words = {"key", "token", "password", "secret", "apikey", "credentials"}
    flags = {o for o in options(typer.main.get_command(app)) if words & set(o[2:].split("-"))}
    assert "--api-key" in flags
    assert flags <= set(secrets.SECRET_FLAGS)


def test_data_prepare_masks_the_key_in_its_config_yaml_like_every_stage(tmp_path):
    # the data stage's config.yaml comes from the same masked dump as every other stage's: MASK, not a blanked field
    import yaml

    from llmforge.config.data import DataConfig
    from llmforge.config.model import ModelConfig
    from llmforge.data import prepare
    from llmforge.workspace import Workspace

    rows = [{"messages": [{"role": "user", "content": f"Question number {i} here?"},
                          {"role": "assistant", "content": f"The answer to question {i} is long enough."}]}
            for i in range(10)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(inputs=[str(tmp_path / "in.jsonl")], generate={"api_key": KEY})
    ws = Workspace(tmp_path / "work")
    prepare(data, ModelConfig(), ws)
    written = (ws.data_dir / "config.yaml").read_text()
    assert KEY not in written
    assert yaml.safe_load(written)["data"]["generate"]["api_key"] == secrets.MASK
