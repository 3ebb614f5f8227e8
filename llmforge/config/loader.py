"""Load the config: defaults < YAML < LLMFORGE_* env < --set < typed flags, written once, here.

Every layer is checked against the schema before merging, so a typo anywhere names its dotted path, where it came
from (file and line, env variable, --set) and the closest valid key. Values given as strings (env, --set) are
converted to the field's type by pydantic; lists and mappings are parsed as YAML.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmforge import secrets
from llmforge.config.root import LlmforgeConfig
from llmforge.errors import ConfigError

ENV_PREFIX = "LLMFORGE_"
CONFIG_ENV = "LLMFORGE_CONFIG"
DEFAULT_FILE = "llmforge.yaml"


@dataclass
class LoadedConfig:
    """The validated tree, where each leaf value came from, and the YAML file used (if any)."""

    config: LlmforgeConfig
    sources: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # problems worth a word that are not errors (the CLI prints)

    def source_of(self, dotted: str) -> str:
        return self.sources.get(dotted, "default")


# ---------------------------------------------------------------- schema walking


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, looking through Optional/Union (a list of models is one leaf value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, tuple, dict):
        return None
    for arg in typing.get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def _is_free_mapping(annotation: Any) -> bool:
    """A dict-typed field (e.g. deploy.parameters): its keys are the user's, not ours."""
    origin = typing.get_origin(annotation)
    if origin is dict or annotation is dict:
        return True
    return any(_is_free_mapping(arg) for arg in typing.get_args(annotation))


def _wants_structure(annotation: Any) -> bool:
    """Whether a string for this field should be parsed as YAML (lists and mappings)."""
    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple, set) or annotation in (list, dict):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_wants_structure(arg) for arg in typing.get_args(annotation))
    return False


def _admits_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def leaf_paths(model: type[BaseModel] = LlmforgeConfig, prefix: str = "") -> list[str]:
    """Every dotted path to a leaf field of the tree (used for suggestions, docs and `config show`)."""
    paths = []
    for name, info in model.model_fields.items():
        sub = _model_class(info.annotation)
        dotted = f"{prefix}{name}"
        if sub is not None:
            paths.extend(leaf_paths(sub, dotted + "."))
        else:
            paths.append(dotted)
    return paths


def field_info(dotted: str):
    """The pydantic FieldInfo at a dotted path (raises ConfigError for an unknown path)."""
    model: type[BaseModel] = LlmforgeConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            raise ConfigError(_unknown_key_message(model, parts[:i], part, "this key"))
        if i == len(parts) - 1:
            return info
        sub = _model_class(info.annotation)
        if sub is None:
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section: cannot set {dotted}")
        model = sub
    raise ConfigError(f"empty config key {dotted!r}")


# Names users bring from Hugging Face TrainingArguments, TRL, PEFT and axolotl configs, and what llmforge calls them.
# Checked before spelling distance: `eval_steps` is not a typo of `max_steps`, it is `train.eval_every`.
KNOWN_NAMES = {
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "micro_batch_size": "train.batch_size",
    "train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "lr": "train.learning_rate",
    "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "max_seq_length": "train.max_length",
    "sequence_len": "train.max_length",
    "model_max_length": "train.max_length",
    "lora_r": "train.lora.rank",
    "r": "train.lora.rank",
    "lora_alpha": "train.lora.alpha",
    "lora_dropout": "train.lora.dropout",
    "lora_target_modules": "train.lora.target_modules",
    "use_dora": "train.lora.dora",
    "bnb_4bit_quant_type": "train.qlora.quant_type",
    "bnb_4bit_use_double_quant": "train.qlora.double_quant",
    "bnb_4bit_compute_dtype": "train.qlora.compute_dtype",
    "output_dir": "train.run_name",
    "base_model": "model.name",
    "model_name_or_path": "model.name",
    "dataset_name": "train.data",
    "datasets": "data.inputs",
    "resume_from_checkpoint": "--resume",
    "bf16": "train.precision",
    "fp16": "train.precision",
}


