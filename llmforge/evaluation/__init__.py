"""Evaluation: metrics for one model form, or a side-by-side comparison of base, fine-tuned, exported and deployed
forms on the same examples and decoding, written to eval/<stamp>/ (report.md, report.json, plots)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.config.eval import EvalConfig
from llmforge.config.model import ModelConfig
from llmforge.errors import UsageError
from llmforge.workspace import Workspace, check_name, timestamp

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What `evaluate` returns: the report (as written to report.json) and where it lies."""

    report: dict[str, Any]
    folder: Path
    failed: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every target reported, 1 when any failed (the others still report)."""
        return 1 if self.failed else 0


def evaluate(
    model: ModelConfig,
    eval: EvalConfig,
    workspace: Workspace | Path,
    *,
    targets: str | list[str] | None = None,
    compare: str | list[str] | None = None,
    progress: Callable[[str, str, int, int], None] | None = None,
    stamp: str | None = None,
) -> EvalResult:
    """Evaluate `targets` (one spec or a list; `compare` a comma list; default eval.targets) on the test split.

    Each target is one of base, run[:NAME], gguf:QUANT, ollama:NAME, http://... or a model folder / .gguf file.
    A target that fails is reported with its error while the others still run. `progress(target, phase, done,
    total)` is called as work proceeds (phases: load, loss, generate, judge, done)."""
    from llmforge.errors import require_extra

    require_extra("llmforge eval", "eval", "sacrebleu", "rouge_score", "numpy")
    from llmforge import atomic, registry
    from llmforge.evaluation import report as report_io
    from llmforge.evaluation.comparison import compare as run_compare
    from llmforge.evaluation.comparison import decoding_of, deltas
    from llmforge.evaluation.targets import split_specs
    from llmforge.manifest import Timer, build

    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    specs = split_specs(compare) if compare else split_specs(targets) if targets else split_specs(eval.targets)
    # Names that become paths are the user's to fix (exit 2) before any target loads, not one failed target
    for spec in specs:
        if spec.startswith("run:"):
            check_name(spec.split(":", 1)[1], f"eval target {spec}")
    if stamp is not None:
        check_name(stamp, "eval stamp")
    if not specs:
        raise UsageError("no targets to evaluate", hint="e.g. llmforge eval --compare base,run")
    timer = Timer()
    results, items, data = run_compare(specs, model, eval, ws, progress)

    ok = [r for r in results if r.ok]
    reference = next((r for r in ok if r.spec == "base"), ok[0] if ok else None)
    compared = {}
    if reference is not None:
        for r in ok:
            if r is not reference:
                compared[r.label] = deltas(reference, r, eval)
    judge = None
    if eval.judge.endpoint:
        judge = {"endpoint": eval.judge.endpoint, "model": eval.judge.model, "criteria": eval.judge.criteria,
                 "scale": eval.judge.scale}

    stamp = stamp or timestamp()
    folder = ws.eval_dir(stamp)
    n = 2
    while folder.exists():  # two evals within one second
        folder = ws.eval_dir(f"{stamp}-{n}")
        n += 1
    stamp = folder.name
    run = next((r.run for r in results if r.run), None)
    report = report_io.build(stamp, results, items, data, reference.label if reference else None, compared,
                             decoding_of(eval), judge, {"run": run})
    import yaml

    with atomic.atomic_dir(folder) as tmp:
        report["plots"] = report_io.plots(tmp, report, results, ws)
        atomic.write_json(tmp / "report.json", report)
        atomic.write_text(tmp / "report.md", report_io.markdown(report))
        atomic.write_text(tmp / "predictions.jsonl", report_io.predictions_jsonl(results, items))
        atomic.write_text(tmp / "config.yaml", yaml.safe_dump(
            {"model": model.model_dump(mode="json"), "eval": eval.model_dump(mode="json")}, sort_keys=False))
        # Hash the data and the adapters (small); weights are identified by each target's fingerprint instead,
        # since re-reading gigabytes of checkpoints and GGUFs on every eval would cost more than the eval.
        inputs: dict[str, Path | str] = {"data": data}
        for r in results:
            if r.ok and r.adapter:
                inputs[f"{r.label} adapter"] = r.adapter
        atomic.write_json(tmp / "manifest.json", build(
            "eval", inputs, timer, targets=[r.summary() for r in results],
            failed=sorted(report["failed"])))
    # `llmforge runs` shows a flat metrics dict: the run's own numbers (else the first target that reported).
    headline = next((r for r in ok if r.run and r.kind == "hf"), next((r for r in ok if r is not reference),
                                                                      reference))
    flat = {} if headline is None else {
        k: headline.metrics.get(k) for k in ("exact_match", "f1", "perplexity", "bleu", "rougeL", "chrf")
        if headline.metrics.get(k) is not None}
    failed = sorted(report["failed"])
    registry.record(ws.registry_file, "eval", f"eval-{stamp}", parent=run, path=str(folder),
                    status=f"{len(failed)} of {len(results)} targets failed" if failed else "complete",
                    metrics=flat, metrics_of=headline.label if headline else None,
                    targets=[r.label for r in results], failed=failed)
    return EvalResult(report=report, folder=folder, failed=[r.label for r in results if not r.ok])


__all__ = ["EvalResult", "evaluate"]
