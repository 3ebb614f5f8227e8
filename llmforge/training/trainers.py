"""The trainer for each method: Trainer (scratch), TRL SFTTrainer (sft, lora, qlora), TRL DPOTrainer (dpo),
ORPOTrainer (orpo) and KTOTrainer (kto)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge import checkpoints
from llmforge.training import data as data_mod

log = logging.getLogger(__name__)


@dataclass
class Built:
    trainer: Any
    is_adapter: bool


def common_args(train_cfg, prec: dict[str, Any], lr: float, output_dir: Path, has_val: bool, world: int) -> dict:
    """TrainingArguments shared by every method (SFTConfig/DPOConfig take the same names)."""
    evaluating = has_val and train_cfg.eval_every is not None
    args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps or -1,
        learning_rate=lr,
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        lr_scheduler_type=train_cfg.scheduler,
        warmup_steps=train_cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm if train_cfg.max_grad_norm > 0 else None,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        logging_steps=train_cfg.logging_steps,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=train_cfg.eval_every if evaluating else None,
        save_strategy="steps" if train_cfg.save_every else "epoch",
        save_steps=train_cfg.save_every or 500,
        save_total_limit=train_cfg.save_total_limit,
        report_to=[] if train_cfg.report_to == "none" else [train_cfg.report_to],
        bf16=prec["bf16"],
        fp16=prec["fp16"],
        use_cpu=prec["use_cpu"],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    args[_checkpointing_field()] = train_cfg.gradient_checkpointing
    if train_cfg.optimizer:
        args["optim"] = train_cfg.optimizer
    if train_cfg.early_stopping.patience:
        args.update(metric_for_best_model="eval_loss", greater_is_better=False)
    if world > 1:
        args["ddp_find_unused_parameters"] = False
    return args


def _checkpointing_field() -> str:
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (old name warns)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def lora_config(train_cfg):
    from peft import LoraConfig

    lora = train_cfg.lora
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def disable_bnb_cpu_repacking(model) -> int:
    """bitsandbytes on AVX512-BF16 CPUs repacks 4-bit weights on any eval forward and later training forwards then
    use a kernel without autograd (silently wrong gradients). Turning the repacking off on every layer avoids it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def bnb_config(train_cfg, prec: dict[str, Any]):
    import torch
    from transformers import BitsAndBytesConfig

    q = train_cfg.qlora
    compute = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(q.compute_dtype)
    if compute is None:  # auto
        compute = torch.bfloat16 if prec["bf16"] else torch.float16 if prec["fp16"] else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def quantized_device_map() -> dict[str, Any]:
    """Where 4-bit weights load: they cannot be moved after loading, so straight onto this process's device (under
    torchrun each rank's own GPU, LOCAL_RANK; the Trainer sets the CUDA device only later)."""
    import os

    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def _load_base(model_cfg, dtype: str, quantization_config=None):
    device_map = quantized_device_map() if quantization_config is not None else None
    return checkpoints.load_model(
        checkpoints.model_ref(model_cfg.name),  # the adapter records this name
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        dtype=dtype,
        quantization_config=quantization_config,
        device_map=device_map,
    )


def build(model_cfg, train_cfg, method, backend, data: data_mod.TrainingData, tokenizer, prec, lr, *,
          output_dir: Path, world: int, init: dict[str, Any] | None = None) -> Built:
    """`init`: the earlier run train.init_from names (stage._init_source), whose adapter or weights this run
    starts from."""
    if method == "scratch":
        return _scratch(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world, init)
    if method == "dpo":
        return _dpo(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world)
    if method == "orpo":
        return _orpo(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world)
    if method == "kto":
        return _kto(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world)
    return _sft(model_cfg, train_cfg, method, backend, data, tokenizer, prec, lr, output_dir, world, init)


def _scratch(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world, init=None) -> Built:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from llmforge.training import scratch

    s = train_cfg.scratch
    if init is not None:  # its architecture is the earlier run's: train.scratch's shape settings do not apply
        model = checkpoints.load_model(init["model"], trust_remote_code=model_cfg.trust_remote_code,
                                       dtype=prec["weights"])
    else:
        model = scratch.build_model(
            tokenizer, s.architecture, s.hidden_size, s.layers, s.heads, s.kv_heads, s.intermediate_size,
            max_position_embeddings=max(2048, train_cfg.max_length), seed=train_cfg.seed,
        )
    block = train_cfg.max_length
    train_ds = _dataset([{"input_ids": b} for b in scratch.pack_blocks(
        tokenizer, data_mod.texts_of(data.train.records), block)])
    eval_ds = None
    if data.val is not None:
        eval_ds = _dataset([{"input_ids": b} for b in scratch.pack_blocks(
            tokenizer, data_mod.texts_of(data.val.records), block)])
    args = TrainingArguments(**common_args(train_cfg, prec, lr, output_dir, eval_ds is not None, world))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    return Built(trainer, is_adapter=False)


