"""doctor's verdicts with its probes faked at their edge (the subprocess and the Ollama call)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from llmforge import doctor
from llmforge.doctor import ProbeResult, diagnose

CPU_TORCH = {"version": "2.13.0+cpu", "cuda": False, "cuda_version": None, "mps": False, "bf16": False}
GPU_TORCH = {"version": "2.13.0", "cuda": True, "cuda_version": "12.8", "mps": False, "bf16": True, "gpu": "H100",
             "gpu_count": 1, "gpu_memory_gb": 79.1}  # fmt: skip


def fake_runner(results: dict[str, ProbeResult], calls: list[str] | None = None):
    def run(name, code, timeout):
        if calls is not None:
            calls.append(name)
        return results[name]

    return run


def no_ollama(host):
    return ProbeResult(False, data={"host": host}, error=f"not reachable at {host} (ConnectError)")


def verdicts(report):
    return {v.name: v for v in report.verdicts}


def with_libraries(monkeypatch, installed: set[str]):
    monkeypatch.setattr(doctor, "_installed", lambda name: "1.0" if name in installed else None)


ALL_TRAIN = {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "gguf", "ollama"}


def test_cpu_machine_verdicts(monkeypatch, tmp_path):
    with_libraries(monkeypatch, ALL_TRAIN)
    calls: list[str] = []
    runner = fake_runner(
        {"torch": ProbeResult(True, CPU_TORCH), "bitsandbytes": ProbeResult(True, {"usable": True, "device": "cpu"})},
        calls,
    )
    report = diagnose(tmp_path, runner=runner, ollama_probe=no_ollama)
    v = verdicts(report)
    assert v["lora"].available and v["lora"].detail == "available on CPU (slow)"
    assert v["qlora"].available and "CPU (slow)" in v["qlora"].detail
    assert not v["unsloth"].available
    assert not v["deploy ollama"].available and "127.0.0.1:11434" in v["deploy ollama"].detail
    assert (
        not v["export k-quants and verification"].available
        and "llamacpp" in v["export k-quants and verification"].detail
    )
    assert "unsloth" not in calls  # never imported without CUDA


def test_unsloth_needs_cuda(monkeypatch, tmp_path):
    with_libraries(monkeypatch, ALL_TRAIN | {"unsloth"})
    calls: list[str] = []
    runner = fake_runner(
        {"torch": ProbeResult(True, CPU_TORCH), "bitsandbytes": ProbeResult(True, {"usable": True})}, calls
    )
    v = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))
    assert v["unsloth"].detail == "not available: no CUDA device; training uses TRL + PEFT"
    assert "unsloth" not in calls


def test_gpu_machine_with_unsloth(monkeypatch, tmp_path):
    with_libraries(monkeypatch, ALL_TRAIN | {"unsloth"})
    runner = fake_runner(
        {
            "torch": ProbeResult(True, GPU_TORCH),
            "bitsandbytes": ProbeResult(True, {"usable": True, "device": "cuda"}),
            "unsloth": ProbeResult(True, {"version": "2026.11"}),
        }
    )
    v = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))
    assert v["unsloth"].available and "H100" in v["unsloth"].detail
    assert v["lora"].detail == "available on GPU H100"


def test_broken_bitsandbytes_says_why_and_suggests_lora(monkeypatch, tmp_path):
    with_libraries(monkeypatch, ALL_TRAIN)
    runner = fake_runner(
        {"torch": ProbeResult(True, CPU_TORCH), "bitsandbytes": ProbeResult(False, error="probe timed out after 20 s")}
    )
    v = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))
    assert not v["qlora"].available
    assert "timed out" in v["qlora"].detail and "use lora" in v["qlora"].detail


def test_light_install_says_which_extra(monkeypatch, tmp_path):
    with_libraries(monkeypatch, set())
    report = diagnose(tmp_path, runner=fake_runner({}), ollama_probe=no_ollama)
    v = verdicts(report)
    assert "'train' extra" in v["lora"].detail and "'gguf' extra" in v["export gguf"].detail
    assert "'deploy' extra" in v["deploy ollama"].detail and "ollama serve" not in v["deploy ollama"].detail
    assert report.torch == {}


def test_ollama_reachable(monkeypatch, tmp_path):
    with_libraries(monkeypatch, set())
    report = diagnose(
        tmp_path, ollama_host="localhost:1234", runner=fake_runner({}),
        ollama_probe=lambda host: ProbeResult(True, {"host": host, "models": 2}),
    )  # fmt: skip
    assert verdicts(report)["deploy ollama"].available
    assert report.ollama["host"] == "http://localhost:1234"


def test_real_probe_runner_reports_failures_without_raising():
    assert doctor.run_subprocess_probe("x", "import sys; sys.exit(3)", 10).ok is False
    slow = doctor.run_subprocess_probe("x", "import time; time.sleep(5)", 0.5)
    assert not slow.ok and "timed out" in slow.error
    good = doctor.run_subprocess_probe("x", "print('{\"a\": 1}')", 10)
    assert good.ok and good.data == {"a": 1}


def test_ollama_probe_unreachable_port():
    result = doctor.probe_ollama("http://127.0.0.1:9", timeout=0.5)
    assert not result.ok and "127.0.0.1:9" in result.error


def test_doctor_cli_json(monkeypatch):
    from llmforge.cli.app import app

    with_libraries(monkeypatch, ALL_TRAIN)
    results = {"torch": ProbeResult(True, CPU_TORCH), "bitsandbytes": ProbeResult(True, {"usable": True})}
    monkeypatch.setattr(doctor, "run_subprocess_probe", fake_runner(results))
    monkeypatch.setattr(doctor, "probe_ollama", no_ollama)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["torch"]["version"] == "2.13.0+cpu"
    assert {v["name"]: v["available"] for v in data["verdicts"]}["qlora"] is True


def test_doctor_lists_native_architectures_and_whether_llama_cpps_converter_is_ready(monkeypatch, tmp_path):
    from llmforge.export import llama_cpp_converter

    with_libraries(monkeypatch, ALL_TRAIN)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_cpp_converter, "missing_dependencies", lambda: [])
    runner = fake_runner({"torch": ProbeResult(True, CPU_TORCH), "bitsandbytes": ProbeResult(True, {"usable": True})})
    v = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))
    assert "LlamaForCausalLM" in v["export gguf: native converter"].detail
    fallback = v["export gguf: other architectures via llama.cpp's converter"]
    assert fallback.available and "not cached" in fallback.detail and "fetches the llama-cpp-python" in fallback.detail
    cached = tmp_path / "cache" / "llmforge" / "llama.cpp" / "9.9.9"
    (cached / "conversion").mkdir(parents=True)
    (cached / "convert_hf_to_gguf.py").write_text("")
    (cached / "conversion" / "x.py").write_text('@ModelBase.register("GPTNeoXForCausalLM", "FalconForCausalLM")\n')
    report = diagnose(tmp_path, runner=runner, ollama_probe=no_ollama)
    fallback = verdicts(report)["export gguf: other architectures via llama.cpp's converter"]
    assert fallback.available and f"source cached at {cached} (2 architectures)" in fallback.detail
    assert report.to_dict()["gguf_converters"]["llama_cpp"]["architectures"] == ["FalconForCausalLM",
                                                                                "GPTNeoXForCausalLM"]
    monkeypatch.setattr(llama_cpp_converter, "missing_dependencies", lambda: ["sentencepiece"])
    fallback = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))[
        "export gguf: other architectures via llama.cpp's converter"]
    assert not fallback.available and "needs sentencepiece" in fallback.detail and "llmforge-cli[gguf]" in fallback.detail


def test_vllm_verdict_says_why(monkeypatch, tmp_path):
    serve_libs = ALL_TRAIN | {"fastapi", "uvicorn"}
    for installed, torch_info, available, detail in [
        (serve_libs, GPU_TORCH, False, "vLLM is not installed (pip install 'llmforge-cli[vllm]'"),
        (serve_libs | {"vllm"}, CPU_TORCH, False, "vLLM 1.0 is installed but torch 2.13.0+cpu sees no CUDA GPU"),
        (serve_libs | {"vllm"}, GPU_TORCH, True, "vLLM 1.0 on GPU H100"),
        (ALL_TRAIN | {"vllm"}, GPU_TORCH, False, "needs the 'serve' extra"),
    ]:
        with_libraries(monkeypatch, installed)
        runner = fake_runner({"torch": ProbeResult(True, torch_info), "bitsandbytes": ProbeResult(True, {"usable": True})})
        v = verdicts(diagnose(tmp_path, runner=runner, ollama_probe=no_ollama))["serve hf models (vLLM engine)"]
        assert (v.available, v.detail.startswith(detail)) == (available, True), v.detail
