"""The shared fixtures themselves: the tokenizer round-trips, templates render with generation markers, models load."""

from __future__ import annotations

import torch
from tiny_models import load_tokenizer
from transformers import AutoModelForCausalLM


def test_tokenizer_round_trips_text_and_special_tokens(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    text = "Zürich 42 café 🙂\n    def f(x): return {x}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == tok.convert_tokens_to_ids(
        "<|im_start|>"
    )


def test_chat_template_marks_assistant_tokens_and_end_of_turn(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "hello there<|im_end|>"
    assert trained[-1] == tok.eos_token_id


def test_tiny_models_load_and_differ_where_designed(tiny_llama_dir, tiny_qwen2_dir):
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    qwen = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert llama.config.model_type == "llama" and qwen.config.model_type == "qwen2"
    assert qwen.config.tie_word_embeddings and not llama.config.tie_word_embeddings
    assert llama.config.rope_parameters["rope_theta"] == 50000.0
    with torch.no_grad():
        logits = llama(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, llama.config.vocab_size)
    assert list(tiny_llama_dir.glob("*.safetensors"))
