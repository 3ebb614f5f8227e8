"""K-quants (and llama.cpp's own q8_0/q5_0/q4_0 mixtures) through llama-cpp-python's in-process quantizer."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from llmforge.atomic import atomic_path
from llmforge.errors import LlmforgeError, require_extra
from llmforge.export.quant_types import QuantType

log = logging.getLogger(__name__)


def quantize(src: Path, dst: Path, quant: QuantType) -> None:
    """Quantize the f16/f32 GGUF `src` into `dst` (atomically). Tensors whose rows are not a multiple of the
    K-quant block (256) fall back to another type inside llama.cpp, which logs it."""
    require_extra(f"llmforge export gguf --quant {quant.name}", "llamacpp", "llama_cpp")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, quant.llama_ftype)
    params.nthread = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    # llama.cpp logs every tensor; keep that for LLMFORGE_DEBUG=1 (fallbacks are counted in the manifest instead)
    llama_log = logging.getLogger("llama-cpp-python")
    level = llama_log.level
    if os.environ.get("LLMFORGE_DEBUG", "").lower() not in ("1", "true", "yes", "on"):
        llama_log.setLevel(logging.ERROR)
    try:
        with atomic_path(dst) as tmp:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0:
                raise LlmforgeError(f"llama.cpp could not quantize {src.name} to {quant.name} (code {rc})",
                                    hint="run with LLMFORGE_DEBUG=1 to see llama.cpp's log")
    finally:
        llama_log.setLevel(level)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF holds: shows where a K-quant fell back to another type."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))
