"""Views of the config for people: resolved rows with sources, YAML, and the commented starter file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from llmforge import atomic
from llmforge.config.loader import LoadedConfig, _model_class, dump_config, leaf_paths
from llmforge.config.root import LlmforgeConfig


def _get(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def resolved_rows(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every leaf of the resolved tree."""
    data = dump_config(loaded.config)
    rows = []
    for dotted in leaf_paths():
        source = loaded.sources.get(dotted)
        if source is None:  # set as part of a whole mapping (e.g. a section given in one --set)
            parents = [p for p in loaded.sources if dotted.startswith(p + ".")]
            source = loaded.sources[max(parents, key=len)] if parents else "default"
        rows.append((dotted, _get(data, dotted), source))
    return rows


def to_yaml(config: LlmforgeConfig) -> str:
    return yaml.safe_dump(dump_config(config), sort_keys=False, allow_unicode=True)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


def starter_text(model: str | None = None, name: str | None = None) -> str:
    """A commented YAML file with every field, its description and its default."""
    overrides: dict[str, Any] = {}
    if model:
        overrides["model.name"] = model
    if name:
        overrides["project.name"] = name
    defaults = LlmforgeConfig().model_dump(mode="json")
    lines = [
        "# llmforge config. Every key is optional; unknown keys are errors.",
        "# Precedence: defaults < this file < LLMFORGE_* env (LLMFORGE_TRAIN__LORA__RANK=8) < --set key=value < flags.",
        "",
    ]

    def walk(model_cls: type[BaseModel], data: dict, prefix: str, indent: int) -> None:
        pad = "  " * indent
        for field_name, info in model_cls.model_fields.items():
            dotted = f"{prefix}{field_name}"
            sub = _model_class(info.annotation)
            if info.description:
                lines.append(f"{pad}# {info.description}")
            if sub is not None:
                lines.append(f"{pad}{field_name}:")
                walk(sub, data[field_name], dotted + ".", indent + 1)
                if indent == 0:
                    lines.append("")
            else:
                value = overrides.get(dotted, data[field_name])
                lines.append(f"{pad}{field_name}: {_scalar(value)}")

    walk(LlmforgeConfig, defaults, "", 0)
    return "\n".join(lines).rstrip() + "\n"


def write_starter(path: Path, model: str | None = None, name: str | None = None, force: bool = False) -> Path:
    atomic.refuse_overwrite(path, force, "config file")
    return atomic.write_text(path, starter_text(model=model, name=name))
