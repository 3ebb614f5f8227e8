"""Architectures our converter does not cover: run llama.cpp's own convert_hf_to_gguf.py from a checkout the user
points at (export.llama_cpp_dir) or from llama-cpp-python's source package fetched into a cache, in a subprocess with
that checkout's gguf-py first on the path."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from llmforge.atomic import atomic_path
from llmforge.errors import LlmforgeError, UsageError, install_hint

log = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself

# What the vendored converter imports (module -> our extra that carries it). torch and transformers are imported at
# module level by every architecture; sentencepiece by the Llama-family vocab code before it even looks for a
# tokenizer.model, so a fresh install without it fails on all of those; protobuf when transformers converts a
# sentencepiece tokenizer; yaml (gguf-py's) is a core dependency. torch is not in the 'gguf' extra on purpose: our own
# converter never needs it. Found by running the converter where only these extras can be imported (core_guard.py).
CONVERTER_NEEDS = {"torch": "train", "transformers": "train", "numpy": "gguf", "sentencepiece": "gguf",
                   "google.protobuf": "gguf"}
SOURCE_SIZE = "~75 MB"


def missing_dependencies() -> list[str]:
    """The converter's imports that cannot be found here (checked without importing them)."""
    missing = []
    for module in CONVERTER_NEEDS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing.append(module)
    return missing


def require_dependencies() -> None:
    """Fail before any download or subprocess when the converter could not even import."""
    missing = missing_dependencies()
    if missing:
        extras = ",".join(sorted({CONVERTER_NEEDS[m] for m in missing}))
        names = ", ".join("protobuf" if m == "google.protobuf" else m for m in missing)
        raise UsageError(f"llama.cpp's converter needs {names} (not installed)", hint=install_hint(extras))


def debug_enabled() -> bool:
    return os.environ.get("LLMFORGE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(:.*)?$")
_LOG_PREFIX = re.compile(r"^(ERROR|CRITICAL|WARNING|INFO|DEBUG):[\w.-]+:")


