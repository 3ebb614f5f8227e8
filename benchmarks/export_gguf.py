"""Benchmark: convert randomly initialised ~100M-parameter models (bf16 safetensors) to an f16 GGUF with our converter
and with llama.cpp's own convert_hf_to_gguf.py, each in a child process, and report wall time and peak RSS side by
side with their ratios (ours / llama.cpp's). An architecture we do not convert natively gets llama.cpp's column only.

Aim (issue 5): our peak RSS <= 1.3x the size on disk. Prints and saves JSON.

    python benchmarks/export_gguf.py [--architectures llama,mixtral] [--out benchmarks/results/export_gguf.json]
        [--layers 8] [--hidden 768] [--llama-cpp-dir DIR]

llama.cpp's converter comes from --llama-cpp-dir, else llmforge's cache, else llama-cpp-python's source package
(fetched once with pip). Both converters read the same Llama-2 style tokenizer (BPE with byte fallback): llama.cpp's
converter refuses a hand-trained byte-level BPE, whose pre-tokenizer hash it cannot know.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import resource, sys, time, json
sys.path.insert(0, {repo!r})
from pathlib import Path
from llmforge.export import gguf_convert
from llmforge.export.quant_types import QUANT_TYPES
t = time.perf_counter()
if {convert!r} == "native":
    gguf_convert.convert(Path({src!r}), Path({dst!r}), QUANT_TYPES[{quant!r}])
elif {convert!r} == "llama.cpp":  # its script, run as __main__ in this process so that VmHWM is its peak
    import os, runpy
    script = Path({script!r})
    sys.path[:0] = [str(script.parent / "gguf-py"), str(script.parent)]
    sys.argv = [str(script), {src!r}, "--outfile", {dst!r}, "--outtype", {quant!r}]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
# VmHWM is this process's own peak RSS; ru_maxrss would carry the parent's peak across fork+exec on Linux
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss_kib": hwm,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


# Extra config keys per model_type beyond the shared shape (MoE families need their expert counts).
EXTRA_CONFIG = {"mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
                "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 512}}


def build_model(out: Path, architecture: str, hidden: int, layers: int, vocab: int) -> int:
    """A random model of this transformers model_type, built from its config class, with the Llama-2 style tokenizer
    of the tests (its ~600 tokens are padded to the embedding's rows)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    from test_export_architectures import build_sentencepiece_style_tokenizer

    torch.manual_seed(0)
    config = AutoConfig.for_model(architecture, vocab_size=vocab, hidden_size=hidden,
                                  intermediate_size=hidden * 8 // 3 // 64 * 64, num_hidden_layers=layers,
                                  num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                                  max_position_embeddings=2048, tie_word_embeddings=False,
                                  **EXTRA_CONFIG.get(architecture, {}))
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    build_sentencepiece_style_tokenizer(out)
    return params


def run_child(src: Path, dst: Path, quant: str, convert: str, script: Path | None = None) -> dict:
    code = CHILD.format(repo=str(REPO), src=str(src), dst=str(dst), quant=quant, convert=convert,
                        script=str(script or ""))
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        from llmforge.export.llama_cpp_converter import last_error_line

        return {"error": last_error_line(out.stdout + out.stderr)}
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process_wall_seconds": round(wall, 2), "convert_seconds": round(child["seconds"], 2),
            "peak_rss_mib": round(child["peak_rss_kib"] / 1024, 1),
            "gguf_size_mib": round(dst.stat().st_size / 2**20, 1) if dst.exists() else None}


def converter_script(llama_cpp_dir: Path | None) -> Path:
    from llmforge.export import llama_cpp_converter

    checkout = llama_cpp_dir or llama_cpp_converter.cached_converter() or llama_cpp_converter.fetch_converter()
    return llama_cpp_converter.converter_script(checkout)


