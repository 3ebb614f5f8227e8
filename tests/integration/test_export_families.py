"""GGUF export of the families people fine-tune (Gemma 2/3, Phi-3, SmolLM3, Granite, OLMo 2), each built tiny here
with transformers' own config class and a tokenizer of the kind the family ships, then checked in llama.cpp:
tokenization identical to HF, logits agreeing (f32, f16, q8_0, a K-quant), a LoRA adapter as GGUF, and tensors
byte-identical to llama.cpp's own converter where that converter can be fetched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.export import gguf_convert, gguf_export
from llmforge.export.quant_types import parse_quants

pytestmark = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus.txt"
FAMILIES = ["gemma2", "gemma3", "phi3", "phi3-longrope", "smollm3", "granite", "olmo2", "mixtral", "qwen2moe"]
SPM_FAMILIES = ("gemma2", "gemma3", "phi3", "phi3-longrope", "mixtral")  # the rest ship byte-level BPE


def tiered(fast: tuple[str, ...]) -> list:
    """FAMILIES as test parameters, those not in `fast` marked slow: every family converts and agrees with HF in the
    default tier; the costlier checks there take a representative few, and `make test-all` takes every family."""
    return [f if f in fast else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
# 256 wide with 512-wide MLPs: every matrix row is a whole number of K-quant blocks, so q4_k_m really applies
SIZE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                  "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def sentencepiece_style_tokenizer(out: Path, kind: str) -> Path:
    """A tokenizer.json of the SentencePiece kind (BPE with byte fallback and the 256 <0xXX> tokens, spaces as ▁):
    kind "gemma" has Gemma's ids (<pad> <eos> <bos> <unk>) and no prefix space; kind "llama" is Llama 2 / Phi-3's
    (<unk> <s> </s>, a ▁ prepended to the text). Both add the bos token, and carry chat special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "gemma":
        specials, (pad, eos, bos, unk) = ["<pad>", "<eos>", "<bos>", "<unk>"], ("<pad>", "<eos>", "<bos>", "<unk>")
        extra = ["<start_of_turn>", "<end_of_turn>"]
        norm = [normalizers.Replace(" ", "\u2581")]
    else:
        specials, (pad, eos, bos, unk) = ["<unk>", "<s>", "</s>"], (None, "<|endoftext|>", "<s>", "<unk>")
        extra = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
        norm = [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=unk, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581"), behavior="merged_with_next")  # train within words
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False,
                                  special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(CORPUS.read_text().splitlines(), trainer)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if kind == "llama" else []))
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, specials.index(bos))])
    data = json.loads(tok.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] in specials]  # bytes are vocab entries
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=bos,
                                   eos_token=eos, unk_token=unk, pad_token=pad)
    fast.add_special_tokens({"additional_special_tokens": extra})
    if kind == "gemma":
        fast.chat_template = GEMMA_TEMPLATE
    fast.save_pretrained(str(out))
    return out


