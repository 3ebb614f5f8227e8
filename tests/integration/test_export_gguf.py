"""GGUF export on real tiny models: conversion, llama.cpp loading, tokenization and logits against HF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmforge.errors import InputError, LlmforgeError, MissingExtraError, UsageError
from llmforge.export import gguf_convert, gguf_export
from llmforge.export.quant_types import QUANT_TYPES, parse_quants

pytest.importorskip("gguf")
needs_llama_cpp = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """No llama.cpp converter cached by an earlier real run may change what 'auto' does here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

# llama.cpp refuses to load without these (facts.md), or silently computes the wrong thing without them.
REQUIRED_KEYS = [
    "general.architecture", "{arch}.context_length", "{arch}.embedding_length", "{arch}.block_count",
    "{arch}.feed_forward_length", "{arch}.attention.head_count", "{arch}.attention.head_count_kv",
    "{arch}.attention.layer_norm_rms_epsilon", "{arch}.rope.freq_base", "tokenizer.ggml.model",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
]  # fmt: skip


def _sharpen(src: Path, dst: Path) -> Path:
    """A copy with every matrix scaled 10x. At the fixtures' init (std 0.02) attention is nearly uniform, so a
    wrong rope layout barely moves the logits; sharp weights make position-dependent mistakes visible."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    save_file({k: v * 10 if v.ndim == 2 else v for k, v in weights.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def sharp_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return _sharpen(tiny_llama_dir, tmp_path_factory.mktemp("sharp") / "sharp-llama")


@pytest.fixture(scope="module")
def sharp_qwen2_dir(tiny_qwen2_dir, tmp_path_factory) -> Path:
    return _sharpen(tiny_qwen2_dir, tmp_path_factory.mktemp("sharp") / "sharp-qwen2")


def produce(model_dir: Path, out: Path, quants: str, **kw) -> dict:
    return gguf_export.produce(model_dir, out, "m", parse_quants(quants), **kw)


def by_quant(result: dict) -> dict:
    return {f["quant"]: f for f in result["files"]}


def read_gguf(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


def field_value(reader, key: str):
    field = reader.fields[key]
    return field.contents()


@needs_llama_cpp
def test_tiny_llama_converts_and_agrees_with_hf(tiny_llama_dir, tmp_path):
    files = by_quant(produce(tiny_llama_dir, tmp_path, "f32,f16"))
    for q in ("f32", "f16"):
        assert files[q]["verified"], files[q].get("problems")
        assert files[q]["tokenization"]["ok"] and files[q]["tokenization"]["texts"] >= 9
    # f32 must be the same model to float rounding; f16 within half-precision error
    assert files["f32"]["logits"]["max_abs_diff"] < 1e-3
    assert files["f32"]["logits"]["top1_agreement"] == 1.0
    assert files["f16"]["logits"]["top1_agreement_decisive"] >= 0.99
    assert (tmp_path / "m-f16.gguf").is_file() and (tmp_path / "m-f32.gguf").is_file()


@needs_llama_cpp
def test_tiny_qwen2_tied_embeddings_convert_and_agree(tiny_qwen2_dir, tmp_path):
    config = json.loads((tiny_qwen2_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    result = produce(tiny_qwen2_dir, tmp_path, "f32,f16")
    files = by_quant(result)
    assert files["f16"]["verified"] and files["f32"]["verified"]
    assert files["f32"]["logits"]["max_abs_diff"] < 1e-3
    assert result["conversion"]["tied_embeddings"] is True
    names = {t.name for t in read_gguf(tmp_path / "m-f16.gguf").tensors}
    assert "output.weight" not in names and "token_embd.weight" in names  # llama.cpp reuses token_embd


@pytest.mark.parametrize("fixture,arch,theta", [("tiny_llama_dir", "llama", 50000.0),
                                                 ("tiny_qwen2_dir", "qwen2", 1_000_000.0)])
def test_every_required_metadata_key_is_written(fixture, arch, theta, request, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    produce(model_dir, tmp_path, "f16", verify_files=False)
    reader = read_gguf(tmp_path / "m-f16.gguf")
    for key in REQUIRED_KEYS:
        assert key.format(arch=arch) in reader.fields, key
    assert field_value(reader, "general.architecture") == arch
    assert field_value(reader, f"{arch}.rope.freq_base") == pytest.approx(theta)
    assert field_value(reader, "tokenizer.ggml.pre") == "gpt-2"  # the fixture's ByteLevel regex
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    assert field_value(reader, "tokenizer.ggml.add_bos_token") is False  # the fixture has no bos token
    eos = next(a["id"] for a in tok["added_tokens"] if a["content"] == "<|im_end|>")
    assert field_value(reader, "tokenizer.ggml.eos_token_id") == eos
    assert field_value(reader, "tokenizer.chat_template") == (model_dir / "chat_template.jinja").read_text()
    assert len(field_value(reader, "tokenizer.ggml.tokens")) == json.loads(
        (model_dir / "config.json").read_text())["vocab_size"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "F16"


def test_llama_q_and_k_are_permuted_for_llama_cpp_and_qwen2_is_not(tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file

    for model_dir, permuted in ((tiny_llama_dir, True), (tiny_qwen2_dir, False)):
        out = tmp_path / model_dir.name
        produce(model_dir, out, "f32", verify_files=False)
        hf = load_file(str(model_dir / "model.safetensors"))
        config = json.loads((model_dir / "config.json").read_text())
        tensors = {t.name: np.asarray(t.data) for t in read_gguf(out / "m-f32.gguf").tensors}
        q = hf["model.layers.0.self_attn.q_proj.weight"]
        k = hf["model.layers.0.self_attn.k_proj.weight"]
        want_q = gguf_convert.permute_qk(q, config["num_attention_heads"]) if permuted else q
        want_k = gguf_convert.permute_qk(k, config["num_key_value_heads"]) if permuted else k
        assert np.array_equal(tensors["blk.0.attn_q.weight"], want_q)
        assert np.array_equal(tensors["blk.0.attn_k.weight"], want_k)
        assert permuted == (not np.array_equal(tensors["blk.0.attn_q.weight"], q))
        assert np.array_equal(tensors["blk.0.attn_v.weight"], hf["model.layers.0.self_attn.v_proj.weight"])


@needs_llama_cpp
def test_without_the_qk_permutation_llama_cpp_disagrees(sharp_llama_dir, tmp_path, monkeypatch):
    good = by_quant(produce(sharp_llama_dir, tmp_path / "good", "f32"))["f32"]["logits"]
    assert good["top1_agreement"] == 1.0
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(permute=False))
    result = produce(sharp_llama_dir, tmp_path / "bad", "f32")
    bad = by_quant(result)["f32"]
    assert not bad["verified"] and result["failures"]
    assert bad["logits"]["max_abs_diff"] > 100 * good["max_abs_diff"]
    assert bad["logits"]["top1_agreement"] < 0.9


@needs_llama_cpp
def test_without_rope_theta_llama_cpp_disagrees(sharp_qwen2_dir, tmp_path, monkeypatch):
    good = by_quant(produce(sharp_qwen2_dir, tmp_path / "good", "f32"))["f32"]["logits"]
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(rope_theta=False))
    bad = by_quant(produce(sharp_qwen2_dir, tmp_path / "bad", "f32"))["f32"]["logits"]
    # theta 1e6 vs llama.cpp's fallback 10000: positions beyond the first few rotate differently
    assert bad["max_abs_diff"] > 20 * max(good["max_abs_diff"], 1e-3)
    assert bad["top1_agreement"] < good["top1_agreement"]


@needs_llama_cpp
def test_numpy_block_quants_are_written_by_our_converter(tiny_qwen2_dir, tmp_path):
    result = produce(tiny_qwen2_dir, tmp_path, "q8_0,q5_0,q4_0", backend="numpy")
    files = by_quant(result)
    for q, ggml in (("q8_0", "Q8_0"), ("q5_0", "Q5_0"), ("q4_0", "Q4_0")):
        assert files[q]["made_by"] == "native"
        assert files[q]["tokenization"]["ok"]
        types = {t.name: t.tensor_type.name for t in read_gguf(tmp_path / f"m-{q}.gguf").tensors}
        assert types["blk.0.ffn_up.weight"] == ggml and types["blk.0.ffn_norm.weight"] == "F32"
    assert files["q8_0"]["logits"]["top1_agreement_decisive"] >= 0.9
    assert files["q8_0"]["bytes"] < files["q5_0"]["bytes"] * 2


@needs_llama_cpp
def test_k_quants_really_apply_on_a_256_wide_model(wide_llama_dir, tmp_path):
    result = produce(wide_llama_dir, tmp_path, "q8_0,q6_k,q4_k_m,q2_k")
    files = by_quant(result)
    assert not (tmp_path / ".m-f16.for-quantize.gguf").exists()  # the temporary f16 is gone
    expect = {"q6_k": "Q6_K", "q4_k_m": "Q4_K", "q2_k": "Q2_K", "q8_0": "Q8_0"}
    for q, ggml in expect.items():
        assert files[q]["made_by"] == "llama.cpp quantize" and files[q]["tokenization"]["ok"]
        types = {t.name: t.tensor_type.name for t in read_gguf(tmp_path / f"m-{q}.gguf").tensors}
        assert types["blk.0.attn_q.weight"] == ggml, (q, types["blk.0.attn_q.weight"])
    sizes = [files[q]["bytes"] for q in ("q8_0", "q6_k", "q4_k_m", "q2_k")]
    assert sizes == sorted(sizes, reverse=True)
    errors = [files[q]["logits"]["mean_abs_diff"] for q in ("q8_0", "q6_k", "q4_k_m", "q2_k")]
    assert errors == sorted(errors)  # fewer bits, larger error: each file really is its type


def test_k_quants_without_llama_cpp_name_the_extra(tiny_llama_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(MissingExtraError) as err:
        produce(tiny_llama_dir, tmp_path, "f16,q4_k_m")
    assert err.value.extra == "llamacpp"
    result = produce(tiny_llama_dir, tmp_path, "f16,q8_0")  # numpy types still work, unverified
    assert {f["quant"]: f["made_by"] for f in result["files"]} == {"f16": "native", "q8_0": "native"}
    assert not result["verified"] and "not installed" in result["files"][0]["verification"]


def test_missing_config_json_is_a_clear_error(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "config.json").unlink()
    with pytest.raises(InputError, match="no config.json"):
        produce(broken, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_safetensors_is_a_clear_error(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        produce(broken, tmp_path / "out", "f16")
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_unsupported_architecture_lists_what_is_supported(tiny_llama_dir, tmp_path):
    other = tmp_path / "gemma"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["GemmaForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError) as err:
        produce(other, tmp_path / "out", "f16")
    assert "LlamaForCausalLM" in str(err.value) and "Qwen2ForCausalLM" in str(err.value)
    assert "llama_cpp_dir" in err.value.hint


def test_an_interrupted_export_leaves_no_file(tiny_llama_dir, tmp_path, monkeypatch):
    def interrupt(i):
        if i == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(after_tensor=interrupt))
    out = tmp_path / "out.gguf"
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.convert(tiny_llama_dir, out, QUANT_TYPES["f16"])
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temp file


def test_existing_output_needs_force(tiny_llama_dir, tmp_path):
    produce(tiny_llama_dir, tmp_path, "f16", verify_files=False)
    with pytest.raises(UsageError, match="already exists"):
        produce(tiny_llama_dir, tmp_path, "f16", verify_files=False)
    produce(tiny_llama_dir, tmp_path, "f16", verify_files=False, force=True)


@needs_llama_cpp
def test_a_failed_verification_is_exit_1_and_marked_in_the_manifest(sharp_llama_dir, tmp_path, monkeypatch):
    from llmforge.config.export import ExportConfig
    from llmforge.config.model import ModelConfig
    from llmforge.export import export_gguf
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(permute=False))
    with pytest.raises(LlmforgeError) as err:
        export_gguf(ModelConfig(), ExportConfig(quant=["f16"]), ws, str(sharp_llama_dir))
    assert err.value.exit_code == 1 and "agreement" in str(err.value)
    run = sharp_llama_dir.name
    manifest = json.loads(ws.export_manifest(run).read_text())
    assert manifest["verified"] is False and manifest["files"][0]["verified"] is False
    assert (ws.export_dir(run) / f"{run}-f16.gguf").is_file()  # kept, marked unverified


@needs_llama_cpp
def test_a_wrong_pre_tokenizer_is_caught_by_the_tokenization_check(tiny_llama_dir, tmp_path, monkeypatch):
    # llama-bpe groups digits in threes where the fixture's gpt-2 regex keeps a digit run whole
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(pre_tokenizer="llama-bpe"))
    result = produce(tiny_llama_dir, tmp_path, "f16")
    f = result["files"][0]
    assert not f["verified"] and not f["tokenization"]["ok"]
    assert any("1234567890" in m["text"] for m in f["tokenization"]["mismatches"])
    assert "tokenizes" in result["failures"][0]


@needs_llama_cpp
def test_k_quant_fallbacks_are_counted_in_the_manifest(tiny_llama_dir, wide_llama_dir, tmp_path):
    narrow = by_quant(produce(tiny_llama_dir, tmp_path / "narrow", "q4_k_m", verify_files=False))["q4_k_m"]
    wide = by_quant(produce(wide_llama_dir, tmp_path / "wide", "q4_k_m", verify_files=False))["q4_k_m"]
    assert "Q4_K" not in narrow["tensor_types"]  # 64-wide rows cannot hold a 256-block: all fell back
    assert wide["tensor_types"].get("Q4_K", 0) >= 8 and wide["tensor_types"]["F32"] == 5


def test_later_exports_of_the_same_model_add_to_the_manifest(tiny_llama_dir, tmp_path):
    from llmforge.config.export import ExportConfig
    from llmforge.config.model import ModelConfig
    from llmforge.export import export_gguf
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    export_gguf(ModelConfig(), ExportConfig(quant=["f16"], verify=False), ws, str(tiny_llama_dir))
    body = export_gguf(ModelConfig(), ExportConfig(quant=["q8_0"], verify=False), ws, str(tiny_llama_dir))
    assert [f["quant"] for f in body.files] == ["f16", "q8_0"]
    assert json.loads(ws.export_manifest(tiny_llama_dir.name).read_text())["files"] == body.files
    assert ws.exports() == [tiny_llama_dir.name]


def test_a_model_without_lm_head_must_say_it_is_tied(tiny_qwen2_dir, tmp_path):
    from safetensors.numpy import load_file

    assert "lm_head.weight" not in load_file(str(tiny_qwen2_dir / "model.safetensors"))  # tied: saved once
    untied = tmp_path / "untied"
    shutil.copytree(tiny_qwen2_dir, untied)
    config = json.loads((untied / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (untied / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="no lm_head.weight and tie_word_embeddings is false"):
        produce(untied, tmp_path / "out", "f16")