def verify_file(src: Path, dst: Path) -> dict:
    from llmforge.export import verify

    ref = verify.load_reference(src)
    prompts = verify.prompt_ids(ref)
    started = time.perf_counter()
    result = verify.compare_logits(dst, prompts, verify.hf_logits(ref, prompts))
    result["tokenization_ok"] = verify.check_tokenization(dst, ref)["ok"]
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or key not in a or key not in b or not b[key]:
        return None
    return round(a[key] / b[key], 3)


def bench_architecture(architecture: str, args, script: Path, tmp: Path) -> dict:
    from llmforge.export import gguf_convert

    src = tmp / architecture
    params = build_model(src, architecture, args.hidden, args.layers, args.vocab)
    hf_arch = json.loads((src / "config.json").read_text())["architectures"][0]
    disk = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    native = llama_cpp = None
    if hf_arch in gguf_convert.NATIVE_ARCHITECTURES:
        native = run_child(src, tmp / f"{architecture}-native.gguf", args.quant, "native")
        if args.verify and "error" not in native:
            native["verification"] = verify_file(src, tmp / f"{architecture}-native.gguf")
    llama_cpp = run_child(src, tmp / f"{architecture}-llama.cpp.gguf", args.quant, "llama.cpp", script)
    entry = {
        "architecture": architecture, "hf_architecture": hf_arch, "parameters": params,
        "size_on_disk_mib": round(disk / 2**20, 1),
        "native": native if native is not None else "not converted natively",
        "llama_cpp": llama_cpp,
        "ratio_seconds_native_over_llama_cpp": ratio(native, llama_cpp, "convert_seconds"),
        "ratio_peak_rss_native_over_llama_cpp": ratio(native, llama_cpp, "peak_rss_mib"),
    }
    if native and "peak_rss_mib" in native:
        entry["native_peak_rss_over_disk"] = round(native["peak_rss_mib"] / (disk / 2**20), 3)
    for side in (native, llama_cpp):
        if side and "error" not in side:
            (tmp / f"{architecture}-{'native' if side is native else 'llama.cpp'}.gguf").unlink(missing_ok=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "export_gguf.json")
    parser.add_argument("--architectures", default="llama,mixtral",
                        help="transformers model_types, comma-separated (default: llama and mixtral, both converted "
                        "natively since the MoE families were added)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--quant", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument("--llama-cpp-dir", type=Path, default=None)
    parser.add_argument("--verify", action="store_true", help="Also compare our GGUF with HF (needs llama_cpp).")
    args = parser.parse_args()

    script = converter_script(args.llama_cpp_dir)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = run_child(Path(tmp), Path(tmp) / "none.gguf", args.quant, "none")  # interpreter + imports only
        models = [bench_architecture(a.strip(), args, script, Path(tmp)) for a in args.architectures.split(",")]
    report = {
        "benchmark": "export_gguf",
        "quant": args.quant,
        "shape": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "safetensors_dtype": "bfloat16"},
        "llama_cpp_converter": str(script),
        "baseline_rss_mib": baseline.get("peak_rss_mib"),
        "aim_native_peak_rss_over_disk": 1.3,
        "models": models,
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'architecture':<14}{'disk MiB':>9}  {'ours s':>7} {'llama.cpp s':>11} {'ratio':>6}  "
          f"{'ours MiB':>8} {'llama.cpp MiB':>13} {'ratio':>6}")
    for m in models:
        ours = m["native"] if isinstance(m["native"], dict) else {}
        theirs = m["llama_cpp"]
        print(f"{m['architecture']:<14}{m['size_on_disk_mib']:>9}  {ours.get('convert_seconds', '-'):>7} "
              f"{theirs.get('convert_seconds', theirs.get('error', '-')):>11} "
              f"{m['ratio_seconds_native_over_llama_cpp'] or '-':>6}  {ours.get('peak_rss_mib', '-'):>8} "
              f"{theirs.get('peak_rss_mib', '-'):>13} {m['ratio_peak_rss_native_over_llama_cpp'] or '-':>6}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
