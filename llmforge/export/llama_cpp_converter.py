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


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmforge" / "llama.cpp"


def fetch_converter(version: str | None = None) -> Path:
    """llama.cpp's converter as vendored in llama-cpp-python's source package (convert_hf_to_gguf.py, conversion/,
    gguf-py/), downloaded once with pip into the cache. Returns the folder to use as a llama.cpp checkout."""
    import importlib.metadata
    import tempfile

    if version is None:
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            version = None
    target = cache_root() / (version or "latest")
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    spec = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--no-binary", ":all:", "-d", tmp]
        log.info("fetching llama.cpp's converter: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            raise LlmforgeError(f"could not download {spec}'s source for llama.cpp's converter: "
                                f"{lines[-1] if lines else 'no archive'}",
                                hint="set export.llama_cpp_dir to a llama.cpp checkout instead")
        return extract_converter(archives[0], target)


def extract_converter(archive: Path, target: Path) -> Path:
    """Unpack only vendor/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/} of the sdist into target."""
    import shutil
    import tarfile

    from llmforge.atomic import atomic_dir

    with atomic_dir(target, force=True) as staging, tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or not member.isfile():
                continue
            rel = Path(*parts[3:])
            if rel.parts == ("convert_hf_to_gguf.py",) or rel.parts[0] in ("conversion", "gguf-py"):
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise LlmforgeError(f"{archive.name} has no vendor/llama.cpp/convert_hf_to_gguf.py",
                                hint="set export.llama_cpp_dir to a llama.cpp checkout instead")
    return target
