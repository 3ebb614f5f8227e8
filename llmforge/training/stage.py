"""The train stage in two parts: plan() decides a run without training (checks that need no model, the run to
resume, tokenizer and template, the run's size; what --dry-run shows), run(plan) trains it (run folder, trainer,
the loop with resume and clean stops, and the outputs every later stage reads).

Run folder (workspace.run_dir(run)):
    fingerprint.json     resolved model/train config hash + data sha256, written when the run starts (resume checks it)
    chat_template.jinja  the exact template trained with
    config.yaml          resolved `model` and `train` sections
    checkpoints/checkpoint-<step>/   Trainer checkpoints (optimizer, scheduler, RNG, data position)
    metrics.jsonl, loss.png
    tensorboard/         TensorBoard event files (train.report_to: tensorboard)
    adapter/             PEFT adapter + tokenizer (lora, qlora; dpo, orpo, kto with LoRA)   | one of the two
    model/               full model + tokenizer + generation_config (scratch, sft; dpo, orpo, kto full)
    manifest.json        written last; `finished_at` marks the run complete
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from llmforge import atomic, checkpoints, manifest, registry
from llmforge.errors import ConfigError, TrainingStopped, UsageError
from llmforge.training import backend as backends
from llmforge.training import data as data_mod
from llmforge.training import launch
from llmforge.training import resume as resume_mod
from llmforge.workspace import Workspace, check_name, timestamp

log = logging.getLogger(__name__)

DEFAULT_LR = {"lora": 2e-4, "qlora": 2e-4, "sft": 2e-5, "dpo": 5e-6, "orpo": 5e-6, "kto": 5e-6, "scratch": 1e-3}
# Config keys that do not change what is learned: a resume may change them freely.
NOT_FINGERPRINTED = ("run_name", "report_to", "logging_steps", "save_total_limit", "save_every", "accelerate_config")
FINGERPRINT_FILE = "fingerprint.json"
# What transformers' integrations accept for each tracker (tensorboard: either writer).
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
TENSORBOARD_DIR = "tensorboard"
TEMPLATE_FILE = "chat_template.jinja"
NEW_RUN = "<new>"  # the run name a dry run shows when the run would be named as it starts


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def fingerprint(model_cfg, train_cfg, data: data_mod.TrainingData) -> dict[str, Any]:
    train_dump = {k: v for k, v in train_cfg.model_dump(mode="json").items() if k not in NOT_FINGERPRINTED}
    resolved = {"model": model_cfg.model_dump(mode="json"), "train": train_dump}
    config_hash = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()
    return {
        "config_sha256": config_hash,
        "train_data_sha256": data.train.sha256,
        "val_data_sha256": data.val.sha256 if data.val else None,
        "config": resolved,
    }


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    if old.get("train_data_sha256") != new["train_data_sha256"] or old.get("val_data_sha256") != new[
        "val_data_sha256"
    ]:
        changes.append("data")
    if old.get("config_sha256") != new["config_sha256"]:
        keys = []
        for section in ("model", "train"):
            a, b = old.get("config", {}).get(section, {}), new["config"][section]
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        changes.append("config (" + ", ".join(keys or ["?"]) + ")")
    return changes


def _run_to_resume(train_cfg, ws: Workspace, method: str) -> str:
    if train_cfg.run_name:
        if not ws.run_dir(train_cfg.run_name).is_dir():
            raise UsageError(f"--resume: no run named {train_cfg.run_name!r} in {ws.runs_dir}")
        return train_cfg.run_name
    candidates = sorted(
        (p.stat().st_mtime, p.parent.name)
        for p in ws.runs_dir.glob(f"*/{FINGERPRINT_FILE}")
        # a run whose checkpoints are all torn counts too: resuming it is refused with the reason, not skipped
        if not (p.parent / "manifest.json").is_file() and resume_mod.checkpoints(p.parent / "checkpoints")
    )
    if not candidates:
        raise UsageError(
            f"--resume: no unfinished run with a checkpoint in {ws.runs_dir}",
            hint="start a new run without --resume (checkpoints are saved every train.save_every steps)",
        )
    return candidates[-1][1]


def _new_run_name(train_cfg, method: str, world: int) -> str:
    if train_cfg.run_name:
        return train_cfg.run_name
    name = f"{method}-{timestamp()}"
    if world > 1:  # every process must write to (and resume from) the same folder: rank 0's name wins
        import torch.distributed as dist
        from accelerate import PartialState

        PartialState()
        box = [name]
        dist.broadcast_object_list(box, src=0)
        name = box[0]
    return name


def _init_source(model_cfg, train_cfg, workspace: Workspace, method: str) -> dict[str, Any] | None:
    """The finished run train.init_from names, checked against this run: {'run', 'method', 'adapter' | 'model'}
    (absolute paths), or None. Refused when this run could not start from it."""
    name = train_cfg.init_from
    if name is None:
        return None
    check_name(name, "train.init_from")
    if method in ("dpo", "orpo", "kto"):
        raise UsageError(
            f"train.init_from: --method {method} cannot continue a run",
            hint=f"set model.name to the earlier run's model folder ({workspace.model_dir(name)}) instead",
        )
    source = workspace.run_manifest(name)
    if not source.is_file():
        raise UsageError(
            f"train.init_from: no finished run named {name!r} in {workspace.runs_dir}",
            hint="`llmforge runs list` shows the runs; an unfinished run continues with --resume",
        )
    old = json.loads(source.read_text(encoding="utf-8"))
    old_method = old.get("method")
    if method in ("lora", "qlora") and not old.get("adapter"):
        raise UsageError(
            f"train.init_from: run {name} trained every weight ({old_method}), so --method {method} has no adapter "
            "to continue",
            hint=f"continue it with --method {old_method}, or train a new adapter on it with "
            f"model.name={workspace.model_dir(name)} and no train.init_from",
        )
    # scratch continues a scratch run (its own tokenizer), sft a run of model.name's weights
    if method in ("sft", "scratch") and (not old.get("model") or (old_method == "scratch") != (method == "scratch")):
        what = "its adapter" if old.get("adapter") else "it"
        raise UsageError(
            f"train.init_from: run {name} ({old_method}) cannot be continued with --method {method}",
            hint=f"continue {what} with --method {old_method}",
        )
    if method != "scratch":
        base = checkpoints.model_ref(model_cfg.name)
        if old.get("base_model") != base or (old.get("revision") or None) != (model_cfg.revision or None):
            raise UsageError(
                f"train.init_from: run {name} was trained from {old.get('base_model')}"
                + (f"@{old['revision']}" if old.get("revision") else "")
                + f", but model.name is {model_cfg.name}" + (f"@{model_cfg.revision}" if model_cfg.revision else ""),
                hint=f"set model.name to {old.get('base_model')} to continue it, or drop train.init_from",
            )
    out: dict[str, Any] = {"run": name, "method": old_method}
    key = "adapter" if method in ("lora", "qlora") else "model"
    out[key] = workspace.run_dir(name) / old[key]
    return out


def _trains_adapter(train_cfg, method: str) -> bool:
    """LoRA adapters on a frozen base (lora, qlora; dpo, orpo, kto with LoRA), rather than every weight."""
    if method in ("dpo", "orpo", "kto"):
        return getattr(train_cfg, method).lora
    return method in ("lora", "qlora")


def _precision(train_cfg, model_cfg, method: str) -> dict[str, Any]:
    """Mixed precision for the Trainer, and the dtype to load weights in (`weights`, a model.dtype value)."""
    import torch

    cuda = torch.cuda.is_available()
    p = train_cfg.precision
    if p == "auto":
        p = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if p == "fp16" and not cuda:
        raise ConfigError("train.precision: fp16 needs a CUDA GPU", hint="use train.precision: auto (fp32 on CPU)")
    weights = model_cfg.dtype
    if p == "fp16" and not _trains_adapter(train_cfg, method):
        # fp16 mixed precision steps fp32 master weights: the grad scaler cannot unscale half-precision parameters
        if weights in ("float16", "bfloat16"):
            raise ConfigError(
                f"train.precision fp16 cannot train every weight of a model loaded as model.dtype {weights}",
                hint="set model.dtype: auto (llmforge then loads float32 weights for fp16 training), "
                "or train an adapter (--method lora)",
            )
        weights = "float32"
    return {"bf16": p == "bf16", "fp16": p == "fp16", "use_cpu": not cuda, "_name": p, "weights": weights}


def _token_lengths(tokenizer, split: data_mod.Split, method: str, max_length: int, limit: int = 20000) -> list[int]:
    lengths = []
    for record in split.records[:limit]:
        if split.kind == "messages" and method != "scratch":
            n = len(tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=True)["input_ids"])
        elif split.kind in ("preference", "kto"):
            keys = ("prompt", "chosen", "rejected") if split.kind == "preference" else ("prompt", "completion")
            n = sum(
                len(tokenizer(json.dumps(record[k]) if not isinstance(record[k], str) else record[k])["input_ids"])
                for k in keys
            )
        else:
            n = len(tokenizer(data_mod.texts_of([record])[0], add_special_tokens=False)["input_ids"]) + 1
        lengths.append(n if method == "scratch" else min(n, max_length))
    if len(split.records) > limit:  # extrapolate from a sample on very large datasets
        scale = len(split.records) / limit
        lengths = [int(x * scale) for x in lengths]
    return lengths


def _count_params(model_cfg, train_cfg, method: str, tokenizer, init=None) -> tuple[int, int, Any]:
    """(total, trainable, config) without loading weights: the model is built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    if method == "scratch" and init is None:
        from llmforge.training import scratch

        s = train_cfg.scratch
        model = scratch.build_model(
            tokenizer, s.architecture, s.hidden_size, s.layers, s.heads, s.kv_heads, s.intermediate_size,
            max_position_embeddings=max(2048, train_cfg.max_length), meta=True,
        )
    else:
        config = checkpoints.load_config(
            init["model"] if init and "model" in init else model_cfg.name,
            revision=None if init and "model" in init else model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
        )
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    if not _trains_adapter(train_cfg, method):
        return total, total, model.config
    targets, rank, dora = train_cfg.lora.target_modules, train_cfg.lora.rank, train_cfg.lora.dora
    if init and "adapter" in init:  # a continued adapter keeps its own shape
        saved = json.loads((init["adapter"] / "adapter_config.json").read_text(encoding="utf-8"))
        targets, rank, dora = saved["target_modules"], saved["r"], saved.get("use_dora", False)
    trainable = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        short = name.split(".")[-1]
        if targets == "all-linear" or short in targets:
            trainable += rank * (module.in_features + module.out_features)
            if dora:
                trainable += module.out_features
    return total, trainable, model.config


