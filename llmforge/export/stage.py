"""The export stage in two parts: plan() decides a GGUF export without writing anything (the model it converts,
merged first or not, the converter and from where, the files; what --dry-run shows), run(plan) writes, verifies
and records the files (export/<run>/<name>-<quant>.gguf beside manifest.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge import manifest as manifests
from llmforge import registry
from llmforge.atomic import write_json
from llmforge.errors import LlmforgeError
from llmforge.export import _is_model_dir, base_model_of, merge, read_manifest, remove_stale_temporaries, resolve_source
from llmforge.export.quant_types import QuantType, gguf_file_name, parse_quants
from llmforge.workspace import Workspace, check_name


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show."""

    model_cfg: Any
    export_cfg: Any
    workspace: Workspace
    kind: str  # 'model' (convert as is) or 'adapter' (merge first)
    path: Path
    quants: list[QuantType]
    newest_run: bool  # no source named: the newest finished run was taken
    dtype: str
    force: bool
    timer: manifests.Timer


@dataclass(frozen=True)
class ExportPlan:
    """A GGUF export decided but not done: what `llmforge export gguf --dry-run` shows, and all `run` needs.
    as_dict() is the dry run's JSON, key for key."""

    run: str
    name: str  # the file stem
    source: str
    merge_first: bool
    converter: str  # native, llama.cpp, or unknown (an adapter whose base is not a local folder)
    converter_note: str
    output_dir: str
    files: list[str]
    verify: bool
    prepared: _Prepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "run": self.run, "name": self.name, "source": self.source,
                "merge_first": self.merge_first, "converter": self.converter, "converter_note": self.converter_note,
                "output_dir": self.output_dir, "files": self.files, "verify": self.verify}  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    """A finished GGUF export: export/<run>/manifest.json as written, and what this run tidied. as_dict() is
    `llmforge export gguf --json`, key for key: the manifest, then output_dir and the tidying counts."""

    manifest: dict[str, Any]
    output_dir: str
    removed_temporaries: int  # temporaries an interrupted export left, removed (its merge's too)
    replaced_leftovers: list[str]  # final-named GGUFs no manifest listed, replaced

    @property
    def run(self) -> str:
        return self.manifest["run"]

    @property
    def files(self) -> list[dict[str, Any]]:
        """The manifest's file entries: quant, path, bytes, sha256, verified, tokenization, logits, ..."""
        return self.manifest["files"]

    @property
    def converter_note(self) -> str:
        return self.manifest["converter_note"]

    @property
    def verified(self) -> bool:
        return self.manifest["verified"]

    @property
    def merged(self) -> bool:
        return self.manifest["merged"]

    def as_dict(self) -> dict[str, Any]:
        return {**self.manifest, "output_dir": self.output_dir, "removed_temporaries": self.removed_temporaries,
                "replaced_leftovers": self.replaced_leftovers}  # fmt: skip


def plan(model_cfg, export_cfg, workspace: Workspace, source: str | Path | None = None, *, name: str | None = None,
         dtype: str = "auto", force: bool = False) -> ExportPlan:
    """Decide the export: the model (a run, run folder, adapter folder or HF model folder; default the newest run),
    the converter and its source, the files. An adapter's architecture is its base model's (read from the base's
    folder when it is local). Writes and downloads nothing."""
    from llmforge.export.gguf_export import choose_converter

    timer = manifests.Timer()
    if name is not None:  # the file stem: checked before anything is merged, converted or written
        check_name(name, "--name")
    quants = parse_quants(export_cfg.quant)
    kind, run, path = resolve_source(workspace, source)
    model_dir = path
    if kind == "adapter":
        merged = workspace.merged_dir(run)
        model_dir = merged if _is_model_dir(merged) else Path(base_model_of(path, model_cfg))
    if _is_model_dir(model_dir):
        how, _checkout, note = choose_converter(model_dir, export_cfg.converter,
                                                Path(export_cfg.llama_cpp_dir) if export_cfg.llama_cpp_dir else None,
                                                fetch=False)  # fmt: skip
    else:
        how, note = "unknown", f"{model_dir}: not a local folder; the converter is chosen after merging"
    name = name or run
    return ExportPlan(
        run=run,
        name=name,
        source=str(path),
        merge_first=kind == "adapter",
        converter=how,
        converter_note=note,
        output_dir=str(workspace.export_dir(run)),
        files=[gguf_file_name(name, q) for q in quants],
        verify=export_cfg.verify,
        prepared=_Prepared(model_cfg, export_cfg, workspace, kind, path, quants, source is None, dtype, force, timer),
    )


