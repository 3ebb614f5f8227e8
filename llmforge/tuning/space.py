"""The search space: tune.space keys checked against the train section, trial values applied to it, and the best
values written back into the user's YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmforge.config.loader import field_info, leaf_paths
from llmforge.config.train import TrainConfig
from llmforge.errors import ConfigError

# Keys a trial sets itself, or that would make trials incomparable.
NOT_SEARCHABLE = {"train.run_name", "train.data", "train.method"}
RANGE_KEYS = {"low", "high", "log", "step"}


def check(space: dict[str, Any], train: TrainConfig) -> None:
    if not space:
        raise ConfigError("tune.space is empty: nothing to search",
                          hint="e.g. -s 'tune.space={train.learning_rate: {low: 1e-5, high: 1e-3, log: true}}'")
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if not str(key).startswith("train."):
            raise ConfigError(f"{where}: only train.* keys can be searched", hint="e.g. train.learning_rate")
        try:
            field_info(str(key))
        except ConfigError as exc:
            # the loader's own did-you-mean message, less its leading "<path>: " (the key is named in full here)
            raise ConfigError(f"{where}: {exc.message.split(': ', 1)[-1].replace(' (this key)', '')}") from None
        if key not in leaf_paths():
            raise ConfigError(f"{where}: {key} is a section, not a value", hint="name one of its keys")
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"{where}: {key} cannot be searched (each trial sets or shares it)")
        for value in _probe_values(where, spec):
            apply(train, {key: value}, where)


def _probe_values(where: str, spec: Any) -> list[Any]:
    """The values a spec can produce at its edges: every choice, or low and high."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: an empty list of choices")
        for choice in spec:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(f"{where}: choices must be numbers, strings or booleans, not {choice!r}")
        return list(spec)
    if isinstance(spec, dict):
        unknown = set(spec) - RANGE_KEYS
        if unknown or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: a range is {{low, high}} with optional log and step"
                              + (f" (unknown: {', '.join(sorted(map(str, unknown)))})" if unknown else ""))
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: low and high must be numbers with low < high (got {low!r}, {high!r})")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0")
        return [low, high]
    raise ConfigError(f"{where}: expected a list of choices or {{low, high, log}}, got {spec!r}")


def is_int_range(spec: dict[str, Any]) -> bool:
    return all(isinstance(spec[k], int) for k in ("low", "high")) and isinstance(spec.get("step", 1), int)


def apply(train: TrainConfig, params: dict[str, Any], where: str = "tune.space") -> TrainConfig:
    """A copy of `train` with the dotted train.* `params` set, validated like the config file's values."""
    tree = train.model_dump()
    for key, value in params.items():
        _set(tree, key.split(".")[1:], value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{where}: {params} is not a valid train setting: {first['msg']}") from None


def _set(tree: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[parts[-1]] = value


def apply_to_yaml(config_file: Path, params: dict[str, Any]) -> Path:
    from llmforge import atomic

    config_file = Path(config_file)
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: the top level is not a mapping")
    for key, value in params.items():
        _set(data, key.split("."), value)
    # yaml.safe_dump drops comments: the file's keys and values survive, its comments do not (the report says so)
    atomic.write_text(config_file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return config_file
