"""The one place that opens a GGUF in llama.cpp (llama-cpp-python), for export verification, eval and serve.

Why it exists: some CPUs (and virtual machines) advertise Intel AMX but fault on it, and llama-cpp-python built with
-march=native then dies (SIGSEGV in ggml_backend_amx_mul_mat) on the first quantized matmul, because its AMX kernels
come in as an "extra buffer type" (seen here with 0.3.36 on q8_0, q4_0 and q4_k_m, hidden 64 to 1024). On a CPU that
advertises AMX we try the model once in a child process and, if that dies, load without extra buffer types: the
plain CPU kernels give the same results, a little slower. llama_cpp is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PROBE = (
    "import sys\nfrom llama_cpp import Llama\n"
    "llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)\nllm.eval([0, 0])\n"
)


def advertises_amx() -> bool:
    try:
        return "amx_" in Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False


@functools.cache
def extra_buffers_work(path: str) -> bool:
    """Whether llama.cpp's extra buffer types (the AMX kernels) survive this model on this CPU; probed once."""
    if not advertises_amx():
        return True
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    if probe.returncode != 0:
        log.warning(
            "llama.cpp crashed (exit %s) with its AMX kernels on this CPU; loading %s without them",
            probe.returncode, path,
        )  # fmt: skip
        return False
    return True


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """`Llama()` has no argument for llama_model_params.use_extra_bufts; set it on the defaults it starts from."""
    import llama_cpp.llama_cpp as capi

    original = capi.llama_model_default_params

    def without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    capi.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        capi.llama_model_default_params = original


_llama_log_callback = None  # kept referenced: llama.cpp holds only the C pointer


def _filter_llama_log() -> None:
    """Replace llama-cpp-python's log callback by one that prints exactly as it does (to stderr, when the
    "llama-cpp-python" logger's level lets the line through, with its level table) but first asks that logger's
    filters, so the known noise the CLI registers there (llmforge.cli.app.KNOWN_NOISE) is dropped and every other
    line still shows."""
    global _llama_log_callback
    if _llama_log_callback is not None:
        return
    import ctypes

    import llama_cpp
    from llama_cpp._logger import GGML_LOG_LEVEL_TO_LOGGING_LEVEL as levels  # importing it installs its callback

    logger = logging.getLogger("llama-cpp-python")

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        level = levels.get(level, logging.INFO)
        line = text.decode("utf-8", errors="replace")
        if logger.level <= level and logger.filter(logger.makeRecord(logger.name, level, "llama.cpp", 0, line,
                                                                      None, None)):
            print(line, end="", flush=True, file=sys.stderr)

    _llama_log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def open_llama(path: Path | str, *, extra_buffers: bool | None = None, **kwargs: Any):
    """A `llama_cpp.Llama` for `path`. extra_buffers: None probes (see module docstring), False never uses them."""
    from llama_cpp import Llama

    _filter_llama_log()

    if extra_buffers is None:
        extra_buffers = kwargs.get("vocab_only", False) or extra_buffers_work(str(path))
    context = contextlib.nullcontext() if extra_buffers else plain_cpu_buffers()
    with context:
        return Llama(model_path=str(path), **kwargs)