def _known_name(key: str) -> str | None:
    """llmforge's key for a name from another tool's config, if it has one in this tree (or is a flag)."""
    target = KNOWN_NAMES.get(key.lower())
    if target is None or target.startswith("--"):
        return target
    return target if target in leaf_paths() or any(p.startswith(target + ".") for p in leaf_paths()) else None


def _unknown_key_message(model: type[BaseModel], parents: list[str], key: str, where: str) -> str:
    dotted = ".".join([*parents, key])
    valid = list(model.model_fields)
    known = _known_name(key)
    if known is not None:
        if known.startswith("--"):
            return f"{dotted}: unknown config key ({where}); llmforge spells it as the flag {known}"
        return f"{dotted}: unknown config key ({where}); llmforge calls it '{known}'"
    guess = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if guess:
        suggestion = ".".join([*parents, guess[0]])
    else:
        # A key put in the wrong section (train.rank): look for a leaf of that name elsewhere in the tree.
        same_name = [p for p in leaf_paths() if p.split(".")[-1] == key]
        suggestion = same_name[0] if same_name else None
    message = f"{dotted}: unknown config key ({where})"
    if suggestion:
        message += f"; did you mean '{suggestion}'?"
    else:
        section = ".".join(parents) or "the top level"
        message += f"; valid keys in {section}: {', '.join(valid)}"
    return message


def _check_keys(data: Any, model: type[BaseModel], parents: list[str], where: typing.Callable[[str], str]) -> None:
    """Every key in a layer must exist in the schema; nested sections are checked recursively."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        key_text = str(key)
        info = model.model_fields.get(key_text)
        dotted = ".".join([*parents, key_text])
        if info is None:
            raise ConfigError(_unknown_key_message(model, parents, key_text, where(dotted)))
        if _is_free_mapping(info.annotation):
            continue
        sub = _model_class(info.annotation)
        if sub is not None:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(
                    f"{dotted}: expected a mapping of settings, got {type(value).__name__} ({where(dotted)})"
                )
            _check_keys(value, sub, [*parents, key_text], where)


# ---------------------------------------------------------------- layers


def _set_path(tree: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = tree.get(part)
        if not isinstance(nxt, dict):
            nxt = tree[part] = {}
        tree = nxt
    tree[parts[-1]] = value


def _leaves(tree: dict, prefix: str = "", free: bool = False) -> typing.Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_free_path(dotted):
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _is_free_path(dotted: str) -> bool:
    try:
        return _is_free_mapping(field_info(dotted).annotation)
    except ConfigError:
        return False


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_free_path(key):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def coerce_string(dotted: str, raw: str) -> Any:
    """Turn a string from env or --set into what the field accepts; pydantic does scalars itself."""
    info = field_info(dotted)
    annotation = info.annotation
    text = raw.strip()
    if _admits_none(annotation) and text.lower() in ("null", "none", "~", ""):
        return None
    if _wants_structure(annotation):
        if text.startswith(("[", "{")):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{dotted}: cannot parse {raw!r} as YAML: {exc}") from None
        if typing.get_origin(annotation) is list or list in map(typing.get_origin, typing.get_args(annotation)):
            if "," in text or str not in typing.get_args(annotation):
                return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def parse_set(item: str) -> tuple[str, str]:
    """'train.lora.rank=8' -> ('train.lora.rank', '8')."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lora.rank=8")
    return key, value


