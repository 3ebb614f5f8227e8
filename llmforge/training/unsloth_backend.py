"""The Unsloth backend (CUDA only): its fast model loading and LoRA patching, then TRL's SFTTrainer as usual.

Unsloth patches trl, transformers and peft when imported, so it must be imported before any of them: the plan
calls `import_first()` before it touches them, and only when this backend was chosen.

The calls follow `FastLanguageModel` as unsloth 2025.x-2026.x defines it (unsloth/models/loader.py and llama.py):
- `from_pretrained` loads 4-bit unless told otherwise (`load_in_4bit` defaults to True), so every call says which.
- `get_peft_model` iterates `target_modules` as a list: PEFT's "all-linear" shorthand would be read letter by
  letter, so it becomes the projection names of Llama-style models here.
- `use_dora` is read from its **kwargs.
- For 4-bit it builds its own BitsAndBytesConfig (nf4, double quantization, compute dtype = `dtype`) over any
  quantization_config passed in; backend.choose sends other train.qlora settings to TRL instead.
tests/fakes/unsloth is a stand-in with these signatures (strict: an unknown keyword fails there, where the real
library would ignore it), and tests/integration/test_train_unsloth_wiring.py trains through it on CPU.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# What "all-linear" means for the Llama-style architectures Unsloth optimises (llama, mistral, qwen2/3, gemma).
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def import_first() -> None:
    import unsloth  # noqa: F401  (the import itself patches trl/transformers/peft)


def load(model_cfg, train_cfg, method: str, tokenizer):
    """(model, tokenizer): the base through FastLanguageModel, 4-bit for qlora, LoRA attached for lora/qlora."""
    from unsloth import FastLanguageModel

    from llmforge.checkpoints import model_ref, torch_dtype

    checkpointing = "unsloth" if train_cfg.gradient_checkpointing else False
    dtype = torch_dtype(model_cfg.dtype)
    if method == "qlora" and train_cfg.qlora.compute_dtype != "auto":
        dtype = torch_dtype(train_cfg.qlora.compute_dtype)  # unsloth computes 4-bit layers in `dtype`
    model, unsloth_tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_ref(model_cfg.name),  # the adapter records this name
        max_seq_length=train_cfg.max_length,
        dtype=dtype,
        load_in_4bit=method == "qlora",
        full_finetuning=method == "sft",
        use_gradient_checkpointing=checkpointing,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        use_safetensors=True,  # passed through to transformers: never pickled .bin weights
    )
    if method in ("lora", "qlora"):
        lora = train_cfg.lora
        targets = lora.target_modules
        if isinstance(targets, str):
            targets = ALL_LINEAR if targets == "all-linear" else [targets]
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            bias="none",
            use_dora=lora.dora,
            use_gradient_checkpointing=checkpointing,
            random_state=train_cfg.seed,
        )
    # keep the tokenizer (and chat template) the plan resolved and checked
    return model, tokenizer if tokenizer is not None else unsloth_tokenizer
