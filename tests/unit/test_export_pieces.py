"""Pure pieces of the exporter: quant parsing, tensor names, pre-tokenizer choice, safetensors header checks.
No torch here (tests/unit must stay light)."""

from __future__ import annotations

import json
import struct

import pytest

from llmforge.errors import InputError, UsageError
from llmforge.export import gguf_vocab, safetensors_stream
from llmforge.export.quant_types import QUANT_TYPES, gguf_file_name, needs_llama_cpp, parse_quants


def test_parse_quants_accepts_commas_case_and_dashes_and_keeps_order():
    assert [q.name for q in parse_quants("F16, q4_K_M,q8-0,f16")] == ["f16", "q4_k_m", "q8_0"]
    assert [q.name for q in parse_quants(["f16,q6_k", "bf16"])] == ["f16", "q6_k", "bf16"]


def test_unknown_or_empty_quant_is_a_usage_error_listing_choices():
    with pytest.raises(UsageError) as err:
        parse_quants("q4_k_x")
    assert "q4_k_m" in err.value.hint
    with pytest.raises(UsageError):
        parse_quants(" , ")


def test_which_types_need_llama_cpp():
    assert {q for q in QUANT_TYPES if needs_llama_cpp(QUANT_TYPES[q])} == {
        "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k"}  # fmt: skip
    assert {q for q, t in QUANT_TYPES.items() if t.strict} == {"f32", "f16"}
    assert gguf_file_name("my-run", QUANT_TYPES["q4_k_m"]) == "my-run-q4_k_m.gguf"


def test_hf_tensor_names_map_to_llama_cpp_names():
    gguf = pytest.importorskip("gguf")
    for arch in (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2, gguf.MODEL_ARCH.QWEN3):
        m = gguf.get_tensor_name_map(arch, 2)
        assert m.get_name("model.embed_tokens.weight", try_suffixes=(".weight",)) == "token_embd.weight"
        assert m.get_name("lm_head.weight", try_suffixes=(".weight",)) == "output.weight"
        assert m.get_name("model.norm.weight", try_suffixes=(".weight",)) == "output_norm.weight"
        assert m.get_name("model.layers.1.self_attn.q_proj.weight", try_suffixes=(".weight",)) == "blk.1.attn_q.weight"
        assert m.get_name("model.layers.0.mlp.down_proj.weight", try_suffixes=(".weight",)) == "blk.0.ffn_down.weight"
    qwen3 = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 2)
    assert qwen3.get_name("model.layers.0.self_attn.q_norm.weight", try_suffixes=(".weight",)) == "blk.0.attn_q_norm.weight"


def test_permutation_interleaves_the_two_rotary_halves_of_each_head():
    np = pytest.importorskip("numpy")
    from llmforge.export.gguf_convert import permute_qk

    # 2 heads of dim 4: HF rows [a0 a1 b0 b1] per head (halves) -> llama.cpp [a0 b0 a1 b1] (pairs)
    w = np.arange(8 * 3).reshape(8, 3)
    p = permute_qk(w, 2)
    assert [r[0] // 3 for r in p] == [0, 2, 1, 3, 4, 6, 5, 7]
    assert np.array_equal(permute_qk(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])  # biases too


def _byte_level(regex=None, use_regex=True, prefix=False):
    bl = {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True, "use_regex": use_regex}
    if regex is None:
        return {"pre_tokenizer": bl}
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, bl]}}


def test_pre_tokenizer_is_chosen_by_the_hf_regex():
    assert gguf_vocab.pre_tokenizer_name(_byte_level()) == "gpt-2"
    llama3 = next(r for r, n in gguf_vocab._SPLIT_REGEXES.items() if n == "llama-bpe")
    qwen2 = next(r for r, n in gguf_vocab._SPLIT_REGEXES.items() if n == "qwen2")
    assert gguf_vocab.pre_tokenizer_name(_byte_level(llama3, use_regex=False)) == "llama-bpe"
    assert gguf_vocab.pre_tokenizer_name(_byte_level(qwen2, use_regex=False)) == "qwen2"
    assert "\\p{N}{1,3}" in llama3 and "\\p{N}{1,3}" not in qwen2  # the digit-grouping difference


def test_unknown_pre_tokenizer_fails_instead_of_guessing():
    with pytest.raises(UsageError, match="split regex"):
        gguf_vocab.pre_tokenizer_name(_byte_level(r"\w+|\s+", use_regex=False))
    with pytest.raises(UsageError, match="add_prefix_space"):
        gguf_vocab.pre_tokenizer_name(_byte_level(prefix=True))