def _yaml_lines(text: str) -> dict[str, int]:
    """Dotted path -> 1-based line number of its key in the YAML text."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="create one with `llmforge config init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (project:, model:, train: ...)")
    _refuse_duplicate_keys(path, text)
    return data, _yaml_lines(text)


def _refuse_duplicate_keys(path: Path, text: str) -> None:
    """YAML keeps the last of two equal keys without a word; a config that says a thing twice is an error."""

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen and key != "<<":
                    raise ConfigError(
                        f"{path}:{line}: duplicate key {prefix}{key} (first set on line {seen[key]})",
                        hint="keep one of them; YAML would silently use the last",
                    )
                seen[key] = line
                walk(value_node, f"{prefix}{key}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix.rstrip('.')}[{i}].")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")


def find_config_file(explicit: Path | None, env: typing.Mapping[str, str], cwd: Path) -> Path | None:
    """--config, else $LLMFORGE_CONFIG, else ./llmforge.yaml when it exists."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = cwd / DEFAULT_FILE
    return default if default.exists() else None


def load_config(
    path: Path | str | None = None,
    sets: typing.Sequence[str] = (),
    flags: typing.Mapping[str, Any] | None = None,
    env: typing.Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LoadedConfig:
    """Resolve the config from every layer and validate it once. `flags` maps dotted paths to typed flag values."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    merged: dict = {}
    sources: dict[str, str] = {}

    def apply(layer: dict, label: typing.Callable[[str], str]) -> None:
        nonlocal merged
        _check_keys(layer, LlmforgeConfig, [], lambda dotted: f"from {label(dotted)}")
        merged = _merge(merged, layer)
        for dotted, _ in _leaves(layer):
            sources[dotted] = label(dotted)
            # A leaf set again replaces whatever was recorded for the leaves below it.
            for known in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[known]

    warnings: list[str] = []
    config_path = find_config_file(Path(path) if path is not None else None, env, cwd)
    if config_path is not None:
        data, lines = _read_yaml(config_path)
        if not data:
            warnings.append(f"{config_path} sets nothing (it is empty or only comments): every value is a default")
        apply(data, lambda dotted: f"{config_path}:{_line_of(lines, dotted)}")

    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # LLMFORGE_CONFIG, LLMFORGE_DEBUG ... are not config values
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        _check_keys(_nested(dotted, None), LlmforgeConfig, [], lambda d, n=name: f"from env {n}")
        layer = _nested(dotted, coerce_string(dotted, env[name]))
        apply(layer, lambda d, n=name: f"env {n}")

    for item in sets:
        dotted, raw = parse_set(item)
        _check_keys(_nested(dotted, None), LlmforgeConfig, [], lambda d: "from --set")
        apply(_nested(dotted, coerce_string(dotted, raw)), lambda d: "--set")

    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        apply(_nested(dotted, value), lambda d, f=dotted: f"flag ({f})")

    try:
        config = LlmforgeConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, sources)) from None
    return LoadedConfig(config=config, sources=sources, path=config_path, warnings=warnings)


def _line_of(lines: dict[str, int], dotted: str) -> int:
    """The line of a key, or of its nearest parent present in the file."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in lines:
            return lines[".".join(parts[:i])]
    return 1


def _nested(dotted: str, value: Any) -> dict:
    tree: dict = {}
    _set_path(tree, dotted.split("."), value)
    return tree


def _validation_message(exc: ValidationError, sources: dict[str, str]) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc) or "config"
        source = None
        for i in range(len(loc), 0, -1):
            source = sources.get(".".join(loc[:i]))
            if source:
                break
        got = error.get("input")
        detail = error["msg"]
        if secrets.is_secret_path(".".join(p for p in loc if not p.isdigit())):
            got = secrets.MASK
        if error["type"] not in ("missing",) and not isinstance(got, dict):
            detail += f" (got {got!r})"
        problems.append(f"{dotted}: {detail}" + (f" [{source}]" if source else ""))
    head = "invalid config value" if len(problems) == 1 else f"{len(problems)} invalid config values"
    return head + ":\n  " + "\n  ".join(problems)


def dump_config(config: LlmforgeConfig) -> dict:
    """The resolved tree as plain data; secrets come out masked by their type (llmforge.secrets.Secret)."""
    return config.model_dump(mode="json")
