"""A model from nothing: a byte-level BPE tokenizer trained on the data (ChatML specials and template), a Llama or
Qwen2 built from `train.scratch` sizes, and raw text packed into blocks for pretraining.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# ChatML with the assistant's content and its end-of-turn token inside the trained ({% generation %}) span, so a
# model fine-tuned from this base learns to stop.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, chat_template: str = CHATML_TEMPLATE):
    """Byte-level BPE (GPT-2 style pre-tokenizer, no BOS) with ChatML special tokens; eos <|im_end|>, pad
    <|endoftext|>. Returns a transformers fast tokenizer (not yet saved)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = chat_template
    return fast


def build_model(
    tokenizer,
    architecture: str = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    rope_theta: float | None = None,
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
    meta: bool = False,
):
    """A freshly initialised Llama or Qwen2 sized for `tokenizer`, with a generation config that stops at eos.
    `meta=True` builds it without memory (for counting parameters in a dry run)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if hidden_size % heads:
        from llmforge.errors import ConfigError

        raise ConfigError(f"train.scratch.hidden_size ({hidden_size}) must be divisible by heads ({heads})")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if rope_theta is not None:
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    if architecture == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=bool(tie_word_embeddings))
        cls = LlamaForCausalLM
    elif architecture == "qwen2":
        tie = True if tie_word_embeddings is None else tie_word_embeddings
        config = Qwen2Config(**common, tie_word_embeddings=tie)
        cls = Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    if meta:
        with torch.device("meta"):
            model = cls(config)
    else:
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return model


def save_base_model(model, tokenizer, out_dir: Path) -> Path:
    """A complete base model folder: config, safetensors, generation_config, tokenizer with its chat template."""
    from llmforge import checkpoints

    checkpoints.save_model(model, out_dir)
    checkpoints.save_tokenizer(tokenizer, out_dir)
    return out_dir


def pack_blocks(tokenizer, texts: list[str], block: int) -> list[list[int]]:
    """Each text followed by eos, concatenated and cut into blocks of `block` tokens (the last partial dropped,
    unless it is the only one)."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
    if not blocks and stream:
        blocks = [stream]
    return blocks
