"""Architectures and rope variants beyond the shared fixtures: Qwen3 (q/k norms, explicit head_dim), Mistral,
Llama 3.1 rope scaling (rope_freqs tensor), linear rope scaling. Each is built tiny here and verified in llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmforge.export import gguf_convert, gguf_export
from llmforge.export.quant_types import parse_quants

pytestmark = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")


def build(out: Path, tokenizer_dir: Path, kind: str) -> Path:
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    if kind == "qwen3":
        config = transformers.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        cls = transformers.Qwen3ForCausalLM
    elif kind == "mistral":
        config = transformers.MistralConfig(**common, sliding_window=None,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        cls = transformers.MistralForCausalLM
    elif kind == "llama3-rope":
        config = transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        cls = transformers.LlamaForCausalLM
    elif kind == "linear-rope":
        config = transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})
        cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = cls(config)
    with torch.no_grad():  # sharp weights: position handling (rope) must matter for the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    model.save_pretrained(str(out))
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


@pytest.mark.parametrize("kind", ["qwen3", "mistral", "llama3-rope", "linear-rope"])
def test_architecture_converts_and_agrees_with_hf(kind, tiny_tokenizer_dir, tmp_path):
    import gguf

    model_dir = build(tmp_path / kind, tiny_tokenizer_dir, kind)
    result = gguf_export.produce(model_dir, tmp_path / "out", "m", parse_quants("f32,f16"))
    files = {f["quant"]: f for f in result["files"]}
    assert files["f32"]["verified"] and files["f16"]["verified"], [f.get("problems") for f in files.values()]
    assert files["f32"]["logits"]["top1_agreement"] == 1.0
    assert files["f32"]["logits"]["max_abs_diff"] < 1e-2
    reader = gguf.GGUFReader(str(tmp_path / "out" / "m-f32.gguf"))
    names = {t.name for t in reader.tensors}
    if kind == "qwen3":
        assert reader.fields["general.architecture"].contents() == "qwen3"
        assert "blk.0.attn_q_norm.weight" in names and reader.fields["qwen3.attention.key_length"].contents() == 32
    if kind == "llama3-rope":
        assert "rope_freqs.weight" in names
    if kind == "linear-rope":
        assert reader.fields["llama.rope.scaling.type"].contents() == "linear"


def build_sentencepiece_style_tokenizer(out: Path) -> Path:
    """A Llama-2/Mistral style tokenizer.json: BPE with byte fallback, <unk> <s> </s>, the 256 <0xXX> byte tokens,
    a Prepend("▁") + Replace(" ", "▁") normalizer and a post-processor that adds <s>."""
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (Path(__file__).resolve().parents[1] / "fixtures" / "corpus.txt").read_text().splitlines()
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581"), behavior="merged_with_next")  # train within words
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, show_progress=False,
                                  special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(corpus, trainer)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    data = json.loads(tok.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] in specials]  # bytes are vocab entries
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    return out


def test_sentencepiece_style_tokenizer_converts_to_llama_vocab(tmp_path):
    import sys

    import gguf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_model

    tok_dir = build_sentencepiece_style_tokenizer(tmp_path / "tok")
    model_dir = build_model(tmp_path / "llama2", tok_dir, "llama")
    result = gguf_export.produce(model_dir, tmp_path / "out", "m", parse_quants("f16"))
    f = result["files"][0]
    assert f["tokenization"]["ok"], f["tokenization"]["mismatches"][:2]
    assert f["verified"] and result["conversion"]["tokenizer_model"] == "llama"
    reader = gguf.GGUFReader(str(tmp_path / "out" / "m-f16.gguf"))
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True  # the post-processor adds <s>
    assert reader.fields["tokenizer.ggml.add_space_prefix"].contents() is True
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[0] == 2 and types[1] == 3 and types[3 + 0xE6] == 6  # unknown, control, byte


def build_split_regex_tokenizer(out: Path, regex: str) -> Path:
    """Byte-level BPE whose pre-tokenizer is Split(regex) + ByteLevel(use_regex=False), as Llama 3 and Qwen2 ship."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = (Path(__file__).resolve().parents[1] / "fixtures" / "corpus.txt").read_text().splitlines()
    tok = Tokenizer(models.BPE(ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_split_regex_pre_tokenizers_tokenize_like_hf_in_llama_cpp(pre, tmp_path, monkeypatch):
    """Llama 3's and Qwen2's pre-tokenizer regexes map to llama.cpp's llama-bpe and qwen2: proven on probes with
    digit runs, contractions, whitespace runs and unicode, where those regexes differ from each other and gpt-2."""
    import sys

    from llmforge.export import gguf_vocab

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_model

    regex = next(r for r, name in gguf_vocab._SPLIT_REGEXES.items() if name == pre)
    tok_dir = build_split_regex_tokenizer(tmp_path / "tok", regex)
    model_dir = build_model(tmp_path / "m", tok_dir, "qwen2" if pre == "qwen2" else "llama")
    result = gguf_export.produce(model_dir, tmp_path / "out", "m", parse_quants("f16"))
    f = result["files"][0]
    assert result["conversion"]["tokenizer_pre"] == pre
    assert f["tokenization"]["ok"], f["tokenization"]["mismatches"][:2]
    assert f["verified"]
    if pre == "llama-bpe":
        # qwen2's regex differs only in splitting digits one by one: a llama-bpe vocab has multi-digit tokens, so
        # the probes expose the wrong choice (the reverse cannot show: a qwen2 vocab never learns digit groups)
        monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(pre_tokenizer="qwen2"))
        wrong = gguf_export.produce(model_dir, tmp_path / "wrong", "m", parse_quants("f16"))
        assert not wrong["files"][0]["tokenization"]["ok"]
