"""Architectures our converter does not cover: run llama.cpp's own convert_hf_to_gguf.py from a checkout the user
points at (export.llama_cpp_dir), in a subprocess with that checkout's gguf-py first on the path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from llmforge.atomic import atomic_path
from llmforge.errors import LlmforgeError, UsageError

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself


def converter_script(llama_cpp_dir: Path) -> Path:
    script = Path(llama_cpp_dir) / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UsageError(f"export.llama_cpp_dir: {llama_cpp_dir} has no convert_hf_to_gguf.py",
                         hint="point it at the root of a llama.cpp checkout")
    return script


def convert(llama_cpp_dir: Path, model_dir: Path, out_path: Path, outtype: str) -> dict:
    script = converter_script(llama_cpp_dir)
    env = dict(os.environ)
    gguf_py = Path(llama_cpp_dir) / "gguf-py"
    if gguf_py.is_dir():  # the converter must use the gguf-py of its own checkout, not ours
        env["PYTHONPATH"] = os.pathsep.join([str(gguf_py), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with atomic_path(out_path) as tmp:
        cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.stat().st_size:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            raise LlmforgeError(
                f"llama.cpp's converter failed on {model_dir}: {lines[-1] if lines else f'exit {proc.returncode}'}",
                hint=f"run it yourself to see everything: {' '.join(cmd[:3])} --outtype {outtype}",
            )
    return {"converter": "llama.cpp", "script": str(script)}
