"""Evaluation: metrics for one model form, or a side-by-side comparison of base, fine-tuned, exported and deployed
forms on the same examples and decoding, written to eval/<stamp>/ (report.md, report.json, plots).

The stage's two verbs: plan() resolves the targets and examples and returns an EvalPlan, run(plan) evaluates and
returns an EvalResult (llmforge/evaluation/stage.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmforge.config.eval import EvalConfig
from llmforge.config.model import ModelConfig
from llmforge.evaluation.stage import EvalPlan, EvalResult
from llmforge.workspace import Workspace

Progress = Callable[[str, str, int, int], None]  # (target label, phase, done, total)


def plan(
    model: ModelConfig,
    eval: EvalConfig,
    workspace: Workspace | Path,
    *,
    targets: str | list[str] | None = None,
    compare: str | list[str] | None = None,
    stamp: str | None = None,
) -> EvalPlan:
    """Decide what is evaluated: `targets` (one spec or a list; `compare` a comma list; default eval.targets) on the
    test split, every target resolved before any model loads.

    Each target is one of base, run[:NAME], gguf:QUANT, ollama:NAME, http://... or a model folder / .gguf file."""
    from llmforge.errors import require_extra

    require_extra("llmforge eval", "eval", "sacrebleu", "rouge_score", "numpy")
    from llmforge.evaluation import stage

    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    return stage.plan(model, eval, ws, targets=targets, compare=compare, stamp=stamp)


def run(plan: EvalPlan, *, progress: Progress | None = None) -> EvalResult:
    """Evaluate every planned target and write eval/<stamp>/. A target that fails is reported with its error while
    the others still run. `progress(target, phase, done, total)` is called as work proceeds (phases: load, loss,
    generate, judge, done)."""
    from llmforge.evaluation import stage

    return stage.run(plan, progress=progress)


def evaluate(
    model: ModelConfig,
    eval: EvalConfig,
    workspace: Workspace | Path,
    *,
    targets: str | list[str] | None = None,
    compare: str | list[str] | None = None,
    progress: Progress | None = None,
    stamp: str | None = None,
) -> EvalResult:
    """plan() then run(), for callers with nothing to show in between."""
    return run(plan(model, eval, workspace, targets=targets, compare=compare, stamp=stamp), progress=progress)


__all__ = ["EvalPlan", "EvalResult", "evaluate", "plan", "run"]
