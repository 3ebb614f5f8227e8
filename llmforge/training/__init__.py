"""`llmforge train`: pretrain from scratch, full SFT, LoRA, QLoRA, DPO, ORPO or KTO, with resume, progress and
clean stops.

The verb takes the `model` and `train` config sections; the implementation modules are imported inside it so
that importing this package stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmforge.config.model import ModelConfig
    from llmforge.config.train import TrainConfig
    from llmforge.workspace import Workspace

ProgressFn = Callable[[dict[str, Any]], None]


class StopTraining(Exception):
    """Raised by a progress callback to end the run at once, unfinished (no final outputs): `llmforge tune` prunes
    a trial this way. Any other exception from the callback is logged and training goes on."""


def train(
    model: ModelConfig,
    train: TrainConfig,
    workspace: Workspace,
    *,
    resume: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train as `train` says, starting from `model` (unused for scratch), reading data from the workspace (or
    `train.data`) and writing `runs/<run>/`. Returns the result (or, with dry_run, the plan) as a dict.

    `progress` receives events on the main process only: "begin" (run, method, backend, backend_why, total_steps,
    resume_from) before the model loads; on a resume, {"event": "resume", "checkpoint", "skipped": [{"checkpoint",
    "reason"}]} (newer checkpoints passed over because they are incomplete); then {"event": "start"|"step"|"log"|
    "eval", "step", "total_steps", "loss", "learning_rate", "tokens_per_second", "eval_loss"}: "step" after every
    step, "log" every train.logging_steps, "eval" after each evaluation.
    A callback that raises StopTraining ends the run there; the exception reaches the caller.
    """
    from llmforge.errors import require_extra

    require_extra("llmforge train", "train", "torch", "transformers", "peft", "trl", "datasets", "accelerate")
    from llmforge.training import runner

    return runner.run(model, train, workspace, resume=resume, force=force, dry_run=dry_run, progress=progress)


def relaunch(argv: list[str], nproc: int, run_name: str | None, accelerate_config: str | None = None) -> int:
    """Run `llmforge train <argv>` again under torchrun (or accelerate with a config) with `nproc` processes."""
    from llmforge.training import launch

    return launch.relaunch(argv, nproc, run_name, accelerate_config)


__all__ = ["train", "relaunch", "StopTraining"]