def byte_level_tokenizer(out: Path, regex: str | None) -> Path:
    """Byte-level BPE with ChatML specials: the GPT-2 pre-tokenizer (regex None, as Granite's) or a Split(regex) +
    ByteLevel pre-tokenizer (Llama 3's regex, as SmolLM3 and OLMo 2 ship)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.read_text().splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.save_pretrained(str(out))
    return out


def build_family(out: Path, family: str, *, seed: int = 0) -> Path:
    """A tiny random model of `family` saved with its tokenizer. Weights are scaled up so that what each family
    does differently (norm offsets, soft-caps, multipliers, rope on some layers only) moves the logits."""
    import torch
    import transformers

    from llmforge.export import gguf_vocab

    llama_bpe = next(r for r, name in gguf_vocab._SPLIT_REGEXES.items() if name == "llama-bpe")
    if family in ("gemma2", "gemma3"):
        sentencepiece_style_tokenizer(out, "gemma")
    elif family in SPM_FAMILIES:
        sentencepiece_style_tokenizer(out, "llama")
    elif family == "qwen2moe":
        byte_level_tokenizer(out, next(r for r, name in gguf_vocab._SPLIT_REGEXES.items() if name == "qwen2"))
    else:
        byte_level_tokenizer(out, None if family == "granite" else llama_bpe)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    if family == "gemma2":
        config = transformers.Gemma2Config(**SIZE, **ids, head_dim=64, query_pre_attn_scalar=64, sliding_window=8,
                                           attn_logit_softcapping=20.0, final_logit_softcapping=5.0)
        cls = transformers.Gemma2ForCausalLM
    elif family == "gemma3":
        config = transformers.Gemma3TextConfig(
            **SIZE, **ids, head_dim=64, query_pre_attn_scalar=64, sliding_window=8, final_logit_softcapping=5.0,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        cls = transformers.Gemma3ForCausalLM
    elif family == "phi3":
        config = transformers.Phi3Config(**SIZE, **ids, original_max_position_embeddings=512)
        cls = transformers.Phi3ForCausalLM
    elif family == "phi3-longrope":
        # Phi-3.5-mini's rope: per-frequency factors, the short ones within the original context. llama.cpp picks by
        # context size (at least 256 here), HF by sequence length: an original context of 512 keeps both on short.
        # Phi-4-mini's partial rotary (0.75 of each head) too: 24 factors for the 48 rotated dimensions
        config = transformers.Phi3Config(**{**SIZE, "max_position_embeddings": 2048}, **ids,
                                         original_max_position_embeddings=512, partial_rotary_factor=0.75,
                                         rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                          "short_factor": [1.0 + 0.1 * i for i in range(24)],
                                                          "long_factor": [2.0 + 0.5 * i for i in range(24)]})
        cls = transformers.Phi3ForCausalLM
    elif family == "smollm3":
        config = transformers.SmolLM3Config(**SIZE, **ids)
        cls = transformers.SmolLM3ForCausalLM
    elif family == "granite":
        config = transformers.GraniteConfig(**SIZE, **ids, embedding_multiplier=12.0, residual_multiplier=0.22,
                                            attention_multiplier=0.0625, logits_scaling=4.0)
        cls = transformers.GraniteForCausalLM
    elif family == "olmo2":
        config = transformers.Olmo2Config(**SIZE, **ids)
        cls = transformers.Olmo2ForCausalLM
    elif family == "mixtral":
        config = transformers.MixtralConfig(**SIZE, **ids, num_local_experts=4, num_experts_per_tok=2)
        cls = transformers.MixtralForCausalLM
    elif family == "qwen2moe":
        config = transformers.Qwen2MoeConfig(**SIZE, **ids, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=256, shared_expert_intermediate_size=512)
        cls = transformers.Qwen2MoeForCausalLM
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5)
            elif name.endswith("norm.weight"):  # not all ones (Gemma: not all zeros): a lost norm must show
                p.normal_(float(p.mean()), 0.1)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """No llama.cpp converter cached by an earlier run may change what export.converter 'auto' does here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def family_dir(request, tmp_path_factory):
    """One tiny model per family, built once per module."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_family(tmp_path_factory.mktemp(family) / family, family)
        return built[family]

    return get


def by_quant(result: dict) -> dict:
    return {f["quant"]: f for f in result["files"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_converts_quantizes_and_agrees_with_hf(family, family_dir, tmp_path):
    import gguf

    model_dir = family_dir(family)
    result = gguf_export.produce(model_dir, tmp_path, "m", parse_quants("f32,f16,q8_0,q4_k_m"))
    files = by_quant(result)
    assert result["converter"] == "native"
    for q, f in files.items():
        assert f["tokenization"]["ok"], (q, f["tokenization"]["mismatches"][:1])
        assert f["verified"], (q, f.get("problems"))
    assert files["f32"]["logits"]["top1_agreement"] == 1.0, files["f32"]["logits"]
    assert files["f32"]["logits"]["max_abs_diff"] < 1e-2
    assert files["f16"]["logits"]["top1_agreement_decisive"] >= 0.99
    assert files["q8_0"]["logits"]["top1_agreement_decisive"] >= 0.9
    assert files["q4_k_m"]["tensor_types"].get("Q4_K", 0) > 0  # the K-quant really applied
    # 4-bit rounding of these sharp random weights flips many tokens (measured 0.18-1.0 by family); a broken
    # layout would be at chance (1/600)
    assert files["q4_k_m"]["logits"]["top1_agreement_decisive"] >= 0.1
    assert files["q8_0"]["logits"]["mean_abs_diff"] < files["q4_k_m"]["logits"]["mean_abs_diff"]
    reader = gguf.GGUFReader(str(tmp_path / "m-f16.gguf"))
    arch = reader.fields["general.architecture"].contents()
    assert arch == {"phi3-longrope": "phi3", "mixtral": "llama"}.get(family, family)
    assert reader.fields["tokenizer.ggml.model"].contents() == ("llama" if family in SPM_FAMILIES else "gpt2")


@pytest.mark.parametrize("family,what", [
    ("gemma2", "_norm_offset"), ("gemma2", "_family_keys"), ("gemma3", "_family_keys"),
    ("granite", "_family_keys"), ("smollm3", "_permute"), ("phi3-longrope", "_rope_factors"),
])
def test_without_each_family_fix_llama_cpp_disagrees(family, what, family_dir, tmp_path, monkeypatch):
    """Each conversion step the family needs is load-bearing: leave it out and llama.cpp computes another model
    (soft-capping is monotonic, so a missing cap shows in the logits' values, not in their argmax)."""
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(**{what.lstrip("_"): False}))
    try:
        result = gguf_export.produce(family_dir(family), tmp_path, "m", parse_quants("f32"))
    except ValueError as e:  # llama.cpp refuses a file without a key it requires (Granite's logit_scale)
        assert "Failed to load" in str(e)
        return
    logits = by_quant(result)["f32"]["logits"]
    print("NEG", family, what, logits)
    assert logits["max_abs_diff"] > 0.1, logits


