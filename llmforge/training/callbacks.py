"""Trainer callbacks: metrics.jsonl rows and progress events (rank 0 only), a clean stop on SIGINT/SIGTERM, and a
completion marker in each checkpoint."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmforge.training import StopTraining

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class RunLog(TrainerCallback):
    """Writes one metrics.jsonl row per log step (tokens/s measured between logs) and feeds the progress callback."""

    def __init__(self, metrics_file: Path, progress: ProgressFn | None, is_main: bool):
        self.metrics_file = metrics_file
        self.progress = progress if is_main else None
        self.is_main = is_main
        self.last_time: float | None = None
        self.last_tokens = 0
        self.rate = 0.0
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None
        self.first_loss: float | None = None
        self.last_lr: float | None = None

    def _emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            try:
                self.progress(event)
            except StopTraining:  # the caller's own decision to end the run (tune's pruner), not a display problem
                raise
            except Exception:  # a display problem must never stop training
                log.exception("progress callback failed")

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time = time.perf_counter()
        self.last_tokens = state.num_input_tokens_seen or 0
        self._emit({"event": "start", "step": state.global_step, "total_steps": state.max_steps})

    def on_step_end(self, args, state, control, **kwargs):
        tokens = state.num_input_tokens_seen or 0
        now = time.perf_counter()
        if self.last_time is not None and now > self.last_time and tokens > self.last_tokens:
            # smoothed between logs so the bar's tokens/s is steady
            instant = (tokens - self.last_tokens) / (now - self.last_time)
            self.rate = instant if self.rate == 0 else 0.8 * self.rate + 0.2 * instant
        self.last_time, self.last_tokens = now, tokens
        self._emit(
            {
                "event": "step",
                "step": state.global_step,
                "total_steps": state.max_steps,
                "loss": self.last_loss,
                "learning_rate": self.last_lr,
                "tokens_per_second": round(self.rate, 1),
            }
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            row["loss"] = logs["loss"]
            self.last_loss = logs["loss"]
            if self.first_loss is None:
                self.first_loss = logs["loss"]
            row["learning_rate"] = logs.get("learning_rate")
            self.last_lr = row["learning_rate"]
            row["tokens_per_second"] = round(self.rate, 1)
            row["tokens_seen"] = state.num_input_tokens_seen
            if "grad_norm" in logs:
                row["grad_norm"] = logs["grad_norm"]
            self._emit({"event": "log", "step": state.global_step, "total_steps": state.max_steps,
                        "loss": row["loss"], "learning_rate": row["learning_rate"],
                        "tokens_per_second": row["tokens_per_second"]})
        elif "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
            self.last_eval_loss = logs["eval_loss"]
            self.last_eval_step = state.global_step
            self._emit({"event": "eval", "step": state.global_step, "total_steps": state.max_steps,
                        "eval_loss": logs["eval_loss"]})
        else:
            return  # the end-of-training summary row (train_runtime ...) goes to the manifest instead
        for key, value in logs.items():
            # each preference method's own figures: DPO/ORPO/KTO rewards, ORPO's odds ratio, KTO's KL estimate
            if key.startswith(("rewards/", "logps/")) or key in (
                "eval_runtime", "kl", "nll_loss", "log_odds_ratio", "log_odds_chosen"
            ):
                row[key] = value
        if self.is_main:
            with open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")


class StopOnSignal(TrainerCallback):
    """The first SIGINT/SIGTERM asks the trainer to save a checkpoint at the end of this step and stop; a second
    one interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a notebook worker): no signal handling
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.uninstall()
            raise KeyboardInterrupt
        self.received = signum
        log.warning("signal %s: saving a checkpoint after this step, then stopping", signum)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received is not None
        if args.world_size > 1:
            # every process must stop at the same step, or the others wait forever in the next all-reduce
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
            if stop and self.received is None:
                self.received = signal.SIGTERM
        if stop:
            control.should_save = True
            control.should_training_stop = True
        return control


class MarkComplete(TrainerCallback):
    """Vouches for each checkpoint once the Trainer has saved all of it (trainer_state.json is its last file): writes
    checkpoint-<step>/llmforge-complete.json, so a resume never starts from a checkpoint cut off by kill -9."""

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:
            # the other processes write their own rng_state_<rank>.pth: rank 0 vouches only after all have
            import torch.distributed as dist

            dist.barrier()
        if state.is_world_process_zero:
            from llmforge.training import resume

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                resume.write_marker(folder, state.global_step)
        return control


def trim_metrics(metrics_file: Path, after_step: int) -> None:
    """On resume, drop rows a killed run logged after the checkpoint it resumes from (they will be logged again)."""
    if not metrics_file.is_file():
        return
    keep = []
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                keep.append(line)
        except ValueError:
            continue
    from llmforge.atomic import write_text

    write_text(metrics_file, "".join(k + "\n" for k in keep))


def plot_loss(metrics_file: Path, out_file: Path) -> Path | None:
    """loss.png: training loss (and eval loss) by step."""
    if not metrics_file.is_file():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmforge.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_file) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_file
