"""Config precedence, typos, type conversion, env nesting, --set parsing, and the starter file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.config import leaf_paths, load_config
from llmforge.config.loader import parse_set
from llmforge.config.settings_view import resolved_rows, starter_text
from llmforge.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_default_yaml_env_set_flag(tmp_path):
    cfg = write(tmp_path / "c.yaml", "train:\n  epochs: 2\n  batch_size: 8\n  seed: 1\n  max_length: 64\n")
    env = {"LLMFORGE_TRAIN__BATCH_SIZE": "16", "LLMFORGE_TRAIN__SEED": "2", "LLMFORGE_TRAIN__MAX_LENGTH": "128"}
    loaded = load_config(cfg, sets=["train.seed=3", "train.max_length=256"], flags={"train.max_length": 512}, env=env)
    t = loaded.config.train
    assert (t.learning_rate, t.epochs, t.batch_size, t.seed, t.max_length) == (None, 2.0, 16, 3, 512)
    assert loaded.source_of("train.learning_rate") == "default"
    assert loaded.source_of("train.epochs") == f"{cfg}:2"
    assert loaded.source_of("train.batch_size") == "env LLMFORGE_TRAIN__BATCH_SIZE"
    assert loaded.source_of("train.seed") == "--set"
    assert loaded.source_of("train.max_length") == "flag (train.max_length)"


def test_config_file_from_env_then_cwd(tmp_path):
    write(tmp_path / "llmforge.yaml", "project:\n  name: from-cwd\n")
    other = write(tmp_path / "other.yaml", "project:\n  name: from-env\n")
    assert load_config(env={}, cwd=tmp_path).config.project.name == "from-cwd"
    assert load_config(env={"LLMFORGE_CONFIG": str(other)}, cwd=tmp_path).config.project.name == "from-env"
    assert load_config(env={}, cwd=tmp_path / "nowhere").path is None


def test_set_typo_names_path_and_closest_key():
    with pytest.raises(ConfigError) as err:
        load_config(sets=["train.lora.rnak=8"], env={})
    assert "train.lora.rnak" in err.value.message
    assert "did you mean 'train.lora.rank'" in err.value.message
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("given", "ours"),
    [
        ("train.eval_steps", "train.eval_every"),  # spelling distance alone suggested train.max_steps
        ("train.num_train_epochs", "train.epochs"),
        ("train.per_device_train_batch_size", "train.batch_size"),
        ("train.gradient_accumulation_steps", "train.grad_accum"),
        ("train.save_steps", "train.save_every"),
        ("train.lora_r", "train.lora.rank"),
        ("train.lora.lora_alpha", "train.lora.alpha"),
        ("learning_rate", "train.learning_rate"),
        ("train.max_seq_length", "train.max_length"),
    ],
)
def test_hugging_face_and_trl_names_map_to_llmforge_keys(given, ours):
    with pytest.raises(ConfigError) as err:
        load_config(sets=[f"{given}=2"], env={})
    assert f"{given}: unknown config key" in err.value.message
    assert f"llmforge calls it '{ours}'" in err.value.message


def test_resume_from_checkpoint_points_at_the_resume_flag(tmp_path):
    cfg = write(tmp_path / "c.yaml", "train:\n  resume_from_checkpoint: true\n")
    with pytest.raises(ConfigError, match="the flag --resume"):
        load_config(cfg, env={})


def test_key_in_wrong_section_suggests_where_it_lives():
    with pytest.raises(ConfigError, match="did you mean 'train.lora.rank'"):
        load_config(sets=["train.rank=8"], env={})


def test_yaml_typo_names_file_line_and_suggestion(tmp_path):
    cfg = write(tmp_path / "c.yaml", "project:\n  name: x\ntrain:\n  lora:\n    rank: 4\n    alpah: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={})
    assert "train.lora.alpah" in err.value.message
    assert f"{cfg}:6" in err.value.message
    assert "did you mean 'train.lora.alpha'" in err.value.message


def test_unknown_section_in_env_is_an_error():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(env={"LLMFORGE_TRIAN__EPOCHS": "2"})


def test_env_without_double_underscore_is_not_config():
    loaded = load_config(env={"LLMFORGE_DEBUG": "1", "LLMFORGE_CONFIG_UNUSED": "x"})
    assert loaded.sources == {}


def test_env_nesting_three_levels():
    loaded = load_config(env={"LLMFORGE_TRAIN__LORA__RANK": "32", "LLMFORGE_DATA__PII__EMAIL": "false"})
    assert loaded.config.train.lora.rank == 32
    assert loaded.config.data.pii.email is False


def test_strings_convert_to_field_types():
    loaded = load_config(
        sets=[
            "train.learning_rate=3e-4",
            "train.packing=true",
            "export.quant=f16,Q4_K_M",
            "train.lora.target_modules=[q_proj, v_proj]",
            "data.filter.blocklist=[foo, bar]",
            "deploy.parameters={temperature: 0.2, stop: [x]}",
            "train.max_steps=null",
        ],
        env={},
    )
    c = loaded.config
    assert c.train.learning_rate == 3e-4 and c.train.packing is True
    assert c.export.quant == ["f16", "q4_k_m"]
    assert c.train.lora.target_modules == ["q_proj", "v_proj"]
    assert c.data.filter.blocklist == ["foo", "bar"]
    assert c.deploy.parameters == {"temperature": 0.2, "stop": ["x"]}
    assert c.train.max_steps is None


def test_target_modules_string_stays_a_string():
    assert (
        load_config(sets=["train.lora.target_modules=all-linear"], env={}).config.train.lora.target_modules
        == "all-linear"
    )


def test_type_error_names_value_and_source():
    with pytest.raises(ConfigError) as err:
        load_config(sets=["train.lora.rank=abc"], env={})
    msg = err.value.message
    assert "train.lora.rank" in msg and "'abc'" in msg and "--set" in msg


def test_yaml_type_error_names_line(tmp_path):
    cfg = write(tmp_path / "c.yaml", "train:\n  method: lora\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=rf"train.batch_size.*{cfg}:3"):
        load_config(cfg, env={})


def test_literal_choice_error_lists_choices():
    with pytest.raises(ConfigError, match="scratch.*sft.*lora.*qlora.*dpo"):
        load_config(sets=["train.method=qlorra"], env={})


def test_split_must_add_up():
    with pytest.raises(ConfigError, match="add up to 1"):
        load_config(sets=["data.split.train=0.5"], env={})


def test_invalid_yaml_names_line(tmp_path):
    cfg = write(tmp_path / "c.yaml", "train:\n  epochs: [1, 2\n  seed: 3\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:\d+: invalid YAML"):
        load_config(cfg, env={})


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", env={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"), env={})


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match="train.lora: expected a mapping"):
        load_config(sets=["train.lora=3"], env={})


@pytest.mark.parametrize("item", ["train.lora.rank", "=3", ""])
def test_parse_set_rejects_malformed(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(item)


def test_parse_set_keeps_equals_in_value():
    assert parse_set("deploy.system=a=b") == ("deploy.system", "a=b")


def test_api_key_never_shown():
    loaded = load_config(sets=["serve.api_key=sk-secret-123"], env={})
    assert loaded.config.serve.api_key.get_secret_value() == "sk-secret-123"
    rows = {k: v for k, v, _ in resolved_rows(loaded)}
    assert rows["serve.api_key"] == "***"
    assert "sk-secret" not in repr(loaded.config)


def test_starter_file_documents_and_loads_every_field(tmp_path):
    text = starter_text(model="some/model", name="demo")
    path = write(tmp_path / "llmforge.yaml", text)
    loaded = load_config(path, env={})
    assert loaded.config.model.name == "some/model" and loaded.config.project.name == "demo"
    for dotted in leaf_paths():
        assert f"{dotted.split('.')[-1]}:" in text
    assert "# LoRA rank r." in text


def test_every_field_has_a_description():
    from pydantic import BaseModel

    from llmforge.config.loader import _model_class
    from llmforge.config.root import LlmforgeConfig

    def walk(model: type[BaseModel], prefix: str):
        for name, info in model.model_fields.items():
            assert info.description, f"{prefix}{name} has no description"
            sub = _model_class(info.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(LlmforgeConfig, "")


def test_example_configs_load():
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        load_config(path, env={})