def _memory_estimate(total: int, trainable: int, config, train_cfg, method: str, prec: dict[str, Any]) -> dict:
    weight_bytes = 0.56 if method == "qlora" else (2 if (prec["bf16"] or prec["fp16"]) else 4)
    weights = total * weight_bytes
    optimizer = trainable * (4 + 8 + (4 if weight_bytes != 4 else 0))  # grads + Adam moments (+ fp32 master)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    tokens = train_cfg.batch_size * train_cfg.max_length
    act_per_layer = tokens * hidden * (2 if train_cfg.gradient_checkpointing else 18) * (2 if weight_bytes != 4 else 4)
    activations = act_per_layer * layers + tokens * vocab * 4 * 2  # + fp32 logits and their gradient
    if method in ("dpo", "orpo", "kto"):
        activations *= 2  # chosen and rejected in one batch (kto: each completion and its mismatched KL twin)
    gib = 1024**3
    return {
        "weights_gib": round(weights / gib, 3),
        "gradients_optimizer_gib": round(optimizer / gib, 3),
        "activations_gib": round(activations / gib, 3),
        "total_gib": round((weights + optimizer + activations) / gib, 3),
    }


def _quiet_libraries() -> None:
    """Keep datasets' and transformers' own bars and info lines off the user's terminal (logging still works)."""
    import warnings

    # deprecation notices meant for library authors, and bitsandbytes' optional-kernel notice (facts.md: harmless)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate)\b")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show: the config sections, the loaded data and
    tokenizer, the template, and the values the manifest and the resume check record."""

    model_cfg: Any
    train_cfg: Any
    workspace: Workspace
    resume: bool
    force: bool
    timer: manifest.Timer
    data: data_mod.TrainingData
    tokenizer: Any
    chosen: Any  # template.ChosenTemplate, or None for plain-text training
    init: dict[str, Any] | None
    prec: dict[str, Any]
    fingerprint: dict[str, Any]


@dataclass(frozen=True)
class TrainPlan:
    """A training run decided but not started: what `llmforge train --dry-run` shows, and all `run` needs.
    as_dict() is the dry run's JSON, key for key."""

    run: str | None  # None: named when it starts (<method>-<timestamp>); a dry run shows "<new>"
    method: str
    backend: str
    backend_why: str
    four_bit: str | None
    base_model: str
    parameters: int
    trainable_parameters: int
    trainable_share: float
    train_examples: int
    val_examples: int
    data_kind: str
    tokens_per_epoch: int
    steps_per_epoch: int
    steps: int
    effective_batch: int
    learning_rate: float
    precision: str
    processes: int
    memory_estimate: dict[str, float]
    chat_template: str | None
    chat_template_family: str | None
    loss_mask: str | None
    chat_template_date: str | None
    records_split_per_turn: int
    end_of_turn_checked: int
    overlong: dict[str, Any] | None
    resume_from: str | None
    resume_skipped: list[dict[str, Any]]
    init_from: str | None
    notes: list[str]
    is_main: bool  # rank 0 (or the only process): the one that writes outputs and reports
    prepared: _Prepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("is_main", "prepared")}
        return {"dry_run": True, "is_main": self.is_main, **shown, "run": self.run or NEW_RUN}


