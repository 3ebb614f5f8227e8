"""`tune:` the hyperparameter search of `llmforge tune`: how many trials, and which train.* values to try."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from llmforge.config.base import COUNT_MAX, SEED_MAX, FolderName, Section


class TuneConfig(Section):
    study: FolderName = Field("study", description="Study name: tune/<study>.db (resumable) and tune/<study>/.")
    trials: int = Field(8, ge=1, le=COUNT_MAX, description="Trials to have in the study; a rerun adds the rest.")
    metric: Literal["eval_loss"] = Field(
        "eval_loss", description="What each trial minimises: the final eval loss (needs a validation split)."
    )
    prune: bool = Field(
        True, description="Stop trials whose intermediate eval losses (train.eval_every) trail the others (median)."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the sampler (TPE).")
    space: dict[str, Any] = Field(
        default_factory=dict,
        description="train.* key -> a list of choices, or {low, high, log} for a number range "
        "(e.g. train.learning_rate: {low: 1e-5, high: 1e-3, log: true}, train.lora.rank: [4, 8, 16]).",
    )
