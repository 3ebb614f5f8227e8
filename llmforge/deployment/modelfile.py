"""A deployment described once, spelled twice: as Modelfile text and as the /api/create request Ollama gets.

Quoting follows Ollama's Modelfile parser (parser/parser.go): a value ends at the first newline where the text so
far unquotes; triple-quoted values have no escapes, so every quoted value goes through
`chat_templates.modelfile_quote`, which refuses what the parser would change (a `\"\"\"`, dropped characters).
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.chat_templates import modelfile_quote
from llmforge.errors import ConfigError

# Ollama's PARAMETERs (docs/modelfile.md "Valid Parameters and Values", api.Options) and the type each takes.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_predict": int,
    "num_keep": int,
    "repeat_last_n": int,
    "seed": int,
    "top_k": int,
    "temperature": float,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}
ROLES = ("system", "user", "assistant")


@dataclass
class ModelfileSpec:
    """What a Modelfile says. `template` None means no TEMPLATE line (Ollama falls back to the GGUF's own, or keeps
    the base model's). FROM is `base` (a model already in Ollama) when set, else the `gguf` file; `adapter` is a
    GGUF LoRA adapter applied on top (ADAPTER)."""

    gguf: Path | None
    template: str | None = None
    system: str | None = None
    stop: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # everything but stop
    messages: list[dict[str, str]] = field(default_factory=list)
    license: str | None = None
    # Comment lines after the header: the caveats of the template (what Ollama renders differently, by id).
    notes: list[str] = field(default_factory=list)
    base: str | None = None
    adapter: Path | None = None


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """deploy.parameters validated: known names, values of the right type (ConfigError naming the key)."""
    checked: dict[str, Any] = {}
    for key, value in parameters.items():
        kind = PARAMETER_TYPES.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(PARAMETER_TYPES), n=1)
            hint = f"did you mean deploy.parameters.{close[0]}? " if close else ""
            raise ConfigError(
                f"deploy.parameters.{key}: not an Ollama parameter",
                hint=hint + f"known: {', '.join(sorted(PARAMETER_TYPES))}",
            )
        if kind is list:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) and v for v in values):
                raise ConfigError(f"deploy.parameters.{key}: expected a list of non-empty strings, got {value!r}")
            checked[key] = list(values)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ConfigError(f"deploy.parameters.{key}: expected {kind.__name__}, got {value!r}")
        checked[key] = kind(value)
    return checked


def check_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """deploy.messages validated: each {role, content} with a role a Modelfile MESSAGE accepts."""
    checked = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        extra = set(message) - {"role", "content"}
        if role not in ROLES or not isinstance(content, str) or extra:
            raise ConfigError(
                f"deploy.messages[{i}]: expected {{role: system|user|assistant, content: text}}, got {message!r}"
            )
        checked.append({"role": role, "content": content})
    return checked


def _value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render(spec: ModelfileSpec, *, name: str) -> str:
    """The Modelfile text; every quoted value is checked by modelfile_quote (UsageError when unwritable)."""
    lines = [
        f"# Written by `llmforge deploy ollama` for the Ollama model {name!r}.",
        f"# Register it by hand with: {create_command(name, Path('Modelfile'))}",
        *(f"# {' '.join(note.split())}" for note in spec.notes),
        f"FROM {spec.base or spec.gguf}",
    ]
    if spec.adapter is not None:
        lines.append(f"ADAPTER {spec.adapter}")
    if spec.template is not None:
        lines.append("TEMPLATE " + modelfile_quote(spec.template, what="chat template"))
    if spec.system:
        lines.append("SYSTEM " + modelfile_quote(spec.system, what="system prompt"))
    for stop in spec.stop:
        lines.append("PARAMETER stop " + modelfile_quote(stop, what=f"stop token {stop!r}"))
    for key, value in spec.parameters.items():
        lines.append(f"PARAMETER {key} {_value(value)}")
    for i, message in enumerate(spec.messages):
        quoted = modelfile_quote(message["content"], what=f"deploy.messages[{i}] content")
        lines.append(f"MESSAGE {message['role']} {quoted}")
    if spec.license:
        lines.append("LICENSE " + modelfile_quote(spec.license, what="license"))
    return "\n".join(lines) + "\n"


def create_request(spec: ModelfileSpec, digest: str | None, adapter_digest: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ollama.Client.create: the same model the Modelfile describes, from an uploaded blob
    (`digest`) or from the base model in Ollama (`from`), with the uploaded adapter blob when there is one."""
    parameters: dict[str, Any] = {}
    if spec.stop:
        parameters["stop"] = list(spec.stop)
    parameters.update(spec.parameters)
    request: dict[str, Any] = {"from_": spec.base} if spec.base else {"files": {"model.gguf": digest}}
    if spec.adapter is not None:
        request["adapters"] = {spec.adapter.name: adapter_digest}
    if spec.template is not None:
        request["template"] = spec.template
    if spec.system:
        request["system"] = spec.system
    if parameters:
        request["parameters"] = parameters
    if spec.messages:
        request["messages"] = [dict(m) for m in spec.messages]
    if spec.license:
        request["license"] = spec.license
    return request


def create_command(name: str, modelfile: Path) -> str:
    """The `ollama create` command line that registers `modelfile` by hand."""
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile))}"