@pytest.mark.parametrize("family", tiered(fast=("gemma2", "phi3")))
def test_family_lora_adapter_as_gguf_matches_hf(family, family_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmforge.config.export import ExportConfig
    from llmforge.config.model import ModelConfig
    from llmforge.export import export_lora_gguf
    from llmforge.workspace import Workspace

    base = family_dir(family)
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    targets = {"phi3": ["qkv_proj", "o_proj", "gate_up_proj"], "phi3-longrope": ["qkv_proj"],  # fused in Phi-3
               "mixtral": attention, "qwen2moe": attention}.get(family, [*attention, "up_proj"])  # MoE: no up_proj
    ws = Workspace(tmp_path / "ws")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(str(ws.adapter_dir("lora-1")))
    (ws.run_dir("lora-1") / "manifest.json").write_text(json.dumps({"base_model": str(base)}))
    entry = export_lora_gguf(ModelConfig(), ExportConfig(), ws, "lora-1").lora_adapters[-1]
    assert entry["verified"], entry.get("logits")
    assert entry["logits"]["top1_agreement"] >= 0.99 and entry["logits"]["max_abs_diff"] < 5e-2


# Runs llama.cpp's converter with its vocabulary step switched off: its BPE path accepts only pre-tokenizers it
# knows by hash and its Gemma/Phi-3 path reads only a SentencePiece tokenizer.model; tiny test tokenizers are
# neither, and the vocabulary is checked against HF anyway. The tensors are what this comparison is about.
_DRIVER = """
import runpy, sys
checkout = sys.argv[1]
sys.path[:0] = [checkout, checkout + "/gguf-py"]
import conversion
original = conversion.get_model_class
def without_vocab(*args, **kwargs):
    cls = original(*args, **kwargs)
    cls.set_vocab = lambda self: None
    return cls
conversion.get_model_class = without_vocab
sys.argv = [checkout + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def llama_cpp_checkout():
    from llmforge.errors import LlmforgeError
    from llmforge.export import llama_cpp_converter

    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece at module level")
    try:
        return llama_cpp_converter.fetch_converter()
    except LlmforgeError as e:
        pytest.skip(f"llama.cpp's converter is not available here: {e}")


@pytest.mark.parametrize("family", tiered(fast=("gemma2", "qwen2moe")))  # SentencePiece + norm offset; MoE on BPE
def test_tensors_are_byte_identical_to_llama_cpp_converter(family, family_dir, llama_cpp_checkout, tmp_path):
    import gguf

    model_dir = family_dir(family)
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    gguf_convert.convert(model_dir, ours, parse_quants("f16")[0])
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(llama_cpp_checkout), str(model_dir), "--outfile",
                           str(theirs), "--outtype", "f16"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    assert a and sorted(a) == sorted(b)
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert list(a[name].shape) == list(b[name].shape), name
        assert a[name].data.tobytes() == b[name].data.tobytes(), name
