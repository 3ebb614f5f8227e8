"""What this machine can do: system, torch device, optional libraries, Ollama; then a verdict per method and target.

Slow imports (torch, bitsandbytes, llama_cpp, unsloth) are probed in parallel subprocesses with timeouts, so one
broken library can neither crash nor stall the report. "4-bit usable" means a real Linear4bit forward and backward.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmforge import ollama_client

LIBRARIES = [
    "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "unsloth",
    "gguf", "llama-cpp-python", "ollama", "fastapi", "uvicorn", "vllm",
]  # fmt: skip

TORCH_PROBE = """
import json, torch
info = {"version": torch.__version__, "cuda": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
if info["cuda"]:
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                bf16=torch.cuda.is_bf16_supported())
else:
    info["bf16"] = False
print(json.dumps(info))
"""

# A real 4-bit layer, forward and backward, on the device training would use.
BNB_PROBE = """
import json, torch, bitsandbytes as bnb
dev = "cuda" if torch.cuda.is_available() else "cpu"
layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(dev)
x = torch.randn(2, 64, device=dev, requires_grad=True)
layer(x).sum().backward()
ok = bool(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0)
print(json.dumps({"usable": ok, "device": dev, "version": bnb.__version__}))
"""

LLAMA_CPP_PROBE = """
import json, llama_cpp
print(json.dumps({"version": llama_cpp.__version__, "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload())}))
"""

UNSLOTH_PROBE = """
import json, unsloth
print(json.dumps({"version": getattr(unsloth, "__version__", "unknown")}))
"""


@dataclass
class ProbeResult:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


ProbeRunner = Callable[[str, str, float], ProbeResult]


def run_subprocess_probe(name: str, code: str, timeout: float) -> ProbeResult:
    """Run a probe snippet in a fresh interpreter; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, error=f"probe timed out after {timeout:g} s")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult(False, error=tail[:300])
    return ProbeResult(True, data=json.loads(lines[-1]))


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_gb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def probe_ollama(host: str, timeout: float = 2.0) -> ProbeResult:
    """Ask Ollama for its models through the official client (its public API has no version call)."""
    if importlib.util.find_spec("ollama") is None:
        return ProbeResult(False, error="the ollama client is not installed (extra 'deploy')")
    try:
        client = ollama_client.connect(host, timeout=timeout)
        models = client.list().models
        return ProbeResult(True, data={"host": host, "models": len(models)})
    except Exception as exc:  # any connection problem means "not reachable"; say which
        return ProbeResult(False, data={"host": host}, error=f"not reachable at {host} ({type(exc).__name__})")


@dataclass
class Verdict:
    name: str
    available: bool
    detail: str


@dataclass
class DoctorReport:
    system: dict[str, Any]
    torch: dict[str, Any]
    libraries: dict[str, str | None]
    probes: dict[str, dict[str, Any]]
    ollama: dict[str, Any]
    verdicts: list[Verdict]
    gguf_converters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(
    workdir: Path,
    ollama_host: str | None = None,
    runner: ProbeRunner | None = None,
    ollama_probe: Callable[[str], ProbeResult] | None = None,
    timeout: float = 20.0,
    llama_cpp_dir: Path | None = None,
) -> DoctorReport:
    """Probe everything in parallel and judge each method and export target."""
    runner = runner or run_subprocess_probe
    ollama_probe = ollama_probe or probe_ollama
    host = ollama_client.resolve_host(ollama_host)
    if not host.startswith(("http://", "https://")):
        host = f"http://{host}"
    libraries = {name: _installed(name) for name in LIBRARIES}

    jobs: dict[str, str] = {}
    if libraries["torch"]:
        jobs["torch"] = TORCH_PROBE
        if libraries["bitsandbytes"]:
            jobs["bitsandbytes"] = BNB_PROBE
    if libraries["llama-cpp-python"]:
        jobs["llama_cpp"] = LLAMA_CPP_PROBE

    with ThreadPoolExecutor(max_workers=len(jobs) + 1) as pool:
        futures = {name: pool.submit(runner, name, code, timeout) for name, code in jobs.items()}
        ollama_future = pool.submit(ollama_probe, host)
        results = {name: fut.result() for name, fut in futures.items()}
        ollama_result = ollama_future.result()

    torch_info = results["torch"].data if "torch" in results and results["torch"].ok else {}
    if "torch" in results and not results["torch"].ok:
        torch_info = {"error": results["torch"].error}
    cuda = bool(torch_info.get("cuda"))
    # unsloth takes ~7 s to import and only runs on CUDA: probe it only where it could be used.
    if cuda and libraries["unsloth"]:
        results["unsloth"] = runner("unsloth", UNSLOTH_PROBE, timeout)

    free_gb = None
    probe_dir = workdir if workdir.exists() else Path.cwd()
    try:
        free_gb = round(shutil.disk_usage(probe_dir).free / 2**30, 1)
    except OSError:
        pass
    system = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "workspace": str(workdir),
        "disk_free_gb": free_gb,
    }
    probes = {name: {"ok": r.ok, **r.data, **({"error": r.error} if r.error else {})} for name, r in results.items()}
    ollama = {"host": host, "reachable": ollama_result.ok, **ollama_result.data}
    if ollama_result.error:
        ollama["error"] = ollama_result.error
    converters = gguf_converters(llama_cpp_dir)
    return DoctorReport(
        system=system,
        torch=torch_info,
        libraries=libraries,
        probes=probes,
        ollama=ollama,
        verdicts=judge(libraries, torch_info, results, ollama_result) + converter_verdicts(converters),
        gguf_converters=converters,
    )


def gguf_converters(llama_cpp_dir: Path | None = None) -> dict[str, Any]:
    """Which architectures export gguf converts itself, and whether llama.cpp's converter can take the rest here."""
    from llmforge.export import gguf_convert, llama_cpp_converter

    return {"native": sorted(gguf_convert.NATIVE_ARCHITECTURES),
            "llama_cpp": llama_cpp_converter.readiness(llama_cpp_dir)}


def converter_verdicts(converters: dict[str, Any]) -> list[Verdict]:
    fallback = converters["llama_cpp"]
    native = Verdict("export gguf: native converter", True, ", ".join(converters["native"]))
    if fallback["missing"]:
        detail = f"needs {', '.join(fallback['missing'])}: {fallback['install']}"
    elif fallback["state"] == "checkout":
        detail = (f"export.llama_cpp_dir {fallback['source']} ({len(fallback['architectures'])} architectures); "
                  "its imports are installed")
    elif fallback["state"] == "cached":
        detail = (f"source cached at {fallback['source']} ({len(fallback['architectures'])} architectures); "
                  "its imports are installed")
    elif fallback["state"] == "fetchable":
        detail = (f"not cached; export.converter: llama.cpp fetches the {fallback['fetch']} (needs the package "
                  "index); auto uses it once cached")
    else:
        detail = f"{fallback['state']}: {fallback['source'] or 'no source'}"
    return [native, Verdict("export gguf: other architectures via llama.cpp's converter", fallback["ready"], detail)]


def judge(
    libraries: dict[str, str | None],
    torch_info: dict[str, Any],
    results: dict[str, ProbeResult],
    ollama: ProbeResult,
) -> list[Verdict]:
    """One verdict per training method, backend and export/deploy/serve target, each with its reason."""
    verdicts = []
    cuda = bool(torch_info.get("cuda"))
    mps = bool(torch_info.get("mps"))
    device = f"GPU {torch_info.get('gpu', 'CUDA')}" if cuda else "Apple GPU (MPS)" if mps else "CPU (slow)"
    train_missing = [n for n in ("torch", "transformers", "peft", "trl", "datasets", "accelerate") if not libraries[n]]
    torch_broken = libraries["torch"] and "version" not in torch_info
    for method in ("scratch", "sft", "lora", "dpo", "orpo", "kto"):
        if train_missing:
            verdicts.append(Verdict(method, False, f"needs the 'train' extra ({', '.join(train_missing)} missing)"))
        elif torch_broken:
            verdicts.append(Verdict(method, False, f"torch does not import: {torch_info.get('error')}"))
        else:
            verdicts.append(Verdict(method, True, f"available on {device}"))

    bnb = results.get("bitsandbytes")
    if train_missing:
        verdicts.append(Verdict("qlora", False, "needs the 'train' extra"))
    elif not libraries["bitsandbytes"]:
        verdicts.append(Verdict("qlora", False, "bitsandbytes is not installed (part of the 'train' extra)"))
    elif bnb is None or not bnb.ok or not bnb.data.get("usable"):
        reason = bnb.error if bnb is not None and bnb.error else "4-bit forward/backward failed"
        verdicts.append(Verdict("qlora", False, f"bitsandbytes cannot run 4-bit layers here: {reason}; use lora"))
    else:
        verdicts.append(Verdict("qlora", True, f"available on {device}: 4-bit forward and backward ran"))

    if not libraries["unsloth"]:
        verdicts.append(Verdict("unsloth", False, "not installed (pip install 'llmforge-cli[unsloth]' on a CUDA machine)"))
    elif not cuda:
        verdicts.append(Verdict("unsloth", False, "not available: no CUDA device; training uses TRL + PEFT"))
    elif not results.get("unsloth", ProbeResult(False)).ok:
        verdicts.append(Verdict("unsloth", False, f"import failed: {results['unsloth'].error}"))
    else:
        verdicts.append(Verdict("unsloth", True, f"available on {device}"))

    if libraries["gguf"]:
        verdicts.append(Verdict("export gguf (f16, bf16, q8_0, q4_0, q5_0)", True, f"gguf {libraries['gguf']}"))
    else:
        verdicts.append(Verdict("export gguf", False, "needs the 'gguf' extra"))
    llama = results.get("llama_cpp")
    if llama is not None and llama.ok:
        verdicts.append(
            Verdict("export k-quants and verification", True, f"llama-cpp-python {llama.data.get('version')}")
        )
        verdicts.append(
            Verdict(
                "serve gguf (llama.cpp engine)",
                bool(libraries["fastapi"]),
                "needs the 'serve' extra" if not libraries["fastapi"] else "available",
            )
        )
    else:
        why = llama.error if llama is not None else "llama-cpp-python is not installed"
        verdicts.append(Verdict("export k-quants and verification", False, f"{why}; install the 'llamacpp' extra"))
        verdicts.append(Verdict("serve gguf (llama.cpp engine)", False, "needs the 'llamacpp' extra"))
    verdicts.append(vllm_verdict(libraries, torch_info))
    if ollama.ok:
        verdicts.append(
            Verdict("deploy ollama", True, f"Ollama at {ollama.data.get('host')} ({ollama.data.get('models')} models)")
        )
    else:
        if not libraries["ollama"]:
            detail = "the ollama client is not installed: add the 'deploy' extra"
        else:
            detail = f"{ollama.error}; start it with `ollama serve` or set OLLAMA_HOST"
        verdicts.append(Verdict("deploy ollama", False, detail + " (deploy --dry-run still writes the Modelfile)"))
    return verdicts


def vllm_verdict(libraries: dict[str, str | None], torch_info: dict[str, Any]) -> Verdict:
    """Whether `serve.engine: vllm` (and `auto` on an HF model) can use vLLM here, from the version lookup and the
    torch probe: vLLM itself is never imported (seconds, and a CUDA initialisation)."""
    from llmforge.serving.vllm_engine import reason

    name = "serve hf models (vLLM engine)"
    torch_version = torch_info.get("version") if libraries.get("torch") else None
    why_not = reason(libraries.get("vllm"), torch_version, bool(torch_info.get("cuda")))
    if why_not is None and not libraries.get("fastapi"):
        why_not = "needs the 'serve' extra"
    if why_not is not None:
        return Verdict(name, False, why_not)
    return Verdict(name, True, f"vLLM {libraries['vllm']} on GPU {torch_info.get('gpu', 'CUDA')}")
