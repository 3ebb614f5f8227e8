"""`llmforge train`: pretrain from scratch, full SFT, LoRA, QLoRA, DPO, ORPO or KTO, with resume, progress and
clean stops.

The stage's two verbs: plan() takes the `model` and `train` config sections and returns a TrainPlan, run(plan)
trains and returns a TrainResult (llmforge/training/stage.py). The implementation modules are imported inside
them so that importing this package stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmforge.config.model import ModelConfig
    from llmforge.config.train import TrainConfig
    from llmforge.training.stage import TrainPlan, TrainResult
    from llmforge.workspace import Workspace

ProgressFn = Callable[[dict[str, Any]], None]


class StopTraining(Exception):
    """Raised by a progress callback to end the run at once, unfinished (no final outputs): `llmforge tune` prunes
    a trial this way. Any other exception from the callback is logged and training goes on."""


def plan(
    model: ModelConfig, train: TrainConfig, workspace: Workspace, *, resume: bool = False, force: bool = False
) -> TrainPlan:
    """Decide a run as `train` says, starting from `model` (unused for scratch), reading data from the workspace
    (or `train.data`): the checks, the run to resume, the tokenizer and template, the run's size. Trains and
    writes nothing; the plan is what `llmforge train --dry-run` shows and all `run` needs."""
    from llmforge.errors import require_extra

    require_extra("llmforge train", "train", "torch", "transformers", "peft", "trl", "datasets", "accelerate")
    from llmforge.training import stage

    return stage.plan(model, train, workspace, resume=resume, force=force)


def run(plan: TrainPlan, *, progress: ProgressFn | None = None) -> TrainResult:
    """Train as planned, writing `runs/<run>/`.

    `progress` receives events on the main process only: "begin" (run, method, backend, backend_why, total_steps,
    resume_from) before the model loads; on a resume, {"event": "resume", "checkpoint", "skipped": [{"checkpoint",
    "reason"}]} (newer checkpoints passed over because they are incomplete); then {"event": "start"|"step"|"log"|
    "eval", "step", "total_steps", "loss", "learning_rate", "tokens_per_second", "eval_loss"}: "step" after every
    step, "log" every train.logging_steps, "eval" after each evaluation.
    A callback that raises StopTraining ends the run there; the exception reaches the caller.
    """
    from llmforge.training import stage

    return stage.run(plan, progress=progress)


def train(
    model: ModelConfig,
    train: TrainConfig,
    workspace: Workspace,
    *,
    resume: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """plan() then run(), for callers with nothing to show in between (`llmforge tune`'s trials)."""
    return run(plan(model, train, workspace, resume=resume, force=force), progress=progress)


def relaunch(argv: list[str], nproc: int, run_name: str | None, accelerate_config: str | None = None) -> int:
    """Run `llmforge train <argv>` again under torchrun (or accelerate with a config) with `nproc` processes."""
    from llmforge.training import launch

    return launch.relaunch(argv, nproc, run_name, accelerate_config)


__all__ = ["plan", "run", "train", "relaunch", "StopTraining"]
