"""Broken config files: a key given twice is an error, an empty file is a warning, absurd integers fail validation."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from llmforge.cli.app import app
from llmforge.config import LlmforgeConfig, load_config
from llmforge.config.loader import _model_class
from llmforge.errors import ConfigError

runner = CliRunner()


def test_duplicate_key_names_file_dotted_key_and_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  lora:\n    rank: 8\n    alpha: 16\n    rank: 64\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, env={})
    message = str(caught.value)
    assert str(cfg) in message and "train.lora.rank" in message
    assert ":5:" in message and "line 3" in message


def test_duplicate_section_is_an_error_too(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  epochs: 1\nmodel:\n  name: x\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:5: duplicate key train \(first set on line 1\)"):
        load_config(cfg, env={})


def test_duplicate_key_in_a_free_mapping_and_in_a_list_item(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("deploy:\n  parameters:\n    top_k: 1\n    top_k: 2\n")
    with pytest.raises(ConfigError, match=r"deploy\.parameters\.top_k.*line 3"):
        load_config(cfg, env={})
    cfg.write_text("deploy:\n  messages:\n    - role: user\n      role: assistant\n      content: hi\n")
    with pytest.raises(ConfigError, match=r"duplicate key deploy\.messages\[0\]\.role"):
        load_config(cfg, env={})


def test_duplicate_key_exits_2_through_the_cli(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("project:\n  name: a\n  name: b\n")
    out = runner.invoke(app, ["config", "validate", str(cfg)])
    assert out.exit_code == 2 and "duplicate key project.name" in out.output


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_config_file_warns_that_it_sets_nothing(tmp_path, text):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    assert load_config(cfg, env={}).warnings and "sets nothing" in load_config(cfg, env={}).warnings[0]
    out = runner.invoke(app, ["config", "validate", str(cfg)])
    assert out.exit_code == 0
    assert "warning" in out.output and "sets nothing" in out.output and str(cfg.name) in out.output


def test_a_file_with_settings_gives_no_warning(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    assert load_config(cfg, env={}).warnings == []
    assert "warning" not in runner.invoke(app, ["config", "validate", str(cfg)]).output


def test_absurd_integer_names_its_path(tmp_path):
    cfg = tmp_path / "huge.yaml"
    cfg.write_text("train:\n  lora:\n    rank: 99999999999999999999\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg, env={})
    assert "train.lora.rank" in str(caught.value) and "less than or equal" in str(caught.value)
    out = runner.invoke(app, ["config", "validate", str(cfg)])
    assert out.exit_code == 2 and "train.lora.rank" in out.output


def _int_fields(model: type[BaseModel] = LlmforgeConfig, prefix: str = ""):
    for name, info in model.model_fields.items():
        sub = _model_class(info.annotation)
        if sub is not None:
            yield from _int_fields(sub, f"{prefix}{name}.")
        elif info.annotation is int or int in typing.get_args(info.annotation):
            yield f"{prefix}{name}", info


def test_every_int_field_has_lower_and_upper_bounds():
    fields = list(_int_fields())
    assert len(fields) > 30
    unbounded = []
    for dotted, info in fields:
        kinds = {type(m).__name__ for m in info.metadata}
        if not ({"Ge", "Gt"} & kinds and {"Le", "Lt"} & kinds):
            unbounded.append(dotted)
    assert unbounded == []


@pytest.mark.parametrize("dotted", [d for d, _ in _int_fields()])
def test_every_int_field_refuses_a_twenty_digit_value(dotted):
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        load_config(sets=[f"{dotted}=99999999999999999999"], env={})
