"""The llama.cpp fallback for architectures our converter does not cover, for real: llama-cpp-python's source package
(from the user cache, else fetched with pip; skipped when the package index is unreachable), its vendored
convert_hf_to_gguf.py in a subprocess, the GGUF loaded in llama.cpp and compared with HF. Arcee (AFM) stands for an
uncovered architecture: llama.cpp's converter knows it and transformers builds it tiny from ArceeConfig."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from core_guard import run_cli
from test_export_architectures import build_sentencepiece_style_tokenizer
from typer.testing import CliRunner

from llmforge.cli import export as export_cli
from llmforge.cli.app import LlmforgeGroup
from llmforge.errors import LlmforgeError
from llmforge.export import gguf_convert, gguf_export, llama_cpp_converter

needs_llama_cpp = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")


@pytest.fixture(scope="module")
def converter_checkout() -> Path:
    """The real converter, in the user's cache so that the ~75 MB download happens once per machine, not per run."""
    cached = llama_cpp_converter.cached_converter()
    if cached is not None:
        return cached
    try:
        return llama_cpp_converter.fetch_converter()
    except LlmforgeError as e:
        pytest.skip(f"llama.cpp's converter is not cached and the package index did not give it: {e}")


def build_arcee(out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import ArceeConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = ArceeConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def arcee_dir(tmp_path_factory) -> Path:
    """Llama-2 style tokenizer (BPE with byte fallback): llama.cpp's converter reads it without a pre-tokenizer hash."""
    root = tmp_path_factory.mktemp("arcee")
    return build_arcee(root / "arcee", build_sentencepiece_style_tokenizer(root / "tok"))


@pytest.fixture(scope="module")
def byte_level_arcee_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Our usual test tokenizer: a byte-level BPE trained here, whose pre-tokenizer hash llama.cpp cannot know."""
    return build_arcee(tmp_path_factory.mktemp("arcee-bpe") / "arcee", tiny_tokenizer_dir)


def cli():
    root = typer.Typer(cls=LlmforgeGroup)
    root.callback()(lambda: None)
    root.add_typer(export_cli.app, name="export")
    return root


@needs_llama_cpp
def test_fallback_exports_an_uncovered_architecture_from_a_gguf_install_and_llama_cpp_agrees_with_hf(
        converter_checkout, arcee_dir, tmp_path):
    """Run where only the 'gguf' extra (plus 'train' for torch and transformers, and 'llamacpp' to load the file)
    can be imported, in the CLI and in the converter's own process: on main the converter died on sentencepiece."""
    from llmforge.export import verify

    assert "ArceeForCausalLM" not in gguf_convert.NATIVE_ARCHITECTURES
    ws = tmp_path / "ws"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
    result = run_cli("export", "gguf", str(arcee_dir), "--quant", "f32", "--no-verify", "--json",
                     "--set", f"project.workdir={ws}", "--set", "export.converter=llama.cpp",
                     extras=("gguf", "train", "llamacpp"), guard_children=True, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    manifest = json.loads(result.stdout)
    assert manifest["converter"] == "llama.cpp"
    assert manifest["converter_note"].startswith(
        f"arcee: not converted natively; using llama.cpp's converter from {converter_checkout}")
    gguf_path = ws / "export" / "arcee" / "arcee-f32.gguf"
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    assert reader.fields["general.architecture"].contents() == "arcee"

    ref = verify.load_reference(arcee_dir, None)
    prompts = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 300, 200, 100, 250, 260, 270]]
    logits = verify.compare_logits(gguf_path, prompts, verify.hf_logits(ref, prompts))
    assert logits["top1_agreement"] == 1.0 and logits["max_abs_diff"] < 1e-3, logits


def test_unknown_pre_tokenizer_is_one_line_with_a_hint_and_debug_shows_everything(
        converter_checkout, byte_level_arcee_dir, tmp_path, monkeypatch):
    args = ["export", "gguf", str(byte_level_arcee_dir), "--quant", "f16", "--no-verify",
            "--set", f"project.workdir={tmp_path / 'ws'}", "--set", f"export.llama_cpp_dir={converter_checkout}"]
    r = CliRunner().invoke(cli(), args)
    assert r.exit_code == 1, r.output
    assert ("llama.cpp's converter failed on arcee: NotImplementedError: BPE pre-tokenizer was not recognized"
            in r.output), r.output
    assert "hash" in r.output  # the hint says why a hand-made tokenizer is refused
    assert "Traceback" not in r.output and "chkhsh" not in r.output and len(r.output.splitlines()) <= 4, r.output
    assert not list((tmp_path / "ws").rglob("*.gguf"))
    monkeypatch.setenv("LLMFORGE_DEBUG", "1")
    r = CliRunner().invoke(cli(), args)
    assert isinstance(r.exception, LlmforgeError)
    assert "Traceback" in str(r.exception) and "chkhsh" in str(r.exception)  # the converter's whole output


OLMOE_CONFIG = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "rms_norm_eps": 1e-6}


def test_export_says_which_converter_runs_from_where_before_anything_is_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "olmoe"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(OLMOE_CONFIG))
    ws = f"project.workdir={tmp_path / 'ws'}"
    r = CliRunner().invoke(cli(), ["export", "gguf", str(model), "--quant", "f16", "--dry-run", "--set", ws,
                                   "--set", "export.converter=llama.cpp"])
    assert r.exit_code == 0, r.output
    out = r.output.replace("\n", "")  # rich wraps at the test terminal's width
    assert "olmoe: not converted natively; using llama.cpp's converter from the llama-cpp-python" in out
    assert "(downloaded first)" in out and "would write olmoe-f16.gguf" in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ws" / "export").exists()  # a dry run fetches nothing
    r = CliRunner().invoke(cli(), ["export", "gguf", str(model), "--dry-run", "--set", ws])
    out = r.output.replace("\n", "")
    assert r.exit_code == 2 and "olmoe: not converted natively" in out and "not cached" in out, out
    cached = tmp_path / "cache" / "llmforge" / "llama.cpp" / "9.9.9"
    cached.mkdir(parents=True)
    (cached / "convert_hf_to_gguf.py").write_text("# stand-in\n")
    r = CliRunner().invoke(cli(), ["export", "gguf", str(model), "--dry-run", "--json", "--set", ws])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["converter"] == "llama.cpp" and plan["converter_note"] == (
        f"olmoe: not converted natively; using llama.cpp's converter from {cached} "
        "(llama-cpp-python 9.9.9 source, cached)")


def test_fallback_without_torch_names_what_to_install(tmp_path):
    """A 'gguf'-only install has sentencepiece but not torch/transformers: the fallback says so before fetching."""
    model = tmp_path / "olmoe"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(OLMOE_CONFIG))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")},
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run_cli("export", "gguf", str(model), "--dry-run", "--set", f"project.workdir={tmp_path / 'ws'}",
                     "--set", "export.converter=llama.cpp", extras=("gguf",), env=env)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "llama.cpp's converter needs torch, transformers (not installed)" in result.stderr, result.stderr
    assert "sentencepiece" not in result.stderr and "llmforge-cli[train]" in result.stderr
    assert "Traceback" not in result.stderr
