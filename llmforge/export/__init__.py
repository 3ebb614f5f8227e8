"""`llmforge export`: merge adapters into the base, convert to GGUF (our converter), quantize, verify.

The stage's two verbs: plan() decides a GGUF export and returns an ExportPlan, run(plan) writes it and returns an
ExportResult (llmforge/export/stage.py). `export merge` and `export lora-gguf` have the same two parts
(plan_merge/run_merge, plan_lora_gguf/run_lora_gguf) and one-call conveniences (merge, export_lora_gguf). The work is in modules imported inside them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmforge.errors import InputError, UsageError
from llmforge.workspace import check_name

if TYPE_CHECKING:
    from llmforge.config.export import ExportConfig
    from llmforge.config.model import ModelConfig
    from llmforge.export.stage import (
        ExportPlan,
        ExportResult,
        LoraGgufPlan,
        LoraGgufResult,
        MergePlan,
        MergeResult,
    )
    from llmforge.workspace import Workspace

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


# Fixed-name temporaries of versions before temporaries carried their writer's pid (atomic.py).
_OLD_TEMPORARIES = (".*.for-quantize.gguf", ".*.for-lora-check.gguf", ".merged.old")


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def remove_stale_temporaries(out_dir: Path) -> int:
    """Remove what an export killed mid-way left in export/<run>/ (and its lora/): half-written GGUFs and merges
    under temporary names. Returns how many were removed."""
    from llmforge.atomic import remove_stale

    removed = remove_stale(out_dir, _OLD_TEMPORARIES) + remove_stale(out_dir / "lora", _OLD_TEMPORARIES)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted export: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return len(removed)


def read_manifest(manifest_path: Path) -> tuple[dict, set[str] | None]:
    """An export folder's manifest and the files it lists (paths relative to the folder: GGUFs and LoRA adapters).
    The paths are None when a manifest exists but cannot be read: then no file is known to be a leftover, and
    replacing any needs --force."""
    if not manifest_path.is_file():
        return {}, set()
    try:
        body = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, None
    if not isinstance(body, dict):
        return {}, None
    entries = list(body.get("files") or []) + list(body.get("lora_adapters") or [])
    return body, {str(e.get("path", "")) for e in entries if isinstance(e, dict)}


def resolve_source(workspace: Workspace, source: str | Path | None) -> tuple[str, str, Path]:
    """(kind, export name, path) for a run name, a run folder, an adapter folder or a HF model folder.
    kind is 'model' (convert as is) or 'adapter' (merge first)."""
    if source is None:
        source = workspace.latest_run()
    path = Path(source)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return "adapter", path.parent.name if path.name == "adapter" else path.name, path
        if _is_model_dir(path):
            return "model", path.parent.name if path.name in ("model", "merged") else path.name, path
        if (path / "model").is_dir() or (path / "adapter").is_dir():
            return resolve_source(workspace, path / ("model" if (path / "model").is_dir() else "adapter"))
        raise InputError(f"{path}: neither a HF model folder (config.json) nor a PEFT adapter (adapter_config.json)",
                         hint="pass a run name, a run folder, an adapter folder or a saved model folder")
    run = check_name(str(source), "run name")  # not a folder: a run of this workspace, never a path to join
    if _is_model_dir(workspace.model_dir(run)):
        return "model", run, workspace.model_dir(run)
    if (workspace.adapter_dir(run) / "adapter_config.json").is_file():
        return "adapter", run, workspace.adapter_dir(run)
    if workspace.run_dir(run).is_dir():
        raise InputError(f"{workspace.run_dir(run)}: the run has neither model/ nor adapter/",
                         hint="the run did not finish; train it again or pass a model folder")
    raise UsageError(f"no run or folder named {run!r}", hint=f"runs in this workspace: {', '.join(workspace.runs()) or 'none'}")


def base_model_of(adapter_dir: Path, model: ModelConfig) -> str:
    """The base an adapter belongs to: the run manifest's base_model, else the adapter's own config, else model.name."""
    manifest = adapter_dir.parent / "manifest.json"
    if manifest.is_file():
        try:
            base = json.loads(manifest.read_text(encoding="utf-8")).get("base_model")
        except ValueError:
            base = None
        if base:
            return str(base)
    config = adapter_dir / "adapter_config.json"
    if config.is_file():
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return str(base)
    if model.name:
        return model.name
    raise UsageError(f"{adapter_dir}: cannot tell which base model this adapter belongs to",
                     hint="set model.name to the base model")


def plan_merge(model: ModelConfig, export: ExportConfig, workspace: Workspace, sources: list[str] | None = None,
               *, dtype: str = "auto", force: bool = False) -> MergePlan:
    """Decide a merge of the adapter of each source (run names or adapter folders, applied in order; default the
    newest run) into their base. Writes nothing."""
    from llmforge.export import stage

    return stage.plan_merge(model, export, workspace, sources, dtype=dtype, force=force)


def run_merge(plan: MergePlan, *, progress: Progress | None = None) -> MergeResult:
    """Write export/<last run>/merged/ with its manifest. `progress` gets one line per phase."""
    from llmforge.export import stage

    return stage.run_merge(plan, progress=progress)


def merge(model: ModelConfig, export: ExportConfig, workspace: Workspace, sources: list[str] | None = None, *,
          dtype: str = "auto", force: bool = False, progress: Progress | None = None) -> MergeResult:
    """plan_merge() then run_merge(): the merged model's manifest, with removed_temporaries (how many leftovers of
    a killed export this run removed)."""
    return run_merge(plan_merge(model, export, workspace, sources, dtype=dtype, force=force), progress=progress)


def plan(model: ModelConfig, export: ExportConfig, workspace: Workspace, source: str | Path | None = None, *,
         name: str | None = None, dtype: str = "auto", force: bool = False) -> ExportPlan:
    """Decide a GGUF export of `source` (a run name, run folder, adapter folder or HF model folder; default the
    newest run): the files, the converter and from where. Writes nothing; the plan is what
    `llmforge export gguf --dry-run` shows and all `run` needs."""
    from llmforge.export import stage

    return stage.plan(model, export, workspace, source, name=name, dtype=dtype, force=force)


def run(plan: ExportPlan, *, progress: Progress | None = None) -> ExportResult:
    """Write export/<run>/<name>-<quant>.gguf for each type in export.quant, verify each (unless export.verify is
    false), and record them in export/<run>/manifest.json. Adapter runs are merged first (or their merged/
    folder reused). `progress` gets one line per phase (merge, each file written, verification). Raises
    LlmforgeError (exit 1) after writing the manifest when verification fails."""
    from llmforge.export import stage

    return stage.run(plan, progress=progress)


def export_gguf(model: ModelConfig, export: ExportConfig, workspace: Workspace, source: str | Path | None = None, *,
                name: str | None = None, dtype: str = "auto", force: bool = False,
                progress: Progress | None = None) -> ExportResult:
    """plan() then run(), for callers with nothing to show in between."""
    return run(plan(model, export, workspace, source, name=name, dtype=dtype, force=force), progress=progress)


def plan_lora_gguf(model: ModelConfig, export: ExportConfig, workspace: Workspace,
                   source: str | Path | None = None, *, base_gguf: Path | None = None,
                   force: bool = False) -> LoraGgufPlan:
    """Decide a GGUF LoRA export of a run's adapter (default the newest run). Writes nothing."""
    from llmforge.export import stage

    return stage.plan_lora_gguf(model, export, workspace, source, base_gguf=base_gguf, force=force)


def run_lora_gguf(plan: LoraGgufPlan, *, progress: Progress | None = None) -> LoraGgufResult:
    """Write export/<run>/lora/<run>-lora-f32.gguf, verified by loading it on a base GGUF in llama.cpp against HF
    base+adapter; recorded in export/<run>/manifest.json."""
    from llmforge.export import stage

    return stage.run_lora_gguf(plan, progress=progress)


def export_lora_gguf(model: ModelConfig, export: ExportConfig, workspace: Workspace,
                     source: str | Path | None = None, *, base_gguf: Path | None = None,
                     force: bool = False, progress: Progress | None = None) -> LoraGgufResult:
    """plan_lora_gguf() then run_lora_gguf(), for callers with nothing to show in between."""
    return run_lora_gguf(plan_lora_gguf(model, export, workspace, source, base_gguf=base_gguf, force=force),
                         progress=progress)
