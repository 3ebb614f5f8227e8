"""Which backend trains (Unsloth or TRL) and whether this device can train 4-bit: decided before any model loads."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

from llmforge.errors import UsageError

log = logging.getLogger(__name__)

UNSLOTH_METHODS = ("sft", "lora", "qlora")

# A real 4-bit forward and backward on the CPU, in a child process so a crashing native library cannot take the
# training process down, and so bitsandbytes' import noise stays out of our output.
_PROBE_4BIT = """
import torch, bitsandbytes as bnb
layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type='nf4')
layer = layer.to('cpu')
layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type='nf4').to('cpu')
x = torch.randn(2, 64, requires_grad=True)
layer(x).sum().backward()
assert x.grad is not None and torch.isfinite(x.grad).all()
print('ok')
"""


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _unsloth_refuses(method: str, qlora) -> str | None:
    """Why Unsloth cannot run this request as configured (None when it can)."""
    if method not in UNSLOTH_METHODS:
        return f"unsloth does not run --method {method} in llmforge"
    if method == "qlora" and qlora is not None and (qlora.quant_type != "nf4" or not qlora.double_quant):
        # FastLanguageModel builds its own BitsAndBytesConfig (nf4, double quantization) and ignores ours
        return (
            "unsloth always quantizes to nf4 with double quantization, and train.qlora asks for "
            f"quant_type {qlora.quant_type}, double_quant {str(qlora.double_quant).lower()}"
        )
    return None


def choose(method: str, requested: str, qlora=None) -> tuple[str, str]:
    """(backend, why). Raises UsageError when the request cannot be met on this machine.

    `qlora` is the train.qlora section: Unsloth quantizes one way only, so other settings need TRL."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    refused = _unsloth_refuses(method, qlora)
    if requested == "unsloth":
        if not cuda_available():
            raise UsageError(
                "train.backend: unsloth needs a CUDA GPU and none is visible",
                hint="use train.backend: trl (or auto), which trains on CPU and on any GPU",
            )
        if not has_unsloth:
            raise UsageError(
                "train.backend: unsloth is not installed",
                hint="pip install 'llmforge[unsloth]' in a CUDA environment, or use train.backend: trl",
            )
        if refused:
            hint = f"unsloth runs {', '.join(UNSLOTH_METHODS)}; use train.backend: trl for {method}"
            if method in UNSLOTH_METHODS:
                hint = "use train.backend: trl, or the defaults train.qlora.quant_type: nf4, double_quant: true"
            raise UsageError(f"train.backend: {refused}", hint=hint)
        return "unsloth", "asked for in train.backend"
    if requested == "trl":
        return "trl", "asked for in train.backend"
    if method not in UNSLOTH_METHODS:
        return "trl", f"auto: unsloth is not used for {method}"
    if not cuda_available():
        return "trl", "auto: no CUDA device, so unsloth cannot run"
    if not has_unsloth:
        return "trl", "auto: unsloth is not installed (pip install 'llmforge[unsloth]' for faster GPU training)"
    if refused:
        return "trl", f"auto: {refused}"
    return "unsloth", "auto: CUDA device present and unsloth installed"


def check_4bit() -> str:
    """Why 4-bit QLoRA can run here; UsageError naming the cause and the alternative when it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            "--method qlora needs bitsandbytes, which is not installed",
            hint="pip install 'llmforge[train]' (bitsandbytes >= 0.45 quantizes on CPU and CUDA), "
            "or use --method lora, which needs no quantization",
        )
    if cuda_available():
        return "bitsandbytes on CUDA"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE_4BIT], capture_output=True, text=True, timeout=180, env=env
        )
        ok = out.returncode == 0 and "ok" in out.stdout
        detail = (out.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        ok, detail = False, "the 4-bit probe timed out"
    if not ok:
        raise UsageError(
            f"--method qlora: bitsandbytes cannot run 4-bit layers on this device ({detail})",
            hint="use --method lora (full-precision base, same adapter), or train on a CUDA GPU",
        )
    return "bitsandbytes 4-bit on CPU (a real forward and backward succeeded)"
