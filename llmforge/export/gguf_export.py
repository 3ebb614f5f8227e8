"""Produce the requested GGUF files from a HF model folder and verify each one against HF.

Float and simple block types come from our converter; K-quants from llama.cpp's quantizer, starting from an f16
file (a requested one, or a temporary one removed afterwards).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path

from llmforge import atomic
from llmforge.atomic import refuse_overwrite, reserve
from llmforge.errors import MissingExtraError, UsageError, require_extra
from llmforge.export import gguf_convert, llama_cpp_converter, llama_cpp_quantize, verify
from llmforge.export.quant_types import QUANT_TYPES, QUANTIZE_SOURCE, QuantType, gguf_file_name
from llmforge.manifest import sha256_file

log = logging.getLogger(__name__)


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def missing_for_verification() -> list[str]:
    """What verification needs beyond the converter: llama.cpp to load the file, transformers to compare with."""
    return [m for m in ("llama_cpp", "torch", "transformers") if importlib.util.find_spec(m) is None]


def choose_converter(model_dir: Path, converter: str, llama_cpp_dir: Path | None, *,
                     fetch: bool = True) -> tuple[str, Path | None, str]:
    """('native', None, note) or ('llama.cpp', checkout, note) for this model, where note says in one line what will
    convert it and from where; a clear error when neither can. converter 'llama.cpp' without a checkout fetches
    llama-cpp-python's source (its vendored converter) once (not with fetch=False: a dry run only says it would);
    'auto' never downloads: it uses that cache only if an earlier run filled it."""
    config = gguf_convert.read_config(model_dir)
    arch = gguf_convert.architecture_of(config, model_dir)
    label = config.get("model_type") or arch
    supported = arch in gguf_convert.NATIVE_ARCHITECTURES
    if converter == "native" or (converter == "auto" and supported):
        gguf_convert.arch_spec(config, model_dir)  # raises the listing error when unsupported
        return "native", None, f"{label}: converted natively ({arch})"
    if converter not in ("auto", "llama.cpp"):
        raise UsageError(f"export.converter: unknown value {converter!r}", hint="use auto, native or llama.cpp")
    why = "export.converter is llama.cpp" if supported else "not converted natively"
    if llama_cpp_dir is not None:
        llama_cpp_converter.converter_script(llama_cpp_dir)
        llama_cpp_converter.require_dependencies()
        return "llama.cpp", llama_cpp_dir, (f"{label}: {why}; using llama.cpp's converter from {llama_cpp_dir} "
                                            "(export.llama_cpp_dir)")
    cached = llama_cpp_converter.cached_converter()
    if cached is None and converter == "auto":
        raise UsageError(
            f"{label}: not converted natively ({arch}; native: {', '.join(gguf_convert.supported_architectures())}), "
            "and llama.cpp's converter is not cached here",
            hint=(f"export.converter: llama.cpp downloads llama-cpp-python's source ({llama_cpp_converter.SOURCE_SIZE},"
                  " once) and runs its vendored converter; or set export.llama_cpp_dir to a llama.cpp checkout"),
        )
    llama_cpp_converter.require_dependencies()  # before a download that could not be used
    if cached is not None:
        version = llama_cpp_converter.source_version(cached)
        return "llama.cpp", cached, (f"{label}: {why}; using llama.cpp's converter from {cached} "
                                     f"(llama-cpp-python {version} source, cached)")
    where = llama_cpp_converter.readiness()["fetch"]
    if not fetch:
        return "llama.cpp", None, f"{label}: {why}; using llama.cpp's converter from the {where} (downloaded first)"
    checkout = llama_cpp_converter.fetch_converter()
    return "llama.cpp", checkout, f"{label}: {why}; using llama.cpp's converter from {checkout} (downloaded now)"


def refuse_listed(path: Path, listed: set[str] | None, force: bool, key: str | None = None) -> bool:
    """Refuse (without --force) to replace a GGUF that the folder's manifest lists (as `key`, default its name);
    `listed` None means the manifest could not be read, so every existing file counts as listed. Returns whether
    `path` is an unlisted leftover to replace: a final-named file no manifest lists was left by an export killed
    before it wrote its manifest (versions before this publish order), not made by the user's last export."""
    if not path.exists():
        return False
    if listed is None or (key or path.name) in listed:
        refuse_overwrite(path, force, "GGUF file")
        return False
    return True


