"""The export stage in two parts: plan() decides a GGUF export without writing anything (the model it converts,
merged first or not, the converter and from where, the files; what --dry-run shows), run(plan) writes, verifies
and records the files (export/<run>/<name>-<quant>.gguf beside manifest.json).

`export merge` and `export lora-gguf` take the same shape: plan_merge() -> MergePlan and run_merge(plan) ->
MergeResult (export/<run>/merged/), plan_lora_gguf() -> LoraGgufPlan and run_lora_gguf(plan) -> LoraGgufResult
(export/<run>/lora/<run>-lora-f32.gguf).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge import manifest as manifests
from llmforge import registry
from llmforge.atomic import write_json
from llmforge.errors import InputError, LlmforgeError, UsageError
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
        removed_temporaries=removed + (merged_info.removed_temporaries if merged_info else 0),
        replaced_leftovers=result["replaced_leftovers"],
    )


def _model_to_convert(plan: ExportPlan, progress) -> tuple[Path, MergeResult | None]:
    """(the HF model folder to convert, the merge's result when this run merged): an adapter run's merged/
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


# ----------------------------------------------------------------------------------------------------------------
# export merge
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MergePrepared:
    workspace: Workspace
    adapter_dirs: list[Path]
    force: bool
    timer: manifests.Timer


@dataclass(frozen=True)
class MergePlan:
    """A merge decided but not done: the adapters (applied in order), their base and the folder it writes."""

    run: str  # the last source's run: the merge lands in export/<run>/merged/
    base_model: str
    adapters: list[str]
    output: str
    dtype: str  # as asked (auto: the base's)
    prepared: _MergePrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "run": self.run, "base_model": self.base_model, "adapters": self.adapters,
                "output": self.output, "dtype": self.dtype}  # fmt: skip


@dataclass(frozen=True)
class MergeResult:
    """A finished merge: export/<run>/merged/manifest.json as written, and what this run tidied. as_dict() is
    `llmforge export merge --json`, key for key."""

    manifest: dict[str, Any]
    removed_temporaries: int  # leftovers of a killed export this run removed (not part of the manifest)

    @property
    def output(self) -> str:
        return self.manifest["output"]

    @property
    def base_model(self) -> str:
        return self.manifest["base_model"]

    @property
    def adapters(self) -> list[str]:
        return self.manifest["adapters"]

    @property
    def adapter_types(self) -> list[str]:
        return self.manifest["adapter_types"]

    @property
    def dtype(self) -> str:
        """The merged weights' dtype (auto resolved)."""
        return self.manifest["dtype"]

    @property
    def merge_max_abs_diff(self) -> float:
        return self.manifest["merge_max_abs_diff"]

    def as_dict(self) -> dict[str, Any]:
        return {**self.manifest, "removed_temporaries": self.removed_temporaries}


def plan_merge(model_cfg, export_cfg, workspace: Workspace, sources: list[str] | None = None, *,
               dtype: str = "auto", force: bool = False) -> MergePlan:
    """Decide a merge: each source (run names or adapter folders, default the newest run) must be an adapter; the
    base is the first one's. Writes nothing."""
    timer = manifests.Timer()
    resolved = [resolve_source(workspace, s) for s in (sources or [None])]
    for kind, _name, path in resolved:
        if kind != "adapter":
            raise UsageError(f"{path} is a full model, not an adapter: nothing to merge",
                             hint="convert it directly: llmforge export gguf " + str(path))
    adapters = [path for _, _, path in resolved]
    run = resolved[-1][1]
    return MergePlan(run=run, base_model=base_model_of(adapters[0], model_cfg), adapters=[str(a) for a in adapters],
                     output=str(workspace.merged_dir(run)), dtype=dtype,
                     prepared=_MergePrepared(workspace, adapters, force, timer))  # fmt: skip


def run_merge(plan: MergePlan, *, progress=None) -> MergeResult:
    """Write export/<run>/merged/ (atomically) with its manifest and record it in the registry. `progress` gets
    one line per phase."""
    import json

    from llmforge.atomic import atomic_dir
    from llmforge.export.merging import merge_adapters

    p = plan.prepared
    base, out = plan.base_model, Path(plan.output)
    removed = remove_stale_temporaries(p.workspace.export_dir(plan.run))
    if progress:
        progress(f"merging {len(p.adapter_dirs)} adapter(s) into {base}")
    with atomic_dir(out, force=p.force) as tmp:
        facts = merge_adapters(base, p.adapter_dirs, tmp, dtype=plan.dtype)
        inputs = {"base_model": base} if Path(base).exists() else {}
        inputs.update({f"adapter_{i}": a for i, a in enumerate(p.adapter_dirs)})
        body = manifests.build("export merge", inputs, p.timer, output=str(out), **facts)
        (tmp / "manifest.json").write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    registry.record(p.workspace.registry_file, "export", f"{plan.run}/merged", parent=plan.run, path=str(out),
                    status="complete", metrics={"merge_max_abs_diff": facts["merge_max_abs_diff"]})  # fmt: skip
    return MergeResult(manifest=body, removed_temporaries=removed)


