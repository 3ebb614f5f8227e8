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


@dataclass(frozen=True)
class ChosenAdapter:
    """A GGUF LoRA adapter from `llmforge export lora-gguf` and what its base must look like in Ollama."""

    path: Path
    run: str
    export_id: str  # the registry id export lora-gguf records: <run>/lora
    verified: bool | None
    base_model: Path | None  # the HF folder it was trained on
    base_gguf: Path | None  # a GGUF of that base, when export verified the adapter on one
    model_dirs: tuple[Path, ...]  # folders with the training tokenizer (the run's adapter, the base)


def choose_adapter(workspace: Workspace, run: str) -> ChosenAdapter:
    """The newest GGUF LoRA adapter `export lora-gguf` recorded in export/<run>/manifest.json."""
    hint = f"make one first: llmforge export lora-gguf {run}"
    manifest_path = workspace.export_manifest(run)
    entries = _read_json(manifest_path).get("lora_adapters") if manifest_path.is_file() else None
    entries = [e for e in entries or [] if isinstance(e, dict) and e.get("path")]
    path = workspace.export_dir(run) / str(entries[-1]["path"]) if entries else None
    if path is None or not path.is_file():
        raise UsageError(f"the run '{run}' has no exported GGUF LoRA adapter ({workspace.export_dir(run)})", hint=hint)
    entry = entries[-1]
    base = Path(str(entry["base_model"])) if entry.get("base_model") else None
    verified_on = Path(str(entry["verified_on"])) if entry.get("verified_on") else None
    dirs = [workspace.adapter_dir(run)] + ([base] if base else [])
    return ChosenAdapter(
        path=path.resolve(),
        run=run,
        export_id=f"{run}/lora",
        verified=entry.get("verified"),
        base_model=base,
        base_gguf=verified_on if verified_on and verified_on.suffix == ".gguf" and verified_on.is_file() else None,
        model_dirs=tuple(d for d in dirs if d.is_dir()),
    )


def tokens_hash(tokens: list[str] | tuple[str, ...]) -> str:
    """sha256 of a vocabulary (tokenizer.ggml.tokens, in id order): the same on both sides of a comparison."""
    import hashlib

    return hashlib.sha256(json.dumps(list(tokens), ensure_ascii=False).encode("utf-8")).hexdigest()


def expected_base(adapter: ChosenAdapter) -> dict[str, Any]:
    """What the base in Ollama must report in /api/show's model_info for this adapter: the GGUF keys, from the
    adapter GGUF's architecture, the HF base's config.json (layers, widths, heads, vocabulary) and, when export
    verified on a base GGUF, that GGUF's vocabulary hash."""
    arch = read_gguf(adapter.path).architecture
    expected: dict[str, Any] = {"general.architecture": arch}
    config_path = _base_config(adapter.base_model) if adapter.base_model else None
    if arch and config_path is not None:
        config = _read_json(config_path)
        config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        heads = config.get("num_attention_heads")
        for key, value in (
            ("block_count", config.get("num_hidden_layers")),
            ("embedding_length", config.get("hidden_size")),
            ("feed_forward_length", config.get("intermediate_size")),
            ("attention.head_count", heads),
            ("attention.head_count_kv", config.get("num_key_value_heads") or heads),
            ("vocab_size", config.get("vocab_size")),
        ):
            if isinstance(value, int):
                expected[f"{arch}.{key}"] = value
    if adapter.base_gguf is not None:
        tokens = read_gguf(adapter.base_gguf).tokens
        if tokens:
            expected["tokenizer.ggml.tokens"] = tokens_hash(tokens)
    return expected


def _base_config(base: Path) -> Path | None:
    """The base's config.json: in its folder, or, for a hub id, in the local hub cache training filled (never
    downloaded here)."""
    if (base / "config.json").is_file():
        return base / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(str(base), "config.json")
    except ValueError:  # not a valid repo id either
        return None
    return Path(cached) if isinstance(cached, str) else None


def base_mismatches(expected: dict[str, Any], model_info: dict[str, Any]) -> list[str]:
    """How Ollama's model_info differs from `expected`; a key Ollama does not report is not a difference. The
    vocabulary is compared by hash, and only when Ollama lists the tokens (show returns them only verbose)."""
    problems = []
    for key, want in expected.items():
        have = model_info.get(key)
        if key == "tokenizer.ggml.tokens":
            if have and tokens_hash(have) != want:
                problems.append("the tokenizer's vocabulary differs (tokenizer.ggml.tokens hash)")
            continue
        if have is not None and have != want:
            problems.append(f"{key} is {have}, the adapter's base has {want}")
    return problems
