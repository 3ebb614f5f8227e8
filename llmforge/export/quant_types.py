"""The GGUF output types we offer, and which engine makes each one. Pure: no numpy, no gguf, no llama_cpp.

Float types and the simple block types come out of our own converter (numpy, the `gguf` library);
K-quants only from llama.cpp's quantizer (llama-cpp-python, the `llamacpp` extra), starting from an f16 GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmforge.errors import UsageError


@dataclass(frozen=True)
class QuantType:
    name: str  # lower case, as it appears in file names: model-q4_k_m.gguf
    numpy: str | None  # gguf.GGMLQuantizationType member our converter writes, None if it cannot
    llama_ftype: str | None  # llama_cpp LLAMA_FTYPE_* constant, None if llama.cpp's quantizer is not needed
    strict: bool  # a near-lossless float type: top-1 agreement with HF below 0.99 fails the export


QUANT_TYPES: dict[str, QuantType] = {
    q.name: q
    for q in [
        QuantType("f32", "F32", None, True),
        QuantType("f16", "F16", None, True),
        QuantType("bf16", "BF16", None, False),
        QuantType("q8_0", "Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", False),
        QuantType("q5_0", "Q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", False),
        QuantType("q4_0", "Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", False),
        QuantType("q6_k", None, "LLAMA_FTYPE_MOSTLY_Q6_K", False),
        QuantType("q5_k_m", None, "LLAMA_FTYPE_MOSTLY_Q5_K_M", False),
        QuantType("q5_k_s", None, "LLAMA_FTYPE_MOSTLY_Q5_K_S", False),
        QuantType("q4_k_m", None, "LLAMA_FTYPE_MOSTLY_Q4_K_M", False),
        QuantType("q4_k_s", None, "LLAMA_FTYPE_MOSTLY_Q4_K_S", False),
        QuantType("q3_k_m", None, "LLAMA_FTYPE_MOSTLY_Q3_K_M", False),
        QuantType("q3_k_s", None, "LLAMA_FTYPE_MOSTLY_Q3_K_S", False),
        QuantType("q3_k_l", None, "LLAMA_FTYPE_MOSTLY_Q3_K_L", False),
        QuantType("q2_k", None, "LLAMA_FTYPE_MOSTLY_Q2_K", False),
    ]
}

# The float type llama.cpp's quantizer starts from when a K-quant is asked for and no float type is.
QUANTIZE_SOURCE = "f16"


def parse_quants(spec: str | list[str] | tuple[str, ...]) -> list[QuantType]:
    """'f16,Q4_K_M' or ['f16', 'q4_k_m'] -> QuantTypes in the order given, duplicates dropped."""
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in str(part).split(",")]
    names = [s.strip().lower().replace("-", "_") for s in items if s.strip()]
    if not names:
        raise UsageError("no quant type given", hint=f"choose from: {', '.join(QUANT_TYPES)}")
    out: list[QuantType] = []
    for name in names:
        if name not in QUANT_TYPES:
            raise UsageError(
                f"unknown quant type {name!r}",
                hint=f"choose from: {', '.join(QUANT_TYPES)} (comma separated, e.g. --quant f16,q4_k_m)",
            )
        if QUANT_TYPES[name] not in out:
            out.append(QUANT_TYPES[name])
    return out


def needs_llama_cpp(quant: QuantType) -> bool:
    return quant.numpy is None


def gguf_file_name(name: str, quant: QuantType) -> str:
    """The workspace convention: <name>-<quant>.gguf with the quant in lower case."""
    return f"{name}-{quant.name}.gguf"