# ----------------------------------------------------------------------------------------------------------------
# export lora-gguf
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoraPrepared:
    model_cfg: Any
    export_cfg: Any
    workspace: Workspace
    adapter_dir: Path
    base_dir: Path
    base_gguf: Path | None
    force: bool
    timer: manifests.Timer


@dataclass(frozen=True)
class LoraGgufPlan:
    """A GGUF LoRA adapter decided but not written: the run's adapter, its base, and where the file goes."""

    run: str
    adapter: str
    base_model: str
    output_dir: str
    file: str  # relative to output_dir: lora/<run>-lora-f32.gguf (apart from the full models deploy picks from)
    verify: bool
    verify_on: str  # the base GGUF given, or "f32 conversion of the base"
    prepared: _LoraPrepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": True, "run": self.run, "adapter": self.adapter, "base_model": self.base_model,
                "output_dir": self.output_dir, "file": self.file, "verify": self.verify,
                "verify_on": self.verify_on}  # fmt: skip


@dataclass(frozen=True)
class LoraGgufResult:
    """A written GGUF LoRA adapter: export/<run>/manifest.json as written (its lora_adapters list holds the new
    entry), and what this run tidied. as_dict() is `llmforge export lora-gguf --json`, key for key."""

    manifest: dict[str, Any]
    output_dir: str
    removed_temporaries: int
    replaced_leftovers: list[str]

    @property
    def run(self) -> str | None:
        return self.manifest.get("run")

    @property
    def lora_adapters(self) -> list[dict[str, Any]]:
        """The manifest's adapter entries: kind, quant, path, bytes, sha256, verified, logits, rank, alpha, ..."""
        return self.manifest["lora_adapters"]

    def as_dict(self) -> dict[str, Any]:
        return {**self.manifest, "output_dir": self.output_dir, "removed_temporaries": self.removed_temporaries,
                "replaced_leftovers": self.replaced_leftovers}  # fmt: skip


def plan_lora_gguf(model_cfg, export_cfg, workspace: Workspace, source: str | Path | None = None, *,
                   base_gguf: Path | None = None, force: bool = False) -> LoraGgufPlan:
    """Decide a GGUF LoRA export of `source` (a LoRA run or adapter folder; default the newest run). Its base must
    be a local model folder (the converter reads its config). Writes nothing."""
    timer = manifests.Timer()
    kind, run, path = resolve_source(workspace, source)
    if kind != "adapter":
        raise UsageError(f"{path} is a full model; lora-gguf needs a PEFT adapter", hint="pass a LoRA run")
    base = Path(base_model_of(path, model_cfg))
    if not (base / "config.json").is_file():
        raise InputError(f"base model {base}: not a local model folder with config.json",
                         hint="lora-gguf needs the base model's files; set model.name to its folder")
    return LoraGgufPlan(
        run=run, adapter=str(path), base_model=str(base), output_dir=str(workspace.export_dir(run)),
        file=f"lora/{run}-lora-f32.gguf", verify=export_cfg.verify,
        verify_on=str(base_gguf) if base_gguf else "f32 conversion of the base",
        prepared=_LoraPrepared(model_cfg, export_cfg, workspace, path, base, base_gguf, force, timer),
    )  # fmt: skip


def run_lora_gguf(plan: LoraGgufPlan, *, progress=None) -> LoraGgufResult:
    """Write the adapter GGUF, verify it on a base GGUF in llama.cpp against HF base+adapter (unless export.verify
    is false), and record it in export/<run>/manifest.json and the registry. Raises LlmforgeError (exit 1) after
    writing the manifest when verification fails."""
    from llmforge.export.lora_gguf import export_adapter

    p = plan.prepared
    body, removed, leftover = export_adapter(
        p.model_cfg, p.export_cfg, p.workspace, plan.run, p.adapter_dir, p.base_dir, plan.file, base_gguf=p.base_gguf,
        force=p.force, timer=p.timer, progress=progress,
    )  # fmt: skip
    return LoraGgufResult(manifest=body, output_dir=plan.output_dir, removed_temporaries=removed,
                          replaced_leftovers=[plan.file] if leftover else [])  # fmt: skip
