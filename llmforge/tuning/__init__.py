"""`llmforge tune`: a resumable Optuna search over train.* values, each trial a real `llmforge train` run.

The verb takes the `model`, `train` and `tune` config sections; optuna and the training stack are imported inside
it so that importing this package stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmforge.config.model import ModelConfig
    from llmforge.config.train import TrainConfig
    from llmforge.config.tune import TuneConfig
    from llmforge.workspace import Workspace

ProgressFn = Callable[[dict[str, Any]], None]


def tune(
    model: ModelConfig,
    train: TrainConfig,
    tune: TuneConfig,
    workspace: Workspace,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run trials until the study in tune/<study>.db holds tune.trials of them (a rerun continues it), each a
    `train` run named tune-<study>-<n> with the trial's values in `train`; write tune/<study>/results.json and
    trials.png. Returns {"study", "database", "trials": [...], "best": {...} | None, "results", "plot"}.

    `progress` receives {"event": "trial", "number", "run", "params"} before each trial and {"event":
    "trial_done", "number", "state", "value"} after it.
    """
    from llmforge.errors import require_extra

    require_extra("llmforge tune", "tune", "optuna")
    require_extra("llmforge tune", "train", "torch", "transformers", "peft", "trl", "datasets", "accelerate")
    from llmforge.tuning import search

    return search.run(model, train, tune, workspace, progress=progress)


def check_space(space: dict[str, Any], train: TrainConfig) -> None:
    """Raise ConfigError naming the tune.space key that is not a train.* value, or whose range or choices the
    train section would refuse."""
    from llmforge.tuning import space as space_mod

    space_mod.check(space, train)


def apply_best(config_file: Path, params: dict[str, Any]) -> Path:
    """Write `params` (dotted train.* keys) into the YAML file, atomically, keeping every other key."""
    from llmforge.tuning import space as space_mod

    return space_mod.apply_to_yaml(config_file, params)


__all__ = ["tune", "check_space", "apply_best"]
