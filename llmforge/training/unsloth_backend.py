"""The Unsloth backend (CUDA only): its fast model loading and LoRA patching, then TRL's SFTTrainer as usual.

Unsloth patches trl, transformers and peft when imported, so it must be imported before any of them: the runner
calls `import_first()` before it touches them, and only when this backend was chosen.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def import_first() -> None:
    import unsloth  # noqa: F401  (the import itself patches trl/transformers/peft)


def load(model_cfg, train_cfg, method: str, tokenizer):
    """(model, tokenizer): the base through FastLanguageModel, 4-bit for qlora, LoRA attached for lora/qlora."""
    from unsloth import FastLanguageModel

    from llmforge.checkpoints import torch_dtype

    model, unsloth_tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_cfg.name,
        max_seq_length=train_cfg.max_length,
        dtype=torch_dtype(model_cfg.dtype),
        load_in_4bit=method == "qlora",
        full_finetuning=method == "sft",
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if method in ("lora", "qlora"):
        lora = train_cfg.lora
        targets = lora.target_modules
        if targets == "all-linear":
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            use_dora=lora.dora,
            use_gradient_checkpointing="unsloth" if train_cfg.gradient_checkpointing else False,
            random_state=train_cfg.seed,
        )
    # keep the tokenizer (and chat template) the runner resolved and checked
    return model, tokenizer if tokenizer is not None else unsloth_tokenizer