@dataclass(frozen=True)
class TrainResult:
    """A finished run: what `llmforge train` prints. as_dict() is its JSON, key for key; the last three are set on
    the main process only (the others write nothing)."""

    run: str
    run_dir: str
    method: str
    backend: str
    backend_why: str
    steps: int
    epochs: float
    first_loss: float | None
    final_loss: float | None
    train_loss: float
    final_eval_loss: float | None
    tokens_seen: int
    train_seconds: float
    resumed_from: str | None
    resume_skipped: list[dict[str, Any]]
    init_from: str | None
    removed_temporaries: int
    overlong: dict[str, Any] | None
    is_main: bool
    output: str | None = None
    manifest: str | None = None
    wall_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.is_main:
            for key in ("output", "manifest", "wall_seconds"):
                del out[key]
        return out


def plan(model_cfg, train_cfg, workspace: Workspace, *, resume: bool = False, force: bool = False) -> TrainPlan:
    """Decide the run without training or writing anything: refusals first, then the run to resume (if any), the
    tokenizer and template, and the run's size. Loads the tokenizer and builds the model on the meta device (no
    weights) to count parameters."""
    timer = manifest.Timer()
    rank, world = _rank()
    method = train_cfg.method
    _refuse_early(model_cfg, train_cfg, world)
    backend, why, init = _choose_backend(model_cfg, train_cfg, workspace)
    four_bit = backends.check_4bit() if method == "qlora" else None
    data = data_mod.load(train_cfg.data, workspace, method)
    if train_cfg.early_stopping.patience and data.val is None:
        raise ConfigError("train.early_stopping needs a validation split", hint="data prepare writes data/val.jsonl")
    if backend == "unsloth":
        # must come before trl/transformers/peft are imported (it patches them)
        from llmforge.training import unsloth_backend

        unsloth_backend.import_first()
    prec = _precision(train_cfg, model_cfg, method)
    fp = fingerprint(model_cfg, train_cfg, data)
    if resume:
        run_name, run_started, resume_from, resume_skipped = _run_resumed(train_cfg, workspace, fp, force)
    else:
        # "Today" for templates that write the date: the run's start, kept by a resumed run.
        run_name, run_started, resume_from, resume_skipped = train_cfg.run_name, datetime.now(), None, []
    if init is not None and run_name == init["run"]:
        _refuse_own_init(run_name)
    tokenizer = _tokenizer(model_cfg, train_cfg, method, init, data)
    chosen, masked = _template(model_cfg, train_cfg, method, tokenizer, data, run_started)
    checked, split_records, overlong = _encode_masked(tokenizer, chosen, data, train_cfg) if masked else (0, 0, None)
    total, trainable, model_config = _count_params(model_cfg, train_cfg, method, tokenizer, init)
    tokens_per_epoch, steps_per_epoch, steps, per_step = _size(tokenizer, data, train_cfg, method, world)
    return TrainPlan(
        run=run_name,
        method=method,
        backend=backend,
        backend_why=why,
        four_bit=four_bit,
        base_model=model_cfg.name if method != "scratch" else f"scratch {train_cfg.scratch.architecture}",
        parameters=total,
        trainable_parameters=trainable,
        trainable_share=round(trainable / total, 6) if total else 0.0,
        train_examples=len(data.train.records),
        val_examples=len(data.val.records) if data.val else 0,
        data_kind=data.train.kind,
        tokens_per_epoch=tokens_per_epoch,
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        effective_batch=per_step,
        learning_rate=train_cfg.learning_rate or DEFAULT_LR[method],
        precision=prec["_name"],
        processes=world,
        memory_estimate=_memory_estimate(total, trainable, model_config, train_cfg, method, prec),
        chat_template=chosen.source if chosen else None,
        chat_template_family=chosen.family if chosen else None,
        loss_mask=chosen.how if chosen else None,
        chat_template_date=chosen.date.strftime("%Y-%m-%d") if chosen and chosen.date else None,
        records_split_per_turn=split_records,
        end_of_turn_checked=checked,
        overlong=overlong,
        resume_from=str(resume_from) if resume_from else None,
        resume_skipped=resume_skipped,
        init_from=init["run"] if init else None,
        notes=data.notes,
        is_main=rank == 0,
        prepared=_Prepared(model_cfg, train_cfg, workspace, resume, force, timer, data, tokenizer, chosen, init,
                           prec, fp),
    )