def run(plan: ExportPlan, *, progress=None) -> ExportResult:
    """Write each planned file, verify it (unless export.verify is false), and record it in export/<run>/
    manifest.json and the registry. Adapter runs are merged first (or their merged/ folder reused). `progress` gets
    one line per phase (merge, each file written, verification). Raises LlmforgeError (exit 1) after writing the
    manifest when verification fails."""
    p = plan.prepared
    workspace = p.workspace
    if p.newest_run and progress:
        progress(f"run {plan.run} (the newest finished run; name another as RUN)")
    out_dir = Path(plan.output_dir)
    removed = remove_stale_temporaries(out_dir)
    path, merged_info = _model_to_convert(plan, progress)
    manifest_path = workspace.export_manifest(plan.run)
    previous, listed = read_manifest(manifest_path)
    written: dict = {}

    def record(result: dict) -> None:
        written["body"] = _manifest(plan, path, previous, result, merged_info is not None)
        write_json(manifest_path, written["body"])

    from llmforge.export.gguf_export import produce

    export_cfg = p.export_cfg
    result = produce(path, out_dir, plan.name, p.quants, verify_files=export_cfg.verify, force=p.force,
                     converter=export_cfg.converter,
                     llama_cpp_dir=Path(export_cfg.llama_cpp_dir) if export_cfg.llama_cpp_dir else None,
                     listed=listed, record=record, progress=progress)
    for f in result["files"]:
        registry.record(workspace.registry_file, "export", f"{plan.run}/{f['quant']}", parent=plan.run,
                        path=str(out_dir / f["path"]), status=_status(f), metrics=_metrics(f), sha256=f["sha256"])
    if result["failures"]:
        raise LlmforgeError("GGUF verification failed: " + " | ".join(result["failures"]),
                            hint=f"the files are kept and marked verified: false in {manifest_path}"
                            + (f" ({result['converter_note']})" if result["converter"] == "llama.cpp" else ""))
    return ExportResult(
        manifest=written["body"],
        output_dir=str(out_dir),
        # what this run tidied after an interrupted one (not part of the manifest: it describes this run, not the files)
        removed_temporaries=removed + ((merged_info or {}).get("removed_temporaries") or 0),
        replaced_leftovers=result["replaced_leftovers"],
    )


def _model_to_convert(plan: ExportPlan, progress) -> tuple[Path, dict[str, Any] | None]:
    """(the HF model folder to convert, the merge's manifest when this run merged): an adapter run's merged/
    folder, merged now unless it exists (or --force)."""
    p = plan.prepared
    if p.kind != "adapter":
        return p.path, None
    merged = p.workspace.merged_dir(plan.run)
    merged_info = None
    if not _is_model_dir(merged) or p.force:
        merged_info = merge(p.model_cfg, p.export_cfg, p.workspace, [str(p.path)], dtype=p.dtype, force=p.force,
                            progress=progress)
    return merged, merged_info


def _manifest(plan: ExportPlan, path: Path, previous: dict, result: dict, merged_now: bool) -> dict[str, Any]:
    """export/<run>/manifest.json. Files of an earlier export stay listed only when they came from the same model
    and are still there."""
    p = plan.prepared
    out_dir = Path(plan.output_dir)
    same_source = previous.get("source") == str(path)
    new_names = {f["quant"] for f in result["files"]}
    files = [f for f in previous.get("files", []) if same_source and f.get("quant") not in new_names
             and (out_dir / str(f.get("path", ""))).is_file()] + result["files"]  # fmt: skip
    return manifests.build(
        "export gguf", {"model": path}, p.timer, name=plan.name, run=plan.run, source=str(path),
        converter=result["converter"], converter_note=result["converter_note"], conversion=result["conversion"],
        config=p.export_cfg.model_dump(mode="json"),
        files=files, verified=all(f.get("verified") for f in files),
        merged=merged_now or p.kind == "adapter", lora_adapters=previous.get("lora_adapters", []),
    )  # fmt: skip


def _status(entry: dict) -> str:
    return "complete" if entry.get("verified") else "unverified"


def _metrics(entry: dict) -> dict:
    logits = entry.get("logits") or {}
    return {k: logits[k] for k in ("top1_agreement", "top1_agreement_decisive", "max_abs_diff") if k in logits}
