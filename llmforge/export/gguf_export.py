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

from llmforge.atomic import refuse_overwrite
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


def choose_converter(model_dir: Path, converter: str, llama_cpp_dir: Path | None) -> tuple[str, Path | None]:
    """('native', None) or ('llama.cpp', checkout) for this model; a clear error when neither can do it.
    converter 'llama.cpp' without a checkout fetches llama-cpp-python's source (its vendored converter) once;
    'auto' never downloads: it uses that cache only if an earlier run filled it."""
    config = gguf_convert.read_config(model_dir)
    arch = gguf_convert.architecture_of(config, model_dir)
    supported = arch in gguf_convert.ARCHITECTURES
    if converter == "native" or (converter == "auto" and supported):
        gguf_convert.arch_spec(config, model_dir)  # raises the listing error when unsupported
        return "native", None
    if converter not in ("auto", "llama.cpp"):
        raise UsageError(f"export.converter: unknown value {converter!r}", hint="use auto, native or llama.cpp")
    if llama_cpp_dir is None:
        cached = sorted(llama_cpp_converter.cache_root().glob("*/convert_hf_to_gguf.py"))
        if converter == "llama.cpp":
            llama_cpp_dir = llama_cpp_converter.fetch_converter()
        elif cached:
            llama_cpp_dir = cached[-1].parent
        else:
            try:
                gguf_convert.arch_spec(config, model_dir)
            except UsageError as e:  # unsupported: say what is, and both ways to use llama.cpp's converter
                e.hint = ("set export.llama_cpp_dir to a llama.cpp checkout, or export.converter: llama.cpp to "
                          "download llama-cpp-python's source (~75 MB, once) and run its vendored converter")
                raise
    llama_cpp_converter.converter_script(llama_cpp_dir)
    return "llama.cpp", llama_cpp_dir


def produce(model_dir: Path, out_dir: Path, name: str, quants: list[QuantType], *, verify_files: bool = True,
            force: bool = False, converter: str = "auto", llama_cpp_dir: Path | None = None,
            backend: str = "auto", reference_adapters: list[Path] | None = None, _convert_options=None,
            progress: Callable[[str], None] | None = None) -> dict:
    """Write out_dir/<name>-<quant>.gguf for each quant; return the manifest body. Verification failures are
    reported in the result (`failures`), not raised, so the caller can write the manifest first."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    require_extra("llmforge export gguf", "gguf", "gguf", "numpy", "tokenizers")
    how, llama_cpp_dir = choose_converter(model_dir, converter, llama_cpp_dir)
    llama_ok = has_llama_cpp()
    targets = {q.name: out_dir / gguf_file_name(name, q) for q in quants}
    for path in targets.values():
        refuse_overwrite(path, force, "GGUF file")

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

    say = progress or (lambda phase: None)  # one call per phase, for the CLI's log lines
    files: dict[str, dict] = {}
    convert_info: dict = {}
    source_float: Path | None = None
    temp_float: Path | None = None
    try:
        for q in quants:
            if by_llama_cpp(q):
                continue
            started = time.perf_counter()
            say(f"writing {targets[q.name].name}")
            if how == "native":
                convert_info = gguf_convert.convert(model_dir, targets[q.name], q, name=name,
                                                    **(_convert_options or {}))
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
                temp_float = out_dir / f".{name}-{q16.name}.for-quantize.gguf"
                say(f"writing a {q16.name} GGUF to quantize from")
                if how == "native":
                    convert_info = gguf_convert.convert(model_dir, temp_float, q16, name=name,
                                                        **(_convert_options or {}))
                else:
                    convert_info = llama_cpp_converter.convert(llama_cpp_dir, model_dir, temp_float, q16.name)
                source_float = temp_float
            for q in k_quants:
                started = time.perf_counter()
                say(f"quantizing {targets[q.name].name}")
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

    failures: list[str] = []
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
            say(f"verifying {path.name}")
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
                failures.append(f"{path.name}: " + "; ".join(problems))
    return {
        "source": str(model_dir),
        "converter": how,
        "conversion": convert_info,
        "files": [files[q.name] for q in ordered],
        "verified": bool(files) and all(f["verified"] for f in files.values()),
        "failures": failures,
    }