def _safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_safetensors_header_is_checked_before_reading(tmp_path):
    good = tmp_path / "good.safetensors"
    _safetensors(good, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16)
    (entry,) = safetensors_stream.read_header(good)
    assert entry.shape == (2, 2) and entry.nbytes == 16
    short = tmp_path / "short.safetensors"
    _safetensors(short, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(InputError, match="truncated: tensor w"):
        safetensors_stream.read_header(short)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="corrupt"):
        safetensors_stream.read_header(garbage)
    wrong = tmp_path / "wrong.safetensors"
    _safetensors(wrong, {"w": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(InputError, match="does not match its shape"):
        safetensors_stream.read_header(wrong)


def test_bf16_is_widened_exactly_without_torch(tmp_path):
    np = pytest.importorskip("numpy")
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()  # these values are exact in bf16
    path = tmp_path / "bf.safetensors"
    _safetensors(path, {"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bf16)
    (entry,) = safetensors_stream.read_header(path)
    assert np.array_equal(safetensors_stream.load(entry), values)


NOT_RECOGNIZED = """INFO:hf-to-gguf:Loading model: mixtral
WARNING:hf-to-gguf:**************************************************************************************
WARNING:hf-to-gguf:** chkhsh:  0f1a2b
Traceback (most recent call last):
  File "/cache/convert_hf_to_gguf.py", line 300, in <module>
    main()
  File "/cache/conversion/base.py", line 1953, in get_vocab_base_pre
    raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()
"""
KEY_ERROR = """Traceback (most recent call last):
  File "/cache/conversion/gptneox.py", line 30, in set_gguf_parameters
    int(self.hparams["rotary_pct"] * (self.hparams["hidden_size"] // self.hparams["num_attention_heads"])),
        ~~~~~~~~~~~~^^^^^^^^^^^^^^
KeyError: 'rotary_pct'
"""


def test_the_converter_failure_is_its_exception_line_or_its_error_log_never_a_frame():
    from llmforge.export.llama_cpp_converter import failure_hint, last_error_line

    assert last_error_line(NOT_RECOGNIZED) == (
        "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
    assert last_error_line(KEY_ERROR) == "KeyError: 'rotary_pct'"
    assert last_error_line("INFO:hf-to-gguf:Loading model: x\nERROR:hf-to-gguf:Model FooForCausalLM is not supported\n"
                           "Writing:   0%|  | 0.00/1.00 [00:00<?, ?byte/s]\n") == "Model FooForCausalLM is not supported"
    assert "hash" in failure_hint(last_error_line(NOT_RECOGNIZED), ["python", "convert_hf_to_gguf.py", "m"])


def test_converter_architectures_are_read_from_its_source_without_importing_it(tmp_path):
    from llmforge.export.llama_cpp_converter import supported_architectures

    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "__init__.py").write_text(
        'import torch\nTEXT_MODEL_MAP: dict[str, str] = {\n    "GPTNeoXForCausalLM": "gptneox",\n'
        '    "MixtralForCausalLM": "llama",\n}\n')
    (tmp_path / "conversion" / "falcon.py").write_text('@ModelBase.register("FalconForCausalLM", "RWForCausalLM")\n')
    (tmp_path / "convert_hf_to_gguf.py").write_text("import torch\n")
    assert supported_architectures(tmp_path) == ["FalconForCausalLM", "GPTNeoXForCausalLM", "MixtralForCausalLM",
                                                 "RWForCausalLM"]


FAMILY_BASE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
               "rms_norm_eps": 1e-6, "head_dim": 64}


@pytest.mark.parametrize("arch,config,ok", [
    ("Gemma2ForCausalLM", {"query_pre_attn_scalar": 64, "attn_logit_softcapping": 50.0,
                           "final_logit_softcapping": 30.0}, True),
    # llama.cpp hard-codes the query scale 1/sqrt(head_dim) (27B: 1/sqrt(hidden/heads)) and reads no key for it
    ("Gemma2ForCausalLM", {"query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
                           "final_logit_softcapping": 30.0}, False),
    ("Gemma2ForCausalLM", {"query_pre_attn_scalar": 64, "attn_logit_softcapping": None,
                           "final_logit_softcapping": 30.0}, False),
    ("Gemma2ForCausalLM", {"query_pre_attn_scalar": 64, "attn_logit_softcapping": 50.0}, False),
    ("Gemma3ForCausalLM", {"query_pre_attn_scalar": 64}, True),
    ("Gemma3ForCausalLM", {"query_pre_attn_scalar": 64, "attn_logit_softcapping": 50.0}, False),
    ("SmolLM3ForCausalLM", {"no_rope_layers": [1, 1, 1, 0]}, True),
    ("SmolLM3ForCausalLM", {"no_rope_layers": [1, 0, 1, 0]}, False),  # llama.cpp: every 4th layer, fixed
    ("Qwen2MoeForCausalLM", {"norm_topk_prob": False, "mlp_only_layers": []}, True),
    ("Qwen2MoeForCausalLM", {"norm_topk_prob": True}, False),
    ("Qwen2MoeForCausalLM", {"mlp_only_layers": [0]}, False),
])  # fmt: skip
def test_family_settings_llama_cpp_cannot_reproduce_are_refused(arch, config, ok, tmp_path):
    from llmforge.export import gguf_convert

    full = {**FAMILY_BASE, **config, "architectures": [arch]}
    if ok:
        assert gguf_convert.arch_spec(full, tmp_path) is gguf_convert.ARCHITECTURES[arch]
    else:
        with pytest.raises(UsageError) as err:
            gguf_convert.arch_spec(full, tmp_path)
        assert "llama.cpp" in str(err.value) and "export.converter" in err.value.hint


def test_native_architectures_name_every_family_the_converter_writes():
    from llmforge.export import gguf_convert

    assert gguf_convert.NATIVE_ARCHITECTURES == set(gguf_convert.ARCHITECTURES)
    assert {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "SmolLM3ForCausalLM", "GraniteForCausalLM",
            "Olmo2ForCausalLM", "MixtralForCausalLM", "Qwen2MoeForCausalLM"} <= gguf_convert.NATIVE_ARCHITECTURES


def test_longrope_attention_factor_follows_the_context_ratio():
    from llmforge.export import gguf_convert

    config = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "longrope"}}
    assert gguf_convert.longrope_attention_factor(config) == pytest.approx(1.1902380714238083)  # Phi-3.5-mini
    assert gguf_convert.longrope_attention_factor({**config, "max_position_embeddings": 4096}) == 1.0
