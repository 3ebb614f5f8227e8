"""One training run, top to bottom: checks that need no model, the run folder, tokenizer and template, model,
trainer, the loop (with resume and clean stops), and the outputs every later stage reads.

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


def run(model_cfg, train_cfg, workspace: Workspace, *, resume: bool = False, force: bool = False,
        dry_run: bool = False, progress=None) -> dict[str, Any]:
    timer = manifest.Timer()
    rank, world = _rank()
    is_main = rank == 0
    method = train_cfg.method

    # 1. Everything that can be refused without loading a model.
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
    backend, why = backends.choose(method, train_cfg.backend, train_cfg.qlora)
    init = _init_source(model_cfg, train_cfg, workspace, method)
    if init is not None and backend == "unsloth":
        if train_cfg.backend == "unsloth":
            raise UsageError(
                "train.init_from: the unsloth backend cannot continue a run", hint="use train.backend: trl (or auto)"
            )
        backend, why = "trl", "train.init_from continues a run with TRL + PEFT"
    four_bit = backends.check_4bit() if method == "qlora" else None
    data = data_mod.load(train_cfg.data, workspace, method)
    if train_cfg.early_stopping.patience and data.val is None:
        raise ConfigError("train.early_stopping needs a validation split", hint="data prepare writes data/val.jsonl")
    if backend == "unsloth":
        # must come before trl/transformers/peft are imported (it patches them)
        from llmforge.training import unsloth_backend

        unsloth_backend.import_first()
    prec = _precision(train_cfg, model_cfg, method)
    lr = train_cfg.learning_rate or DEFAULT_LR[method]
    fp = fingerprint(model_cfg, train_cfg, data)

    # 2. The run folder: new, or the one being resumed (unchanged config and data unless --force).
    resume_from = None
    resume_skipped: list[dict[str, Any]] = []
    # "Today" for templates that write the date: the run's start, kept by a resumed run.
    run_started = datetime.now()
    if resume:
        run_name = _run_to_resume(train_cfg, workspace, method)
        run_dir = workspace.run_dir(run_name)
        if workspace.run_manifest(run_name).is_file():
            raise UsageError(
                f"--resume: run {run_name} already finished", hint="start a new run (a new train.run_name)"
            )
        if not (run_dir / FINGERPRINT_FILE).is_file():
            raise UsageError(f"--resume: {run_dir} is not a training run started by llmforge")
        old = json.loads((run_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
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
    else:
        run_name = (train_cfg.run_name or "<new>") if dry_run else _new_run_name(train_cfg, method, world)
        run_dir = workspace.run_dir(run_name)
        # rank 0 alone decides: the others would race with its mkdir
        if is_main and not dry_run and run_dir.exists() and any(run_dir.iterdir()):
            if not force:
                raise UsageError(
                    f"run folder already exists: {run_dir}",
                    hint="pass --force to replace it, --resume to continue it, or choose another train.run_name",
                )

    if init is not None and run_name == init["run"]:
        raise UsageError(
            f"train.init_from: run {run_name} cannot start from itself",
            hint="choose another train.run_name for the new run",
        )

    # 3. Tokenizer and the chat template trained with.
    from llmforge.training import template as template_mod

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
    checked = 0
    split_records = 0
    overlong = None
    if masked:
        # llmforge tokenizes and masks chat records itself, so the check below sees the very ids the trainer gets
        encoded = template_mod.encode(tokenizer, chosen, data.train.records)
        checked = template_mod.check_end_of_turn_trained(tokenizer, encoded, chosen.end_of_turn)
        split_records = encoded.split_records
        # Records over max_length: the stated policy, counted (the trainer would cut them without a word).
        overlong = template_mod.apply_overlong(encoded, train_cfg.max_length, train_cfg.overlong)
        if overlong["overlong"] and is_main and not dry_run:
            log.warning("%d of %d training samples are longer than train.max_length (%d tokens): train.overlong: %s "
                        "(%d truncated, %d dropped)", overlong["overlong"], overlong["rows"], train_cfg.max_length,
                        train_cfg.overlong, overlong["truncated"], overlong["dropped"])  # fmt: skip
        data.train_rows = encoded.rows
        if data.val is not None:
            val = template_mod.encode(tokenizer, chosen, data.val.records, "validation")
            overlong["validation"] = template_mod.apply_overlong(val, train_cfg.max_length, train_cfg.overlong)
            data.val_rows = val.rows

    # 4. The plan (all a dry run does).
    total, trainable, model_config = _count_params(model_cfg, train_cfg, method, tokenizer, init)
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
    plan = {
        "run": run_name,
        "method": method,
        "backend": backend,
        "backend_why": why,
        "four_bit": four_bit,
        "base_model": model_cfg.name if method != "scratch" else f"scratch {train_cfg.scratch.architecture}",
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_share": round(trainable / total, 6) if total else 0.0,
        "train_examples": len(data.train.records),
        "val_examples": len(data.val.records) if data.val else 0,
        "data_kind": data.train.kind,
        "tokens_per_epoch": tokens_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "steps": steps,
        "effective_batch": per_step,
        "learning_rate": lr,
        "precision": prec["_name"],
        "processes": world,
        "memory_estimate": _memory_estimate(total, trainable, model_config, train_cfg, method, prec),
        "chat_template": (chosen.source if chosen else None),
        "chat_template_family": (chosen.family if chosen else None),
        "loss_mask": (chosen.how if chosen else None),
        "chat_template_date": (chosen.date.strftime("%Y-%m-%d") if chosen and chosen.date else None),
        "records_split_per_turn": split_records,
        "end_of_turn_checked": checked,
        "overlong": overlong,
        "resume_from": str(resume_from) if resume_from else None,
        "resume_skipped": resume_skipped,
        "init_from": init["run"] if init else None,
        "notes": data.notes,
    }
    if dry_run:
        return {"dry_run": True, "is_main": is_main, **plan}
    if progress is not None and is_main:  # before the model loads: which backend and why, first thing in a log
        progress({"event": "begin", "run": run_name, "method": method, "backend": backend, "backend_why": why,
                  "total_steps": steps, "resume_from": plan["resume_from"]})

    # 5. Build the trainer. From here on the run folder exists.
    removed: list[Path] = []
    if is_main:
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # only reached with --force
        # what a killed run was writing under temporary names (its adapter/ or model/, a plot, the manifest)
        removed = atomic.remove_stale(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic.write_json(run_dir / FINGERPRINT_FILE, {**fp, "run": run_name, "started_at": manifest.now()})
        if chosen is not None:
            atomic.write_text(run_dir / TEMPLATE_FILE, chosen.saved_text)
        atomic.write_text(
            run_dir / "config.yaml",
            yaml.safe_dump(
                {"model": model_cfg.model_dump(mode="json"), "train": {**train_cfg.model_dump(mode="json"),
                                                                        "run_name": run_name}},
                sort_keys=False,
            ),
        )
    metrics_file = workspace.metrics_file(run_name)
    if is_main and resume_from is not None:
        from llmforge.training.callbacks import trim_metrics

        trim_metrics(metrics_file, int(resume_from.name.split("-")[-1]))
    elif is_main:
        metrics_file.unlink(missing_ok=True)

    from llmforge.training import trainers

    _quiet_libraries()
    from transformers import set_seed

    set_seed(train_cfg.seed)  # LoRA's random init and scratch weights happen before the Trainer seeds anything
    built = trainers.build(
        model_cfg, train_cfg, method, backend, data, tokenizer, prec, lr,
        output_dir=workspace.checkpoints_dir(run_name), world=world, init=init,
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

    runlog = RunLog(metrics_file, progress, is_main)
    stopper = StopOnSignal()
    trainer.add_callback(runlog)
    trainer.add_callback(stopper)
    trainer.add_callback(MarkComplete())
    if resume_from is not None and progress is not None and is_main:
        progress({"event": "resume", "checkpoint": str(resume_from), "skipped": resume_skipped})
    if train_cfg.early_stopping.patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(
            EarlyStoppingCallback(train_cfg.early_stopping.patience, train_cfg.early_stopping.threshold)
        )

    # 6. Train.
    stopper.install()
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    train_seconds = time.perf_counter() - started
    state = trainer.state
    if stopper.received is not None:
        import signal as _signal

        code = 130 if stopper.received == _signal.SIGINT else 143
        if not is_main:
            raise SystemExit(code)  # rank 0 alone reports, so the user reads one message
        from llmforge.training.callbacks import plot_loss

        plot_loss(metrics_file, run_dir / "loss.png")
        raise TrainingStopped(
            f"training stopped by signal {stopper.received} at step {state.global_step}; "
            f"checkpoint saved in {workspace.checkpoints_dir(run_name)}",
            run=run_name,
            exit_code=code,
        )

    final_eval = None
    if data.val is not None:
        final_eval = runlog.last_eval_loss if runlog.last_eval_step == state.global_step else None
        if final_eval is None:
            final_eval = trainer.evaluate().get("eval_loss")

    # 7. Outputs (rank 0): adapter or model, tokenizer + template, plot, manifest, registry.
    result = {
        "run": run_name,
        "run_dir": str(run_dir),
        "method": method,
        "backend": backend,
        "backend_why": why,
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "first_loss": runlog.first_loss,
        "final_loss": runlog.last_loss if runlog.last_loss is not None else output.training_loss,
        "train_loss": output.training_loss,
        "final_eval_loss": final_eval,
        "tokens_seen": int(state.num_input_tokens_seen or 0),
        "train_seconds": round(train_seconds, 3),
        "resumed_from": str(resume_from) if resume_from else None,
        "resume_skipped": resume_skipped,
        "init_from": init["run"] if init else None,
        "removed_temporaries": len(removed),
        "overlong": overlong,
        "is_main": is_main,
    }
    if not is_main:
        return result
    if built.is_adapter:
        out_key, out_dir = "adapter", workspace.adapter_dir(run_name)
    else:
        out_key, out_dir = "model", workspace.model_dir(run_name)
    with atomic.atomic_dir(out_dir, force=True) as tmp:
        trained = trainer.model
        if built.is_adapter:
            checkpoints.save_adapter(trained, tmp)
        else:
            checkpoints.save_model(trained, tmp)
        checkpoints.save_tokenizer(tokenizer, tmp, chosen.saved_text if chosen else None)
    # free the model and optimizer before matplotlib loads, so plotting never raises the run's peak memory
    del trained, trainer, built
    import gc

    gc.collect()
    from llmforge.training.callbacks import plot_loss

    plot = plot_loss(metrics_file, run_dir / "loss.png")
    base = checkpoints.model_ref(model_cfg.name) if model_cfg.name else model_cfg.name
    inputs = {"train_data": data.train.path}
    if data.val is not None:
        inputs["val_data"] = data.val.path
    m = manifest.build(
        "train",
        inputs=inputs,
        timer=timer,
        run=run_name,
        method=method,
        backend=backend,
        backend_why=why,
        base_model=base,
        revision=model_cfg.revision,
        scratch=train_cfg.scratch.model_dump(mode="json") if method == "scratch" else None,
        data_sha256=data.sha256,
        dataset_id=data.dataset_id,
        **{out_key: out_key},
        tokenizer=out_key,
        chat_template=TEMPLATE_FILE if chosen else None,
        chat_template_source=chosen.source if chosen else None,
        chat_template_family=chosen.family if chosen else None,
        loss_mask=plan["loss_mask"],
        chat_template_date=plan["chat_template_date"],
        records_split_per_turn=split_records if chosen else None,
        end_of_turn_checked=checked,
        overlong=overlong,
        end_of_turn=list(chosen.end_of_turn) if chosen else None,
        metrics="metrics.jsonl",
        loss_plot="loss.png" if plot else None,
        tensorboard=TENSORBOARD_DIR if (run_dir / TENSORBOARD_DIR).is_dir() else None,
        steps=state.global_step,
        epochs=result["epochs"],
        tokens_seen=result["tokens_seen"],
        parameters=total,
        trainable_parameters=trainable,
        first_loss=result["first_loss"],
        final_loss=result["final_loss"],
        final_eval_loss=final_eval,
        train_seconds=result["train_seconds"],
        precision=prec["_name"],
        processes=world,
        resumed_from=str(resume_from) if resume_from else None,
        resume_skipped=resume_skipped,
        init_from=init["run"] if init else None,
    )
    atomic.write_json(workspace.run_manifest(run_name), m)
    # a continued run's parent is the run it started from (run -> run in `llmforge runs`); its data stays named
    registry.record(
        workspace.registry_file, "run", run_name, parent=init["run"] if init else data.dataset_id,
        path=str(run_dir), status="complete", method=method, base_model=base, dataset=data.dataset_id,
        metrics={k: v for k, v in (("loss", result["final_loss"]), ("eval_loss", final_eval),
                                   ("steps", state.global_step)) if v is not None},
    )
    result.update(output=str(out_dir), manifest=str(workspace.run_manifest(run_name)),
                  wall_seconds=m["wall_seconds"])
    return result