def _refuse_early(model_cfg, train_cfg, world: int) -> None:
    """Everything that can be refused from the config alone."""
    method = train_cfg.method
    launch.check_world(world)
    if method != "scratch" and not model_cfg.name:
        raise ConfigError(
            f"model.name is required for --method {method}",
            hint="set model.name to a hub id or a local model folder, or use --method scratch",
        )
    if train_cfg.early_stopping.patience and not train_cfg.eval_every:
        raise ConfigError(
            "train.early_stopping.patience needs train.eval_every", hint="e.g. -s train.eval_every=50"
        )
    if method == "kto" and train_cfg.batch_size < 2:
        raise ConfigError(
            "train.batch_size: kto needs at least 2 (its KL term compares each completion with another in the batch)",
            hint="e.g. -s train.batch_size=4",
        )
    if train_cfg.report_to != "none" and not any(
        importlib.util.find_spec(m) for m in TRACKER_MODULES[train_cfg.report_to]
    ):
        raise UsageError(
            f"train.report_to: {train_cfg.report_to} is not installed",
            hint=f"pip install {train_cfg.report_to}, or set train.report_to: none (metrics.jsonl is always written)",
        )


def _choose_backend(model_cfg, train_cfg, workspace: Workspace) -> tuple[str, str, dict[str, Any] | None]:
    """(backend, why, the run train.init_from continues or None)."""
    method = train_cfg.method
    backend, why = backends.choose(method, train_cfg.backend, train_cfg.qlora)
    init = _init_source(model_cfg, train_cfg, workspace, method)
    if init is not None and backend == "unsloth":
        if train_cfg.backend == "unsloth":
            raise UsageError(
                "train.init_from: the unsloth backend cannot continue a run", hint="use train.backend: trl (or auto)"
            )
        backend, why = "trl", "train.init_from continues a run with TRL + PEFT"
    return backend, why, init


