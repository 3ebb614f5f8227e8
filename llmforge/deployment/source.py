"""What deploy reads: which GGUF to register, and the facts about the model that the Modelfile must match.

The GGUF comes from the export stage (export/<run>/<name>-<quant>.gguf with its manifest.json) or a path; the chat
template and special tokens come from the tokenizer the model was trained with (the export's merged folder) and from
the GGUF's own metadata (what llama.cpp, and so Ollama, will use).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import InputError, UsageError
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)

EXPORT_HINT = "make one first: llmforge export gguf --quant q8_0"
CONTROL_TOKEN_TYPE = 3  # gguf.TokenType.CONTROL


@dataclass(frozen=True)
class ChosenGguf:
    """The GGUF to deploy and where it came from. `export_id` is the registry id of the export (<run>/<quant>)."""

    path: Path
    quant: str
    run: str | None
    export_id: str
    verified: bool | None
    model_dirs: tuple[Path, ...]  # HF folders with the training tokenizer (merged model, export source)


def _quant_of(path: Path) -> str:
    return path.stem.rsplit("-", 1)[-1].lower() if "-" in path.stem else path.stem.lower()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg}", hint="re-run the stage that wrote it") from None
    return data if isinstance(data, dict) else {}


def choose_gguf(workspace: Workspace, export: str | None, quant: str | None) -> ChosenGguf:
    """EXPORT may be None (the newest export), a run name, `<run>/<quant>`, or a path to a .gguf file."""
    if export and export.endswith(".gguf"):
        path = Path(export)
        if not path.is_file():
            raise InputError(f"{path}: no such GGUF file", hint=EXPORT_HINT)
        return ChosenGguf(path.resolve(), _quant_of(path), None, str(path.resolve()), None, ())
    if export and "/" in export:  # an export name never holds a '/' (workspace.name_problem): <run>/<quant>
        export, quant = export.split("/", 1)[0], quant or export.split("/", 1)[1]
    run = export or workspace.latest_export()
    folder = workspace.export_dir(run)
    manifest_path = workspace.export_manifest(run)
    if not manifest_path.is_file():
        known = ", ".join(workspace.exports()) or "none"
        raise UsageError(
            f"no finished export named '{run}' in {workspace.export_root} (exports: {known})", hint=EXPORT_HINT
        )
    manifest = _read_json(manifest_path)
    files: dict[str, tuple[Path, bool | None]] = {}
    for entry in manifest.get("files") or []:
        path = folder / Path(str(entry.get("path", ""))).name
        if path.suffix == ".gguf" and path.is_file():
            files[str(entry.get("quant") or _quant_of(path)).lower()] = (path, entry.get("verified"))
    for path in sorted(folder.glob("*.gguf")):
        if not path.name.startswith("."):
            files.setdefault(_quant_of(path), (path, None))
    if not files:
        raise UsageError(f"the export '{run}' holds no GGUF file ({folder})", hint=EXPORT_HINT)
    if quant:
        wanted = quant.strip().lower().replace("-", "_")
        if wanted not in files:
            raise UsageError(
                f"the export '{run}' has no {wanted} GGUF (it has: {', '.join(sorted(files))})",
                hint=f"pick one with --quant, or make it: llmforge export gguf --quant {wanted}",
            )
    else:
        wanted = min(files, key=lambda q: files[q][0].stat().st_size)  # the smallest: what deploy.quant documents
    path, verified = files[wanted]
    if verified is None and "verified" in manifest:
        verified = manifest.get("verified")
    dirs = [workspace.merged_dir(run)]
    if manifest.get("source"):
        dirs.append(Path(str(manifest["source"])))
    model_dirs = tuple(d for d in dirs if d.is_dir())
    return ChosenGguf(path.resolve(), wanted, run, f"{run}/{wanted}", verified, model_dirs)


@dataclass(frozen=True)
class GgufFacts:
    """The metadata of a GGUF that a Modelfile has to agree with."""

    architecture: str | None
    chat_template: str | None
    tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str | None
    end_of_turn_tokens: tuple[str, ...]  # eot/eom tokens llama.cpp knows as end of generation
    add_bos: bool | None
    context_length: int | None
    control_tokens: tuple[str, ...] = field(default=())


def read_gguf(path: Path) -> GgufFacts:
    """Read the GGUF header with the `gguf` library (no tensors are loaded)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: the library raises plain errors
        raise InputError(f"{path}: not a readable GGUF file ({e})", hint=EXPORT_HINT) from None
    fields = reader.fields

    def value(key: str) -> Any:
        found = fields.get(key)
        return found.contents() if found is not None else None

    arch = value("general.architecture")
    tokens = tuple(value("tokenizer.ggml.tokens") or ())
    types = list(value("tokenizer.ggml.token_type") or ())

    def token(key: str) -> str | None:
        idx = value(key)
        return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else None

    control = tuple(t for t, kind in zip(tokens, types) if kind == CONTROL_TOKEN_TYPE)
    context = value(f"{arch}.context_length") if arch else None
    add_bos = value("tokenizer.ggml.add_bos_token")
    return GgufFacts(
        architecture=arch,
        chat_template=value("tokenizer.chat_template"),
        tokens=tokens,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        end_of_turn_tokens=tuple(
            t for t in (token("tokenizer.ggml.eot_token_id"), token("tokenizer.ggml.eom_token_id")) if t
        ),
        add_bos=bool(add_bos) if add_bos is not None else None,
        context_length=int(context) if isinstance(context, int) else None,
        control_tokens=control,
    )


@dataclass(frozen=True)
class TrainingTokenizer:
    """The chat template and end-of-text tokens of the tokenizer the model was trained with (HF folder)."""

    folder: Path | None = None
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    generation_eos_ids: tuple[int, ...] = ()


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def read_training_tokenizer(model_dirs: tuple[Path, ...]) -> TrainingTokenizer:
    """The first folder with a tokenizer config: its chat template (chat_template.jinja, tokenizer_config.json or
    chat_template.json, as transformers reads them), BOS/EOS, and generation_config.json's eos_token_id(s)."""
    for folder in model_dirs:
        config_path = folder / "tokenizer_config.json"
        if not config_path.is_file():
            continue
        config = _read_json(config_path)
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(config.get("chat_template"), str):
            template = config["chat_template"]
        elif (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        eos_ids: tuple[int, ...] = ()
        generation = folder / "generation_config.json"
        if generation.is_file():
            raw = _read_json(generation).get("eos_token_id")
            eos_ids = tuple(i for i in (raw if isinstance(raw, list) else [raw]) if isinstance(i, int))
        return TrainingTokenizer(
            folder=folder,
            chat_template=template if isinstance(template, str) else None,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            generation_eos_ids=eos_ids,
        )
    return TrainingTokenizer()


def training_max_length(workspace: Workspace, run: str | None) -> int | None:
    """train.max_length of the run this export came from (its resolved config.yaml or manifest), if recorded."""
    if not run:
        return None
    folder = workspace.run_dir(run)
    config_path = folder / "config.yaml"
    if config_path.is_file():
        import yaml

        try:
            data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            data = {}
        value = (data.get("train") or {}).get("max_length") if isinstance(data, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    manifest_path = workspace.run_manifest(run)
    if manifest_path.is_file():
        manifest = _read_json(manifest_path)
        train = manifest.get("train") if isinstance(manifest.get("train"), dict) else {}
        for value in (manifest.get("max_length"), train.get("max_length")):
            if isinstance(value, int) and value > 0:
                return value
    return None
