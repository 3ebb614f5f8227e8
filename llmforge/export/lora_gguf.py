"""A PEFT LoRA adapter as a GGUF LoRA adapter (llama.cpp --lora, Ollama ADAPTER), verified against HF base+adapter.

Layout llama.cpp expects: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and for each adapted
base tensor <gguf name>.lora_a with numpy shape (r, in) and <gguf name>.lora_b with shape (out, r): PEFT's own
lora_A / lora_B layouts. llama.cpp scales by alpha / r, so rsLoRA's alpha / sqrt(r) is written as alpha * sqrt(r).
Llama's Q/K rows are permuted in the base GGUF, so lora_b's rows (the output side) get the same permutation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from llmforge.atomic import atomic_path, reserve
from llmforge.errors import InputError, UsageError

log = logging.getLogger(__name__)


def _adapter_weights(adapter_dir: Path) -> dict:
    from llmforge.export import safetensors_stream

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise InputError(f"{adapter_dir}: no adapter_model.safetensors", hint="save the adapter with safetensors")
    return {e.name: e for e in safetensors_stream.read_header(path)}


def write_lora_gguf(adapter_dir: Path, base_dir: Path, out_path: Path) -> dict:
    """Convert one PEFT LoRA adapter (for the HF base in base_dir) to out_path, atomically."""
    import gguf
    import numpy as np

    from llmforge.export import gguf_convert, safetensors_stream
    from llmforge.export.merging import check_adapter

    acfg = check_adapter(adapter_dir)
    if acfg.get("peft_type", "LORA") != "LORA":
        raise UsageError(f"{adapter_dir}: {acfg.get('peft_type')} adapters cannot be written as GGUF LoRA",
                         hint="merge it instead: llmforge export merge, then export gguf")
    if acfg.get("use_dora"):
        raise UsageError(f"{adapter_dir}: DoRA adapters have no GGUF LoRA form", hint="merge it instead: llmforge export merge")
    if acfg.get("modules_to_save"):
        raise UsageError(f"{adapter_dir}: the adapter also trains full modules {acfg['modules_to_save']}, which a "
                         "GGUF LoRA cannot carry", hint="merge it instead: llmforge export merge")
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern"):
        raise UsageError(f"{adapter_dir}: per-module rank/alpha patterns are not supported",
                         hint="merge it instead: llmforge export merge")
    config = gguf_convert.read_config(base_dir)
    spec = gguf_convert.arch_spec(config, base_dir)
    r = int(acfg["r"])
    alpha = float(acfg.get("lora_alpha", r))
    if acfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # llama.cpp applies alpha / r; rsLoRA means alpha / sqrt(r)
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, spec.gguf_arch), int(config["num_hidden_layers"]))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)

    entries = _adapter_weights(adapter_dir)
    pairs = []
    for name, entry in sorted(entries.items()):
        if ".lora_A." not in name:
            if ".lora_B." not in name:
                raise UsageError(f"{adapter_dir}: tensor {name} is not a LoRA A/B matrix",
                                 hint="merge it instead: llmforge export merge")
            continue
        b_name = name.replace(".lora_A.", ".lora_B.")
        if b_name not in entries:
            raise InputError(f"{adapter_dir}: {name} has no matching lora_B", hint="the adapter is incomplete")
        base_name = name.split("base_model.model.", 1)[-1].replace(".lora_A.weight", ".weight")
        gguf_name = name_map.get_name(base_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise InputError(f"{adapter_dir}: {base_name} has no GGUF name for {spec.gguf_arch.lower()}")
        heads = 0
        if spec.permute_qk and gguf_convert.SEAMS.permute:
            heads = n_head if base_name.endswith("q_proj.weight") else n_kv if base_name.endswith("k_proj.weight") else 0
        pairs.append((gguf_name, entry, entries[b_name], heads))
    if not pairs:
        raise InputError(f"{adapter_dir}: no LoRA matrices in the adapter")

    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, spec.gguf_arch)]
    writer = gguf.GGUFWriter(None, arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(adapter_dir.parent.name if adapter_dir.name == "adapter" else adapter_dir.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for gguf_name, a, b, _ in pairs:
        for suffix, e in ((".lora_a", a), (".lora_b", b)):
            writer.add_tensor_info(gguf_name + suffix, e.shape, np.dtype(np.float32), 4 * math.prod(e.shape),
                                   raw_dtype=gguf.GGMLQuantizationType.F32)
    with atomic_path(out_path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _, a, b, heads in pairs:
                writer.write_tensor_data(np.ascontiguousarray(safetensors_stream.load(a), dtype=np.float32))
                lora_b = safetensors_stream.load(b)
                if heads:
                    lora_b = gguf_convert.permute_qk(lora_b, heads)
                writer.write_tensor_data(np.ascontiguousarray(lora_b, dtype=np.float32))
        finally:
            writer.close()
    return {"rank": r, "alpha": alpha, "rslora": bool(acfg.get("use_rslora")), "tensors": 2 * len(pairs),
            "target_modules": acfg.get("target_modules")}


def _float_file(path: Path) -> bool:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.file_type")
    return field is not None and int(field.contents()) in (0, 1)  # ALL_F32, MOSTLY_F16


def export_adapter(model, export, workspace, run: str, adapter_dir: Path, base: Path, rel: str, *,
                   base_gguf: Path | None = None, force: bool = False, timer=None,
                   progress=None) -> tuple[dict[str, Any], int, bool]:
    """Write export/<run>/<rel> (lora/<run>-lora-f32.gguf), verify it on top of a base GGUF, record it in the
    manifest and the registry: (the manifest, temporaries removed, whether an unlisted leftover was replaced).
    `progress(line)` is called once per phase."""
    from llmforge import manifest as manifests
    from llmforge import registry
    from llmforge.atomic import write_json
    from llmforge.errors import LlmforgeError
    from llmforge.export import gguf_export, read_manifest, remove_stale_temporaries

    timer = timer or manifests.Timer()
    out_dir = workspace.export_dir(run)
    removed = remove_stale_temporaries(out_dir)
    manifest_path = workspace.export_manifest(run)
    previous, listed = read_manifest(manifest_path)
    out = out_dir / rel
    leftover = gguf_export.refuse_listed(out, listed, force, key=rel)
    staged = reserve(out)  # written and verified under this name; published after the manifest lists it
    try:
        entry, failures = _write_and_verify(model, export, adapter_dir, base, staged, rel, base_gguf,
                                            progress or (lambda phase: None))
        entry["manifest"] = manifests.build("export lora-gguf", {"adapter": adapter_dir, "base_model": base}, timer)
        # The full-model part of the manifest (files, verified, source) stays as export gguf wrote it.
        body = previous or manifests.build("export lora-gguf", {"adapter": adapter_dir}, timer, run=run, files=[])
        body["lora_adapters"] = [a for a in body.get("lora_adapters", []) if a.get("path") != rel] + [entry]
        gguf_export.publish({out: staged}, lambda: write_json(manifest_path, body))
    finally:
        staged.unlink(missing_ok=True)
    logits = entry.get("logits") or {}
    registry.record(workspace.registry_file, "export", f"{run}/lora", parent=run, path=str(out),
                    status="complete" if entry["verified"] else "unverified",
                    metrics={k: logits[k] for k in ("top1_agreement", "max_abs_diff") if k in logits})
    if failures:
        raise LlmforgeError("LoRA GGUF verification failed: " + "; ".join(failures),
                            hint=f"the file is kept and marked verified: false in {manifest_path}")
    return body, removed, bool(leftover)


def _write_and_verify(model, export, adapter_dir: Path, base: Path, staged: Path, rel: str, base_gguf: Path | None,
                      say) -> tuple[dict[str, Any], list[str]]:
    """Write the adapter GGUF to `staged` and verify it there; its manifest entry (path: `rel`) and failures."""
    from llmforge import manifest as manifests
    from llmforge.export import gguf_export, verify
    from llmforge.export.quant_types import QUANT_TYPES

    say(f"writing {Path(rel).name}")
    facts = write_lora_gguf(adapter_dir, base, staged)
    entry: dict[str, Any] = {"kind": "lora_adapter", "quant": "lora-f32", "path": rel, "bytes": staged.stat().st_size,
                             "sha256": manifests.sha256_file(staged), "verified": False, "base_model": str(base),
                             **facts}
    failures = []
    if not export.verify:
        entry["verification"] = "skipped (--no-verify)"
    elif missing := gguf_export.missing_for_verification():
        log.warning("the LoRA GGUF is written but NOT verified: %s not installed", ", ".join(missing))
        entry["verification"] = f"skipped: {', '.join(missing)} not installed"
    else:
        temp_base = None
        try:
            if base_gguf is None:  # an f32 base keeps the comparison about the adapter, not base rounding
                temp_base = reserve(staged.parent / "base-f32.for-lora-check.gguf")
                say("writing an f32 GGUF of the base to verify on")
                from llmforge.export import gguf_convert

                gguf_convert.convert(base, temp_base, QUANT_TYPES["f32"])
            say(f"verifying {Path(rel).name} on the base")
            ref = verify.load_reference(base, [adapter_dir])
            prompts = verify.prompt_ids(ref)
            ref_logits = verify.hf_logits(ref, prompts)
            logits = verify.compare_logits(base_gguf or temp_base, prompts, ref_logits, lora_path=staged)
        finally:
            if temp_base is not None:
                temp_base.unlink(missing_ok=True)
        entry["logits"] = logits
        # On a quantized base, the base's own rounding moves the logits; only a float base makes a strict test.
        strict = base_gguf is None or _float_file(base_gguf)
        entry["verified_on"] = str(base_gguf) if base_gguf else "f32 conversion of the base"
        entry["verified"] = not strict or logits["top1_agreement_decisive"] >= verify.MIN_AGREEMENT
        if not entry["verified"]:
            failures.append(f"{Path(rel).name}: base+adapter top-1 agreement with HF "
                            f"{logits['top1_agreement_decisive']:.3f} < {verify.MIN_AGREEMENT}")
    return entry, failures