def _run_resumed(train_cfg, workspace: Workspace, fp: dict[str, Any], force: bool):
    """(run name, its start time, the checkpoint to resume from, the newer checkpoints skipped) for --resume:
    refused when the config or data changed (unless --force) or no checkpoint is complete."""
    run_name = _run_to_resume(train_cfg, workspace, train_cfg.method)
    run_dir = workspace.run_dir(run_name)
    if workspace.run_manifest(run_name).is_file():
        raise UsageError(
            f"--resume: run {run_name} already finished", hint="start a new run (a new train.run_name)"
        )
    if not (run_dir / FINGERPRINT_FILE).is_file():
        raise UsageError(f"--resume: {run_dir} is not a training run started by llmforge")
    old = json.loads((run_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    run_started = datetime.now()
    if old.get("started_at"):
        run_started = datetime.fromisoformat(old["started_at"]).astimezone().replace(tzinfo=None)
    changes = _changed(old, fp)
    if changes and not force:
        raise UsageError(
            f"--resume: {', '.join(changes)} changed since run {run_name} started",
            hint="restore them, or pass --force to resume anyway (the run will mix two setups)",
        )
    resume_from, resume_skipped = resume_mod.newest_complete(workspace.checkpoints_dir(run_name))
    for skip in resume_skipped:
        log.info("--resume: skipping %s of run %s: %s", skip["checkpoint"], run_name, skip["reason"])
    if resume_from is None:
        torn = "; ".join(f"{s['checkpoint']}: {s['reason']}" for s in resume_skipped)
        raise UsageError(
            f"--resume: run {run_name} has no complete checkpoint" + (f" ({torn})" if torn else " yet"),
            hint=f"start it again: llmforge train --force -s train.run_name={run_name} (replaces its folder)",
        )
    return run_name, run_started, resume_from, resume_skipped


def _refuse_own_init(run_name: str) -> None:
    raise UsageError(
        f"train.init_from: run {run_name} cannot start from itself",
        hint="choose another train.run_name for the new run",
    )


def _tokenizer(model_cfg, train_cfg, method: str, init, data: data_mod.TrainingData):
    if method == "scratch" and init is not None:
        tokenizer = checkpoints.load_tokenizer(init["model"])  # the vocabulary its weights were trained with
    elif method == "scratch" and not train_cfg.scratch.tokenizer:
        from llmforge.training import scratch

        tokenizer = scratch.train_tokenizer(data_mod.texts_of(data.train.records), train_cfg.scratch.vocab_size)
    else:
        source = train_cfg.scratch.tokenizer if method == "scratch" else model_cfg.name
        tokenizer = checkpoints.load_tokenizer(
            source, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _template(model_cfg, train_cfg, method: str, tokenizer, data: data_mod.TrainingData, run_started: datetime):
    """(the chat template trained with or None, whether the loss is masked to the assistant's turns); the
    tokenizer is set to render with it."""
    from llmforge.training import template as template_mod

    chat = data.train.kind in ("messages", "preference", "kto") and method != "scratch"
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    masked = chat and data.train.kind == "messages" and train_cfg.assistant_only_loss
    if masked or (chat and model_cfg.chat_template != "auto"):
        # assistant-only loss needs the assistant's spans: chat_spans decides how to find them, or refuses
        chosen = template_mod.resolve(tokenizer, model_cfg.chat_template, now=run_started)
        if not masked:
            chosen.how = None
    elif own is not None:
        chosen = template_mod.ChosenTemplate(own, "tokenizer", None, (tokenizer.eos_token,))
    elif chat:
        raise UsageError(
            "the tokenizer has no chat template, so chat records cannot be rendered",
            hint="set model.chat_template to a family (chatml, llama3, mistral, gemma, phi3, alpaca)",
        )
    else:
        chosen = None
    if chosen is not None:
        tokenizer.chat_template = chosen.text
    return chosen, masked


def _encode_masked(tokenizer, chosen, data: data_mod.TrainingData, train_cfg) -> tuple[int, int, dict[str, Any]]:
    """(end-of-turn tokens checked, records split per turn, the overlong counts): llmforge tokenizes and masks chat
    records itself, so the end-of-turn check sees the very ids the trainer gets (set on `data`)."""
    from llmforge.training import template as template_mod

    encoded = template_mod.encode(tokenizer, chosen, data.train.records)
    checked = template_mod.check_end_of_turn_trained(tokenizer, encoded, chosen.end_of_turn)
    # Records over max_length: the stated policy, counted (the trainer would cut them without a word).
    overlong = template_mod.apply_overlong(encoded, train_cfg.max_length, train_cfg.overlong)
    data.train_rows = encoded.rows
    if data.val is not None:
        val = template_mod.encode(tokenizer, chosen, data.val.records, "validation")
        overlong["validation"] = template_mod.apply_overlong(val, train_cfg.max_length, train_cfg.overlong)
        data.val_rows = val.rows
    return checked, encoded.split_records, overlong


def _size(tokenizer, data: data_mod.TrainingData, train_cfg, method: str, world: int) -> tuple[int, int, int, int]:
    """(tokens per epoch, steps per epoch, steps, examples per optimizer step)."""
    if data.train_rows is not None:
        lengths = [min(len(r["input_ids"]), train_cfg.max_length) for r in data.train_rows]
    else:
        lengths = _token_lengths(tokenizer, data.train, method, train_cfg.max_length)
    tokens_per_epoch = sum(lengths)
    if method == "scratch" or train_cfg.packing:
        examples = max(1, math.ceil(tokens_per_epoch / train_cfg.max_length))
    else:
        examples = len(data.train_rows) if data.train_rows is not None else len(data.train.records)
    per_step = train_cfg.batch_size * train_cfg.grad_accum * world
    steps_per_epoch = max(1, math.ceil(examples / per_step))
    steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
    return tokens_per_epoch, steps_per_epoch, steps, per_step


def run(plan: TrainPlan, *, progress=None) -> TrainResult:
    """Train as planned: the run folder, the trainer, the loop (resume, clean stops), then on the main process
    the adapter or model, the plot, the manifest and the registry entry."""
    p = plan.prepared
    train_cfg, workspace = p.train_cfg, p.workspace
    overlong = plan.overlong
    if overlong and overlong["overlong"] and plan.is_main:
        log.warning("%d of %d training samples are longer than train.max_length (%d tokens): train.overlong: %s "
                    "(%d truncated, %d dropped)", overlong["overlong"], overlong["rows"], train_cfg.max_length,
                    train_cfg.overlong, overlong["truncated"], overlong["dropped"])  # fmt: skip
    run_name = _claim_run_name(plan)
    run_dir = workspace.run_dir(run_name)
    if progress is not None and plan.is_main:  # before the model loads: which backend and why, first thing in a log
        progress({"event": "begin", "run": run_name, "method": plan.method, "backend": plan.backend,
                  "backend_why": plan.backend_why, "total_steps": plan.steps, "resume_from": plan.resume_from})
    resume_from = Path(plan.resume_from) if plan.resume_from else None
    removed = _open_run_dir(plan, run_name, run_dir) if plan.is_main else []
    metrics_file = workspace.metrics_file(run_name)
    if plan.is_main and resume_from is not None:
        from llmforge.training.callbacks import trim_metrics

        trim_metrics(metrics_file, int(resume_from.name.split("-")[-1]))
    elif plan.is_main:
        metrics_file.unlink(missing_ok=True)

    built, runlog, stopper = _build_trainer(plan, run_name, run_dir, metrics_file, progress)
    trainer = built.trainer
    output, train_seconds = _train(plan, trainer, stopper, run_name, run_dir, metrics_file, resume_from)
    state = trainer.state
    final_eval = None
    if p.data.val is not None:
        final_eval = runlog.last_eval_loss if runlog.last_eval_step == state.global_step else None
        if final_eval is None:
            final_eval = trainer.evaluate().get("eval_loss")
    result = TrainResult(
        run=run_name,
        run_dir=str(run_dir),
        method=plan.method,
        backend=plan.backend,
        backend_why=plan.backend_why,
        steps=state.global_step,
        epochs=round(state.epoch or 0.0, 4),
        first_loss=runlog.first_loss,
        final_loss=runlog.last_loss if runlog.last_loss is not None else output.training_loss,
        train_loss=output.training_loss,
        final_eval_loss=final_eval,
        tokens_seen=int(state.num_input_tokens_seen or 0),
        train_seconds=round(train_seconds, 3),
        resumed_from=plan.resume_from,
        resume_skipped=plan.resume_skipped,
        init_from=plan.init_from,
        removed_temporaries=len(removed),
        overlong=overlong,
        is_main=plan.is_main,
    )
    if not plan.is_main:
        return result
    out_key, out_dir = _save_weights(plan, run_name, trainer, built.is_adapter)
    # free the model and optimizer before matplotlib loads, so plotting never raises the run's peak memory
    del trainer, built
    import gc

    gc.collect()
    from llmforge.training.callbacks import plot_loss

    plot = plot_loss(metrics_file, run_dir / "loss.png")
    m = _write_manifest(plan, result, out_key, plot)
    # a continued run's parent is the run it started from (run -> run in `llmforge runs`); its data stays named
    base = checkpoints.model_ref(p.model_cfg.name) if p.model_cfg.name else p.model_cfg.name
    registry.record(
        workspace.registry_file, "run", run_name, parent=plan.init_from or p.data.dataset_id,
        path=str(run_dir), status="complete", method=plan.method, base_model=base, dataset=p.data.dataset_id,
        metrics={k: v for k, v in (("loss", result.final_loss), ("eval_loss", final_eval),
                                   ("steps", state.global_step)) if v is not None},
    )
    return replace(result, output=str(out_dir), manifest=str(workspace.run_manifest(run_name)),
                   wall_seconds=m["wall_seconds"])


def _claim_run_name(plan: TrainPlan) -> str:
    """The run's name (a resumed run's own; train.run_name; or <method>-<timestamp>, rank 0's on every process),
    refused when a new run's folder already holds something (unless --force)."""
    p = plan.prepared
    if p.resume:
        return plan.run
    run_name = _new_run_name(p.train_cfg, plan.method, plan.processes)
    run_dir = p.workspace.run_dir(run_name)
    # rank 0 alone decides: the others would race with its mkdir
    if plan.is_main and run_dir.exists() and any(run_dir.iterdir()) and not p.force:
        raise UsageError(
            f"run folder already exists: {run_dir}",
            hint="pass --force to replace it, --resume to continue it, or choose another train.run_name",
        )
    if p.init is not None and run_name == p.init["run"]:
        _refuse_own_init(run_name)
    return run_name


def _open_run_dir(plan: TrainPlan, run_name: str, run_dir: Path) -> list[Path]:
    """Rank 0: the run folder with the fingerprint, template and config in it; returns the stale temporaries a
    killed run left, removed."""
    p = plan.prepared
    if not p.resume and run_dir.exists():
        shutil.rmtree(run_dir)  # only reached with --force
    # what a killed run was writing under temporary names (its adapter/ or model/, a plot, the manifest)
    removed = atomic.remove_stale(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not p.resume:
        atomic.write_json(run_dir / FINGERPRINT_FILE, {**p.fingerprint, "run": run_name, "started_at": manifest.now()})
    if p.chosen is not None:
        atomic.write_text(run_dir / TEMPLATE_FILE, p.chosen.saved_text)
    atomic.write_text(
        run_dir / "config.yaml",
        yaml.safe_dump(
            {"model": p.model_cfg.model_dump(mode="json"), "train": {**p.train_cfg.model_dump(mode="json"),
                                                                      "run_name": run_name}},
            sort_keys=False,
        ),
    )
    return removed


def _build_trainer(plan: TrainPlan, run_name: str, run_dir: Path, metrics_file: Path, progress):
    """(the built trainer, its RunLog, its StopOnSignal): the model loads here."""
    p = plan.prepared
    train_cfg = p.train_cfg
    from llmforge.training import trainers

    _quiet_libraries()
    from transformers import set_seed

    set_seed(train_cfg.seed)  # LoRA's random init and scratch weights happen before the Trainer seeds anything
    built = trainers.build(
        p.model_cfg, train_cfg, plan.method, plan.backend, p.data, p.tokenizer, p.prec, plan.learning_rate,
        output_dir=p.workspace.checkpoints_dir(run_name), world=plan.processes, init=p.init,
    )
    trainer = built.trainer
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # the library does not print; progress goes to the callback
    trainer.remove_callback(ProgressCallback)
    for callback in trainer.callback_handler.callbacks:
        # TensorBoard's events go in the run folder (transformers' default is under checkpoints/runs/<date_host>),
        # unless TENSORBOARD_LOGGING_DIR says otherwise
        if type(callback).__name__ == "TensorBoardCallback" and callback.logging_dir is None:
            callback.logging_dir = str(run_dir / TENSORBOARD_DIR)

    from llmforge.training.callbacks import MarkComplete, RunLog, StopOnSignal

    runlog = RunLog(metrics_file, progress, plan.is_main)
    stopper = StopOnSignal()
    trainer.add_callback(runlog)
    trainer.add_callback(stopper)
    trainer.add_callback(MarkComplete())
    if plan.resume_from is not None and progress is not None and plan.is_main:
        progress({"event": "resume", "checkpoint": plan.resume_from, "skipped": plan.resume_skipped})
    if train_cfg.early_stopping.patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(
            EarlyStoppingCallback(train_cfg.early_stopping.patience, train_cfg.early_stopping.threshold)
        )
    return built, runlog, stopper


def _train(plan: TrainPlan, trainer, stopper, run_name: str, run_dir: Path, metrics_file: Path,
           resume_from: Path | None):
    """(the trainer's output, seconds trained); a signal ends the run with TrainingStopped (its checkpoint kept)."""
    stopper.install()
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    train_seconds = time.perf_counter() - started
    if stopper.received is not None:
        import signal as _signal

        code = 130 if stopper.received == _signal.SIGINT else 143
        if not plan.is_main:
            raise SystemExit(code)  # rank 0 alone reports, so the user reads one message
        from llmforge.training.callbacks import plot_loss

        plot_loss(metrics_file, run_dir / "loss.png")
        raise TrainingStopped(
            f"training stopped by signal {stopper.received} at step {trainer.state.global_step}; "
            f"checkpoint saved in {plan.prepared.workspace.checkpoints_dir(run_name)}",
            run=run_name,
            exit_code=code,
        )
    return output, train_seconds


def _save_weights(plan: TrainPlan, run_name: str, trainer, is_adapter: bool) -> tuple[str, Path]:
    """Rank 0: the adapter or model, with the tokenizer and template, appearing at once; ('adapter'|'model', dir)."""
    p = plan.prepared
    if is_adapter:
        out_key, out_dir = "adapter", p.workspace.adapter_dir(run_name)
    else:
        out_key, out_dir = "model", p.workspace.model_dir(run_name)
    with atomic.atomic_dir(out_dir, force=True) as tmp:
        if is_adapter:
            checkpoints.save_adapter(trainer.model, tmp)
        else:
            checkpoints.save_model(trainer.model, tmp)
        checkpoints.save_tokenizer(p.tokenizer, tmp, p.chosen.saved_text if p.chosen else None)
    return out_key, out_dir


def _write_manifest(plan: TrainPlan, result: TrainResult, out_key: str, plot) -> dict[str, Any]:
    """runs/<run>/manifest.json, written last: its presence marks the run complete."""
    p = plan.prepared
    model_cfg, train_cfg, data, chosen = p.model_cfg, p.train_cfg, p.data, p.chosen
    run_dir = Path(result.run_dir)
    base = checkpoints.model_ref(model_cfg.name) if model_cfg.name else model_cfg.name
    inputs = {"train_data": data.train.path}
    if data.val is not None:
        inputs["val_data"] = data.val.path
    m = manifest.build(
        "train",
        inputs=inputs,
        timer=p.timer,
        run=result.run,
        method=plan.method,
        backend=plan.backend,
        backend_why=plan.backend_why,
        base_model=base,
        revision=model_cfg.revision,
        scratch=train_cfg.scratch.model_dump(mode="json") if plan.method == "scratch" else None,
        data_sha256=data.sha256,
        dataset_id=data.dataset_id,
        **{out_key: out_key},
        tokenizer=out_key,
        chat_template=TEMPLATE_FILE if chosen else None,
        chat_template_source=chosen.source if chosen else None,
        chat_template_family=chosen.family if chosen else None,
        loss_mask=plan.loss_mask,
        chat_template_date=plan.chat_template_date,
        records_split_per_turn=plan.records_split_per_turn if chosen else None,
        end_of_turn_checked=plan.end_of_turn_checked,
        overlong=plan.overlong,
        end_of_turn=list(chosen.end_of_turn) if chosen else None,
        metrics="metrics.jsonl",
        loss_plot="loss.png" if plot else None,
        tensorboard=TENSORBOARD_DIR if (run_dir / TENSORBOARD_DIR).is_dir() else None,
        steps=result.steps,
        epochs=result.epochs,
        tokens_seen=result.tokens_seen,
        parameters=plan.parameters,
        trainable_parameters=plan.trainable_parameters,
        first_loss=result.first_loss,
        final_loss=result.final_loss,
        final_eval_loss=result.final_eval_loss,
        train_seconds=result.train_seconds,
        precision=plan.precision,
        processes=plan.processes,
        resumed_from=plan.resume_from,
        resume_skipped=plan.resume_skipped,
        init_from=plan.init_from,
    )
    atomic.write_json(p.workspace.run_manifest(result.run), m)
    return m