def publish(staged: dict[Path, Path], record=None) -> None:
    """Give verified files their final names: the files they replace go first, then `record()` writes the manifest
    that lists them, then the renames. Killed at any point, no final-named file is missing from the manifest or
    older than its entry; what is left are temporaries (`atomic.remove_stale`) and entries of missing files."""
    for final in staged:
        final.unlink(missing_ok=True)
    if record is not None:
        record()
    for final, tmp in staged.items():
        atomic.publish(tmp, final)


def produce(model_dir: Path, out_dir: Path, name: str, quants: list[QuantType], *, verify_files: bool = True,
            force: bool = False, converter: str = "auto", llama_cpp_dir: Path | None = None,
            backend: str = "auto", reference_adapters: list[Path] | None = None, listed: set[str] | None = None,
            record=None, progress: Callable[[str], None] | None = None) -> dict:
    """Write out_dir/<name>-<quant>.gguf for each quant; return the manifest body. `progress` gets a line per
    phase (each file written, quantized, verified), for the CLI's log. Verification failures are
    reported in the result (`failures`), not raised, so the caller can write the manifest first.

    Each file is written and verified under a temporary name and published (`publish`) only after `record(result)`
    wrote the manifest listing it. `listed`: the file names the folder's manifest lists (only those need --force);
    None (no manifest known) protects every existing file."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    require_extra("llmforge export gguf", "gguf", "gguf", "numpy", "tokenizers")
    how, llama_cpp_dir, note = choose_converter(model_dir, converter, llama_cpp_dir)
    log.info("%s", note)
    llama_ok = has_llama_cpp()
    finals = {q.name: out_dir / gguf_file_name(name, q) for q in quants}
    leftovers = [path.name for path in finals.values() if refuse_listed(path, listed, force)]

    def by_llama_cpp(q: QuantType) -> bool:
        if q.numpy is None:
            return True
        if q.numpy in ("F32", "F16", "BF16"):
            return False
        return backend == "llama.cpp" or (backend == "auto" and llama_ok)

    k_quants = [q for q in quants if by_llama_cpp(q)]
    if k_quants and not llama_ok:
        raise MissingExtraError(f"llmforge export gguf --quant {','.join(q.name for q in k_quants)}", "llamacpp",
                                ["llama_cpp"])

    targets = {q: reserve(path) for q, path in finals.items()}  # written and verified under these names
    published = False
    try:
        result = _write_and_verify(model_dir, out_dir, name, quants, targets, how, llama_cpp_dir, by_llama_cpp,
                                   verify_files, reference_adapters,
                                   progress or (lambda phase: None))
        for f in result["files"]:
            f["path"] = finals[f["quant"]].name
        result["failures"] = [f"{finals[q].name}: {problem}" for q, problem in result["failures"]]
        result["replaced_leftovers"] = leftovers
        result["converter_note"] = note
        publish({finals[q]: targets[q] for q in finals}, (lambda: record(result)) if record else None)
        published = True
        return result
    finally:
        if not published:
            for tmp in targets.values():
                tmp.unlink(missing_ok=True)


def _write_and_verify(model_dir: Path, out_dir: Path, name: str, quants: list[QuantType], targets: dict[str, Path],
                      how: str, llama_cpp_dir: Path | None, by_llama_cpp, verify_files: bool,
                      reference_adapters: list[Path] | None, say: Callable[[str], None]) -> dict:
    """Write each quant to targets[quant] (temporary names) and verify it there. `failures`: (quant, problems)."""
    k_quants = [q for q in quants if by_llama_cpp(q)]
    files: dict[str, dict] = {}
    convert_info: dict = {}
    source_float: Path | None = None
    temp_float: Path | None = None
    try:
        for q in quants:
            if by_llama_cpp(q):
                continue
            started = time.perf_counter()
            say(f"writing {gguf_file_name(name, q)}")
            if how == "native":
                convert_info = gguf_convert.convert(model_dir, targets[q.name], q, name=name)
            else:
                if q.name not in llama_cpp_converter.OUTTYPES:
                    raise UsageError(f"llama.cpp's converter cannot write {q.name}",
                                     hint=f"use one of {', '.join(llama_cpp_converter.OUTTYPES)}")
                convert_info = llama_cpp_converter.convert(llama_cpp_dir, model_dir, targets[q.name], q.name)
            files[q.name] = {"seconds": round(time.perf_counter() - started, 3), "made_by": how}
        if k_quants:
            for float_name in (QUANTIZE_SOURCE, "f32"):
                if float_name in files:
                    source_float = targets[float_name]
                    break
            else:
                q16 = QUANT_TYPES[QUANTIZE_SOURCE]
                temp_float = reserve(out_dir / f"{name}-{q16.name}.for-quantize.gguf")
                say(f"writing a {q16.name} GGUF to quantize from")
                if how == "native":
                    convert_info = gguf_convert.convert(model_dir, temp_float, q16, name=name)
                else:
                    convert_info = llama_cpp_converter.convert(llama_cpp_dir, model_dir, temp_float, q16.name)
                source_float = temp_float
            for q in k_quants:
                started = time.perf_counter()
                say(f"quantizing to {gguf_file_name(name, q)}")
                llama_cpp_quantize.quantize(source_float, targets[q.name], q)
                files[q.name] = {"seconds": round(time.perf_counter() - started, 3), "made_by": "llama.cpp quantize"}
    finally:
        if temp_float is not None:
            temp_float.unlink(missing_ok=True)

    ordered = [q for q in quants]
    for q in ordered:
        path = targets[q.name]
        files[q.name].update({"kind": "model", "quant": q.name, "path": path.name, "bytes": path.stat().st_size,
                              "sha256": sha256_file(path), "tensor_types": llama_cpp_quantize.tensor_types(path),
                              "verified": False})

    failures: list[tuple[str, str]] = []
    if not verify_files:
        for f in files.values():
            f["verification"] = "skipped (--no-verify)"
    elif missing := missing_for_verification():
        names = {"llama_cpp": "llama-cpp-python (the 'llamacpp' extra)", "torch": "torch", "transformers": "transformers"}
        what = ", ".join(names[m] for m in missing)
        log.warning("GGUF files written but NOT verified: %s not installed (`llmforge doctor` explains)", what)
        for f in files.values():
            f["verification"] = f"skipped: {what} not installed"
    else:
        say("loading the HF model to verify against")
        ref = verify.load_reference(model_dir, reference_adapters)
        prompts = verify.prompt_ids(ref)
        ref_logits = verify.hf_logits(ref, prompts)
        for q in ordered:
            f = files[q.name]
            path = targets[q.name]
            say(f"verifying {gguf_file_name(name, q)}")
            tok = verify.check_tokenization(path, ref)
            logits = verify.compare_logits(path, prompts, ref_logits)
            f["tokenization"] = tok
            f["logits"] = logits
            problems = []
            if not tok["ok"]:
                first = tok["mismatches"][0]
                problems.append(f"tokenizes {len(tok['mismatches'])} of {tok['texts']} probe texts differently "
                                f"from HF (first: {first['text'][:40]!r}: HF {first['hf'][:12]} vs GGUF "
                                f"{first['gguf'][:12]})")
            if q.strict and logits["top1_agreement_decisive"] < verify.MIN_AGREEMENT:
                problems.append(f"top-1 agreement with HF {logits['top1_agreement_decisive']:.3f} "
                                f"< {verify.MIN_AGREEMENT} (near-ties excluded)")
            f["verified"] = not problems
            if problems:
                f["problems"] = problems
                failures.append((q.name, "; ".join(problems)))
    return {
        "source": str(model_dir),
        "converter": how,
        "conversion": convert_info,
        "files": [files[q.name] for q in ordered],
        "verified": bool(files) and all(f["verified"] for f in files.values()),
        "failures": failures,
    }
