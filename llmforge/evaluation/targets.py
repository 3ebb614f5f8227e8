"""Targets: the model forms an evaluation compares, parsed from `base`, `run[:NAME]`, `gguf:QUANT`, `ollama:NAME`,
`http://...`, a model folder or a .gguf file, and resolved against the workspace by path only (other stages'
artifacts are read from the files they leave, never through their code)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from llmforge import ollama_client
from llmforge.errors import InputError, UsageError
from llmforge.workspace import Workspace

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Target:
    spec: str  # as the user wrote it
    kind: str  # "hf" | "gguf" | "ollama" | "http"
    label: str  # how tables and reports name it
    model: str | None = None  # HF folder or hub id (the base, for adapters); GGUF file; Ollama or endpoint model
    adapter: Path | None = None  # PEFT adapter folder on top of `model`
    tokenizer: str | None = None  # HF tokenizer folder or hub id (chat template with generation markers)
    run: str | None = None  # the training run it comes from, for lineage and loss curves
    url: str | None = None  # Ollama host or endpoint base URL
    revision: str | None = None
    details: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Identifies the weights behind the target cheaply: generations cached under it stay valid."""
        parts = [self.kind, self.model or "", self.revision or "", self.url or "", self.tokenizer or ""]
        if self.kind in ("hf", "gguf") and self.model and Path(self.model).exists():
            parts.append(_path_digest(Path(self.model)))
        if self.adapter is not None:
            parts.append(_path_digest(self.adapter))
        if self.details.get("digest"):
            parts.append(self.details["digest"])
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]


def _path_digest(path: Path, small: int = 64 << 20) -> str:
    """sha256 over file names and contents; files above `small` bytes count by size and mtime (weights of a 7B
    model are not re-read on every eval)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        if stat.st_size <= small:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def split_specs(specs: list[str] | str) -> list[str]:
    """`base,run` or ["base", "run"] -> ["base", "run"], without empties or repeats."""
    items = specs.split(",") if isinstance(specs, str) else [s for spec in specs for s in spec.split(",")]
    out: list[str] = []
    for item in (s.strip() for s in items):
        if item and item not in out:
            out.append(item)
    return out


def has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def resolve(spec: str, workspace: Workspace, base_model: str | None, revision: str | None = None,
            ollama_host: str | None = None) -> Target:
    """Turn one target spec into a Target with every path it needs; raises LlmforgeError when it cannot."""
    if spec == "base":
        if not base_model:
            raise UsageError("target 'base': model.name is not set", hint="set model.name to a hub id or folder")
        return Target(spec, "hf", "base", model=base_model, tokenizer=base_model, revision=revision)
    if spec == "run" or spec.startswith("run:"):
        return _resolve_run(spec, workspace, base_model)
    if spec.startswith("gguf:"):
        return _resolve_gguf_quant(spec, workspace, base_model)
    if spec.startswith("ollama:"):
        name = spec.split(":", 1)[1]
        if not name:
            raise UsageError("target 'ollama:' needs a model name", hint="e.g. ollama:my-model")
        host = ollama_client.resolve_host(ollama_host)
        if "://" not in host:
            host = "http://" + host
        return Target(spec, "ollama", spec, model=name, url=host)
    if spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)
        model = parse_qs(parts.query).get("model", [None])[0]
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        if not base.endswith("/v1"):
            base += "/v1"
        return Target(spec, "http", spec, model=model, url=base)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"target {spec}: no such GGUF file")
        return Target(spec, "gguf", spec, model=str(path.resolve()), tokenizer=_gguf_tokenizer(path, None, base_model))
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            base = _adapter_base(path, None)
            tok = str(path) if has_tokenizer(path) else base
            return Target(spec, "hf", spec, model=base, adapter=path.resolve(), tokenizer=tok)
        if not (path / "config.json").is_file():
            raise UsageError(f"target {spec}: the folder holds neither config.json nor adapter_config.json")
        return Target(spec, "hf", spec, model=str(path.resolve()), tokenizer=str(path.resolve()))
    raise UsageError(
        f"unknown target {spec!r}",
        hint="use base, run[:NAME], gguf:QUANT, ollama:NAME, http://HOST:PORT/v1, a model folder or a .gguf file",
    )


def _adapter_base(adapter: Path, manifest: dict | None) -> str:
    base = (manifest or {}).get("base_model")
    if not base:
        base = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    if not base:
        raise InputError(f"{adapter}: the adapter does not name its base model (base_model_name_or_path)")
    return str(base)


def _resolve_run(spec: str, workspace: Workspace, base_model: str | None) -> Target:
    from llmforge.checkpoints import model_ref

    # The default is the newest finished fine-tune of model.name: the run a base-vs-run comparison means.
    name = spec.split(":", 1)[1] if ":" in spec else workspace.latest_run(model_ref(base_model) if base_model else None)
    run_dir = workspace.run_dir(name)
    if not run_dir.is_dir():
        known = ", ".join(workspace.runs()) or "none"
        raise UsageError(f"target {spec}: no run named {name!r} in {workspace.runs_dir}", hint=f"finished runs: {known}")
    manifest_file = workspace.run_manifest(name)
    manifest = _read_json(manifest_file) if manifest_file.is_file() else {}
    label = f"run:{name}"
    adapter, model_dir = workspace.adapter_dir(name), workspace.model_dir(name)
    if (adapter / "adapter_config.json").is_file():
        base = _adapter_base(adapter, manifest)
        tok = str(adapter) if has_tokenizer(adapter) else base
        return Target(spec, "hf", label, model=base, adapter=adapter, tokenizer=tok, run=name)
    if (model_dir / "config.json").is_file():
        return Target(spec, "hf", label, model=str(model_dir), tokenizer=str(model_dir), run=name)
    raise UsageError(
        f"target {spec}: run {name} has neither adapter/ nor model/", hint="is the run finished? see its train log"
    )


def _resolve_gguf_quant(spec: str, workspace: Workspace, base_model: str | None) -> Target:
    quant = spec.split(":", 1)[1].lower()
    if not quant:
        raise UsageError("target 'gguf:' needs a quant type", hint="e.g. gguf:q4_k_m or gguf:f16")
    run = workspace.latest_export()
    folder = workspace.export_dir(run)
    found = sorted(folder.glob(f"*-{quant}.gguf"))
    if not found:
        have = ", ".join(p.name for p in sorted(folder.glob("*.gguf"))) or "none"
        raise UsageError(
            f"target {spec}: no *-{quant}.gguf in {folder} (have: {have})",
            hint=f"export it first: llmforge export gguf --quant {quant}",
        )
    if len(found) > 1:
        raise UsageError(f"target {spec}: several files match in {folder}: {', '.join(p.name for p in found)}",
                         hint="name the file itself as the target")
    path = found[0]
    return Target(spec, "gguf", spec, model=str(path), tokenizer=_gguf_tokenizer(path, (workspace, run), base_model),
                  run=run)


def _gguf_tokenizer(path: Path, export: tuple[Workspace, str] | None, base_model: str | None) -> str | None:
    """The HF tokenizer whose ids the GGUF shares (the export copies the vocabulary one to one): the merged folder
    beside it, the run it came from, else the base model. None: llama.cpp's own tokenizer and template are used."""
    candidates = [path.parent / "merged"]
    if export is not None:
        ws, run = export
        candidates += [ws.merged_dir(run), ws.adapter_dir(run), ws.model_dir(run)]
    for folder in candidates:
        if has_tokenizer(folder):
            return str(folder)
    return base_model