def _sft(model_cfg, train_cfg, method, backend, data, tokenizer, prec, lr, output_dir, world, init=None) -> Built:
    is_adapter = method in ("lora", "qlora")
    if backend == "unsloth":
        from llmforge.training import unsloth_backend

        model, tokenizer = unsloth_backend.load(model_cfg, train_cfg, method, tokenizer)
    else:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if method == "qlora":
            model = _load_base(model_cfg, prec["weights"], bnb_config(train_cfg, prec))
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train_cfg.gradient_checkpointing
            )
        elif init is not None and "model" in init:
            model = checkpoints.load_model(init["model"], trust_remote_code=model_cfg.trust_remote_code,
                                           dtype=prec["weights"])
        else:
            model = _load_base(model_cfg, prec["weights"])
        if is_adapter and init is not None:
            # the earlier run's adapter, trainable, with its own rank and targets (train.lora does not apply)
            model = checkpoints.load_adapter(model, init["adapter"], trainable=True)
        elif is_adapter:
            model = get_peft_model(model, lora_config(train_cfg))
        if method == "qlora":
            disabled = disable_bnb_cpu_repacking(model)
            log.info("bitsandbytes CPU repacking turned off on %d 4-bit layers", disabled)
    from trl import SFTConfig, SFTTrainer

    chat = data.train.kind == "messages"
    rows = data_mod.chat_rows(data.train.records) if chat else [{"text": t} for t in data_mod.texts_of(
        data.train.records)]
    eval_rows = None
    if data.val is not None:
        eval_rows = data_mod.chat_rows(data.val.records) if chat else [
            {"text": t} for t in data_mod.texts_of(data.val.records)]
    pretokenized = data.train_rows is not None
    if pretokenized:
        # Already tokenized with the assistant-only masks the plan checked: TRL turns "assistant_masks" into
        # labels for any tokenized dataset, so its own (marker-only) assistant_only_loss stays off.
        rows, eval_rows = data.train_rows, data.val_rows
    args = SFTConfig(
        **common_args(train_cfg, prec, lr, output_dir, eval_rows is not None, world),
        max_length=train_cfg.max_length,
        packing=train_cfg.packing,
        assistant_only_loss=chat and train_cfg.assistant_only_loss and not pretokenized,
        dataset_text_field="text",
        eos_token=tokenizer.eos_token,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(rows),
        eval_dataset=_dataset(eval_rows) if eval_rows is not None else None,
        processing_class=tokenizer,
    )
    return Built(trainer, is_adapter=is_adapter)


def _dpo(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world) -> Built:
    from peft import get_peft_model
    from trl import DPOConfig, DPOTrainer

    d = train_cfg.dpo
    model = _load_base(model_cfg, prec["weights"])
    ref_model = None
    if d.reference_model:
        ref_model = checkpoints.load_model(
            d.reference_model, revision=None, trust_remote_code=model_cfg.trust_remote_code, dtype=model_cfg.dtype
        )
    if d.lora:
        # the reference is the same model with the adapter switched off: no second copy in memory
        model = get_peft_model(model, lora_config(train_cfg))
    args = DPOConfig(
        **common_args(train_cfg, prec, lr, output_dir, data.val is not None, world),
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        max_length=train_cfg.max_length,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=_dataset(data_mod.preference_rows(data.train.records)),
        eval_dataset=_dataset(data_mod.preference_rows(data.val.records)) if data.val is not None else None,
        processing_class=tokenizer,
    )
    return Built(trainer, is_adapter=d.lora)


def _orpo(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world) -> Built:
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # TRL 1.16 keeps ORPO under trl.experimental (KTO was promoted to the stable API); its import warns so
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    o = train_cfg.orpo
    model = _load_base(model_cfg, prec["weights"])  # no reference model: ORPO's penalty needs only the policy
    if o.lora:
        model = get_peft_model(model, lora_config(train_cfg))
    common = common_args(train_cfg, prec, lr, output_dir, data.val is not None, world)
    # ORPO's batches hold chosen_/rejected_input_ids, no input_ids: the Trainer's token count would warn every step
    common["include_num_input_tokens_seen"] = "no"
    args = ORPOConfig(
        **common,
        beta=o.beta,
        max_length=train_cfg.max_length,
        remove_unused_columns=False,  # its collator needs the tokenized pair columns (TRL sets it anyway, warning)
    )
    trainer = ORPOTrainer(
        model=model,
        args=args,
        train_dataset=_dataset(data_mod.preference_rows(data.train.records)),
        eval_dataset=_dataset(data_mod.preference_rows(data.val.records)) if data.val is not None else None,
        processing_class=tokenizer,
    )
    return Built(trainer, is_adapter=o.lora)


def _kto(model_cfg, train_cfg, data, tokenizer, prec, lr, output_dir, world) -> Built:
    from peft import get_peft_model
    from trl import KTOConfig, KTOTrainer

    k = train_cfg.kto
    model = _load_base(model_cfg, prec["weights"])
    if k.lora:
        # the reference is the same model with the adapter switched off: no second copy in memory
        model = get_peft_model(model, lora_config(train_cfg))
    args = KTOConfig(
        **common_args(train_cfg, prec, lr, output_dir, data.val is not None, world),
        beta=k.beta,
        desirable_weight=k.desirable_weight,
        undesirable_weight=k.undesirable_weight,
        max_length=train_cfg.max_length,
    )
    trainer = KTOTrainer(
        model=model,
        ref_model=None,  # without LoRA, TRL keeps a frozen copy of the starting model as the reference
        args=args,
        train_dataset=_dataset(data_mod.kto_rows(data.train.records)),
        eval_dataset=_dataset(data_mod.kto_rows(data.val.records)) if data.val is not None else None,
        processing_class=tokenizer,
    )
    return Built(trainer, is_adapter=k.lora)