def last_error_line(output: str) -> str:
    """The converter's last meaningful line: the exception that ended it (`NotImplementedError: BPE pre-tokenizer was
    not recognized ...`), else its last ERROR log line, else its last line; never a traceback frame or a progress bar."""
    lines = [ln.rstrip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    for line in reversed(lines):
        if line.startswith(("ERROR:", "CRITICAL:")):
            return _LOG_PREFIX.sub("", line).strip()
    plain = [ln for ln in lines if not ln.startswith((" ", "\t", "Traceback", "Writing:"))]
    return (plain or lines or [""])[-1].strip()


def failure_hint(line: str, cmd: list[str]) -> str:
    if "pre-tokenizer was not recognized" in line:
        return ("llama.cpp's converter knows BPE tokenizers by a hash of how they split a test text, and this one is "
                "not in its list (a tokenizer trained or edited by hand is not); a newer llama-cpp-python may know it. "
                "LLMFORGE_DEBUG=1 shows the converter's full output")
    if "is not supported" in line:
        return "llama.cpp's converter has no class for this architecture; LLMFORGE_DEBUG=1 shows its full output"
    return f"LLMFORGE_DEBUG=1 shows the converter's full output; or run it yourself: {' '.join(cmd[:3])} ..."


def converter_script(llama_cpp_dir: Path) -> Path:
    script = Path(llama_cpp_dir) / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UsageError(f"export.llama_cpp_dir: {llama_cpp_dir} has no convert_hf_to_gguf.py",
                         hint="point it at the root of a llama.cpp checkout")
    return script


def convert(llama_cpp_dir: Path, model_dir: Path, out_path: Path, outtype: str) -> dict:
    script = converter_script(llama_cpp_dir)
    require_dependencies()
    env = dict(os.environ)
    gguf_py = Path(llama_cpp_dir) / "gguf-py"
    if gguf_py.is_dir():  # the converter must use the gguf-py of its own checkout, not ours
        env["PYTHONPATH"] = os.pathsep.join([str(gguf_py), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with atomic_path(out_path) as tmp:
        cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(tmp), "--outtype", outtype]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        output = (proc.stdout or "") + (proc.stderr or "")
        if proc.returncode != 0 or not tmp.stat().st_size:
            line = last_error_line(output) or f"exit {proc.returncode}"
            message = f"llama.cpp's converter failed on {Path(model_dir).name}: {line}"
            if debug_enabled():  # the whole output, for whoever asked to see everything
                message += "\n--- llama.cpp's converter output ---\n" + output.rstrip()
            raise LlmforgeError(message, hint=failure_hint(line, cmd))
        if debug_enabled():
            log.info("llama.cpp's converter output:\n%s", output.rstrip())
    return {"converter": "llama.cpp", "script": str(script), "version": source_version(Path(llama_cpp_dir))}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmforge" / "llama.cpp"


def wanted_version() -> str | None:
    """The llama-cpp-python version whose converter we fetch: the installed one, so converter and loader agree."""
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def cached_converter() -> Path | None:
    """The cached converter of the installed llama-cpp-python's version, else the newest cached one."""
    root = cache_root()
    version = wanted_version()
    if version and (root / version / "convert_hf_to_gguf.py").is_file():
        return root / version
    cached = sorted((p.parent for p in root.glob("*/convert_hf_to_gguf.py")),  # 0.3.36 is newer than 0.3.9
                    key=lambda p: [int(x) if x.isdigit() else -1 for x in re.split(r"[.\-]", p.name)])
    return cached[-1] if cached else None


def source_version(checkout: Path) -> str | None:
    """The llama-cpp-python version a cached converter came from (its folder name), None for a user's checkout."""
    return checkout.name if checkout.parent == cache_root() else None


def supported_architectures(checkout: Path) -> list[str]:
    """The HF architectures a converter checkout registers, read from its source without importing it (that needs
    torch): the keys of conversion/__init__.py's TEXT_MODEL_MAP, or the names in ModelBase.register(...) calls."""
    names: set[str] = set()
    init = checkout / "conversion" / "__init__.py"
    if init.is_file():
        text = init.read_text(encoding="utf-8", errors="replace")
        block = re.search(r"TEXT_MODEL_MAP[^=]*=\s*\{(.*?)\n\}", text, re.S)
        if block:
            names.update(re.findall(r'"(\w+)"\s*:', block.group(1)))
    sources = [checkout / "convert_hf_to_gguf.py", *sorted((checkout / "conversion").glob("*.py"))]
    for path in sources:
        if path.is_file():
            for args in re.findall(r"ModelBase\.register\(([^)]*)\)", path.read_text(encoding="utf-8", errors="replace")):
                names.update(re.findall(r'"(\w+)"', args))
    return sorted(names)


def readiness(llama_cpp_dir: Path | None = None) -> dict:
    """Whether the fallback can run here, for `doctor`: where its source is (the user's checkout, the cache, or to be
    fetched with pip), and which of its imports are missing. Cheap: no import, no network."""
    missing = missing_dependencies()
    checkout = Path(llama_cpp_dir) if llama_cpp_dir else cached_converter()
    if llama_cpp_dir:
        state = "checkout" if (checkout / "convert_hf_to_gguf.py").is_file() else "checkout missing"
    elif checkout is not None:
        state = "cached"
    elif importlib.util.find_spec("pip") is not None:
        state = "fetchable"
    else:
        state = "not fetchable (no pip)"
    version = wanted_version()
    return {
        "source": str(checkout) if checkout else None,
        "state": state,
        "fetch": (f"llama-cpp-python{'==' + version if version else ''} source package ({SOURCE_SIZE}, once) into "
                  f"{cache_root()}"),
        "missing": ["protobuf" if m == "google.protobuf" else m for m in missing],
        "install": install_hint(",".join(sorted({CONVERTER_NEEDS[m] for m in missing}))) if missing else None,
        "ready": not missing and state in ("checkout", "cached", "fetchable"),
        "architectures": supported_architectures(checkout) if state in ("checkout", "cached") else [],
    }


def fetch_converter(version: str | None = None) -> Path:
    """llama.cpp's converter as vendored in llama-cpp-python's source package (convert_hf_to_gguf.py, conversion/,
    gguf-py/), downloaded once with pip into the cache. Returns the folder to use as a llama.cpp checkout."""
    import tempfile

    if version is None:
        version = wanted_version()
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
