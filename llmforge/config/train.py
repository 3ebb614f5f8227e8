"""`train:` how a model is trained (method, backend, hyperparameters, LoRA/QLoRA/DPO/ORPO/KTO/scratch settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmforge.config.base import COUNT_MAX, DIM_MAX, SEED_MAX, TOKENS_MAX, FolderName, Section

Method = Literal["scratch", "sft", "lora", "qlora", "dpo", "orpo", "kto"]


class EarlyStoppingConfig(Section):
    patience: int | None = Field(
        None, ge=1, le=COUNT_MAX, description="Stop after this many evaluations without improvement (off when unset)."
    )
    threshold: float = Field(0.0, ge=0, description="Minimum eval-loss improvement that counts.")


class LoraConfig(Section):
    rank: int = Field(16, ge=1, le=DIM_MAX, description="LoRA rank r.")
    alpha: int = Field(32, ge=1, le=DIM_MAX, description="LoRA alpha (scaling = alpha / rank).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names."
    )
    dora: bool = Field(False, description="Use DoRA (weight-decomposed LoRA).")


class QloraConfig(Section):
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit quantization type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Dtype of the 4-bit layers' matmuls ('auto': bf16 where supported, else fp32)."
    )


class DpoConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference.")
    loss_type: str = Field("sigmoid", description="TRL DPO loss type (sigmoid, ipo, hinge, ...).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Label smoothing for noisy preferences.")
    reference_model: str | None = Field(
        None, description="Reference model (default: the base model, via the adapter switched off)."
    )
    lora: bool = Field(
        True, description="Train a LoRA adapter (train.lora settings); false trains every weight against a frozen copy."
    )


class OrpoConfig(Section):
    beta: float = Field(
        0.1, gt=0, description="ORPO lambda: weight of the odds-ratio preference term against the SFT loss on chosen."
    )
    lora: bool = Field(True, description="Train a LoRA adapter (train.lora settings); false trains every weight.")


class KtoConfig(Section):
    beta: float = Field(0.1, gt=0, description="KTO beta: how far the policy may move from the reference.")
    desirable_weight: float = Field(
        1.0, gt=0, description="Weight of the loss on good completions (label true), to balance unequal counts."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight of the loss on bad completions (label false), to balance unequal counts."
    )
    lora: bool = Field(
        True, description="Train a LoRA adapter (train.lora settings); false trains every weight against a frozen copy."
    )


class ScratchConfig(Section):
    architecture: Literal["llama", "qwen2"] = Field(
        "llama", description="Architecture of the model built from scratch."
    )
    hidden_size: int = Field(256, ge=8, le=DIM_MAX, description="Hidden size.")
    layers: int = Field(4, ge=1, le=1024, description="Number of transformer layers.")
    heads: int = Field(4, ge=1, le=1024, description="Attention heads.")
    kv_heads: int | None = Field(None, ge=1, le=1024, description="Key/value heads (default: same as heads).")
    intermediate_size: int | None = Field(None, ge=1, le=4 * DIM_MAX, description="MLP width (default: 4 x hidden_size, rounded).")
    vocab_size: int = Field(
        8000, ge=300, le=TOKENS_MAX, description="Vocabulary size of the byte-level BPE tokenizer trained on the data."
    )
    tokenizer: str | None = Field(None, description="Use this tokenizer folder instead of training one.")


class TrainConfig(Section):
    method: Method = Field("lora", description="Training method: scratch, sft, lora, qlora, dpo, orpo or kto.")
    backend: Literal["auto", "trl", "unsloth"] = Field(
        "auto",
        description="'auto' uses Unsloth with a CUDA GPU when installed (sft, lora, and qlora with the default "
        "nf4 + double quantization), else TRL + PEFT.",
    )
    run_name: FolderName | None = Field(None, description="Run folder name, a plain folder name (default <method>-<YYYYmmdd-HHMMSS>).")
    data: str | None = Field(None, description="Dataset file or folder (default: the workspace's prepared data).")
    init_from: str | None = Field(
        None,
        description="Start from a finished run of this workspace (its run name) as a new run, on new data if you like: "
        "lora/qlora continue its adapter (same model.name; the adapter's own LoRA settings are kept), sft and "
        "scratch continue its saved weights (model/). Unlike --resume, which carries on the same unfinished run from "
        "its checkpoint (same step, optimizer and data), this starts a new run at step 0 with a fresh optimizer and "
        "schedule; the manifest and `llmforge runs` record the earlier run as its parent.",
    )
    epochs: float = Field(3.0, gt=0, description="Training epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, le=COUNT_MAX, description="Stop after this many optimizer steps.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate (default by method: lora/qlora 2e-4, sft 2e-5, dpo/orpo/kto 5e-6, scratch 1e-3).",
    )
    batch_size: int = Field(4, ge=1, le=1_000_000, description="Per-device batch size.")
    grad_accum: int = Field(1, ge=1, le=1_000_000, description="Gradient accumulation steps.")
    max_length: int = Field(1024, ge=8, le=TOKENS_MAX, description="Maximum sequence length in tokens.")
    overlong: Literal["truncate", "drop", "fail"] = Field(
        "truncate",
        description="Chat records longer than max_length (in tokens of the chat template): 'truncate' keeps their "
        "first max_length tokens (a record left with no answer token is dropped), 'drop' leaves them out, 'fail' "
        "stops before training. train prints how many.",
    )
    packing: bool = Field(False, description="Pack several examples into each sequence.")
    assistant_only_loss: bool = Field(
        True,
        description="Chat data: train only on the assistant's tokens (and its end-of-turn token); false trains on all.",
    )
    optimizer: str | None = Field(
        None,
        description="Optimizer name as transformers knows it (adamw_torch_fused, adamw_torch, adamw_8bit, ...); "
        "unset: transformers' default (fused AdamW on torch >= 2.8).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training precision ('auto': bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps for learning-rate warmup.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    scheduler: str = Field("cosine", description="Learning-rate schedule (linear, cosine, constant, ...).")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Random seed.")
    eval_every: int | None = Field(None, ge=1, le=COUNT_MAX, description="Evaluate on the validation split every N steps.")
    save_every: int | None = Field(
        None, ge=1, le=COUNT_MAX, description="Save a checkpoint every N steps (default: end of each epoch)."
    )
    save_total_limit: int | None = Field(3, ge=1, le=1_000_000, description="Keep at most this many checkpoints.")
    logging_steps: int = Field(10, ge=1, le=COUNT_MAX, description="Log loss, lr and tokens/s every N steps.")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig, description="Early stopping.")
    accelerate_config: str | None = Field(
        None, description="An accelerate config file (FSDP, DeepSpeed) used when --nproc relaunches the training."
    )
    report_to: Literal["none", "tensorboard", "mlflow", "wandb"] = Field("none", description="Experiment tracker.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter settings (lora, qlora, dpo, orpo, kto).")
    qlora: QloraConfig = Field(default_factory=QloraConfig, description="4-bit quantization settings (qlora).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="Preference optimisation settings (dpo).")
    orpo: OrpoConfig = Field(default_factory=OrpoConfig, description="Odds-ratio preference optimisation (orpo).")
    kto: KtoConfig = Field(default_factory=KtoConfig, description="Optimisation from good/bad labelled completions (kto).")
    scratch: ScratchConfig = Field(default_factory=ScratchConfig, description="Model built from scratch (scratch).")
