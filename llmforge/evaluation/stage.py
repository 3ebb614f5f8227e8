"""The eval stage in two parts: plan() decides what is evaluated (the targets, each resolved; the examples; the
decoding) before any model loads, run(plan) evaluates each target in turn and writes eval/<stamp>/ (report.md,
report.json, predictions, plots, manifest). The per-target work is in comparison.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import UsageError
from llmforge.workspace import Workspace, check_name, timestamp


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show."""

    model_cfg: Any
    eval_cfg: Any
    workspace: Workspace
    items: list[Any]  # examples.Example
    resolved: list[Any]  # targets.Target, one per spec
    custom: list[tuple[str, Any]]  # the user's eval.metrics functions
    timer: Any  # manifest.Timer


@dataclass(frozen=True)
class EvalPlan:
    """An evaluation decided but not started. as_dict() is what a dry run would show."""

    targets: list[str]  # the specs, in report order
    data: str  # the examples' file
    examples: int
    decoding: dict[str, Any]
    judge: dict[str, Any] | None
    stamp: str | None  # eval/<stamp>/; None: the time it finishes
    prepared: _Prepared = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "data": self.data, "examples": self.examples, "decoding": self.decoding,
                "judge": self.judge, "stamp": self.stamp}  # fmt: skip


@dataclass(frozen=True)
class EvalResult:
    """What `run` returns: the report (as written to report.json) and where it lies."""

    report: dict[str, Any]
    folder: Path
    failed: list[str] = field(default_factory=list)  # labels of the targets that failed

    @property
    def exit_code(self) -> int:
        """0 when every target reported, 1 when any failed (the others still report)."""
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        """`llmforge eval --json`: the report, then the folder."""
        return self.report | {"folder": str(self.folder)}


def plan(model_cfg, eval_cfg, workspace: Workspace, *, targets: str | list[str] | None = None,
         compare: str | list[str] | None = None, stamp: str | None = None) -> EvalPlan:
    """Decide the evaluation: `targets` (one spec or a list; `compare` a comma list; default eval.targets), the
    examples of the test split (or eval.data), every target resolved. Names that become paths are checked here, so
    a typo is the user's to fix (exit 2) before any target loads, not one failed target."""
    from llmforge.evaluation.comparison import decoding_of, prepare
    from llmforge.evaluation.targets import split_specs
    from llmforge.manifest import Timer

    specs = split_specs(compare) if compare else split_specs(targets) if targets else split_specs(eval_cfg.targets)
    for spec in specs:
        if spec.startswith("run:"):
            check_name(spec.split(":", 1)[1], f"eval target {spec}")
    if stamp is not None:
        check_name(stamp, "eval stamp")
    if not specs:
        raise UsageError("no targets to evaluate", hint="e.g. llmforge eval --compare base,run")
    timer = Timer()
    items, data, custom, resolved = prepare(specs, model_cfg, eval_cfg, workspace)
    judge = None
    if eval_cfg.judge.endpoint:
        judge = {"endpoint": eval_cfg.judge.endpoint, "model": eval_cfg.judge.model,
                 "criteria": eval_cfg.judge.criteria, "scale": eval_cfg.judge.scale}  # fmt: skip
    return EvalPlan(
        targets=specs,
        data=str(data),
        examples=len(items),
        decoding=decoding_of(eval_cfg),
        judge=judge,
        stamp=stamp,
        prepared=_Prepared(model_cfg, eval_cfg, workspace, items, resolved, custom, timer),
    )


def run(plan: EvalPlan, *, progress=None) -> EvalResult:
    """Evaluate every target (one failing alone), compare each with the reference (base, else the first that
    reported), and write eval/<stamp>/ and the registry entry. `progress(target, phase, done, total)` is called as
    work proceeds (phases: load, loss, generate, judge, done)."""
    from llmforge.evaluation import report as report_io
    from llmforge.evaluation.comparison import deltas, evaluate_all

    p = plan.prepared
    eval_cfg, ws = p.eval_cfg, p.workspace
    results = evaluate_all(plan.targets, p.resolved, p.items, p.model_cfg, eval_cfg, ws, p.custom, progress)
    ok = [r for r in results if r.ok]
    reference = next((r for r in ok if r.spec == "base"), ok[0] if ok else None)
    compared = {}
    if reference is not None:
        for r in ok:
            if r is not reference:
                compared[r.label] = deltas(reference, r, eval_cfg)
    folder = _new_folder(ws, plan.stamp or timestamp())
    run_name = next((r.run for r in results if r.run), None)
    report = report_io.build(folder.name, results, p.items, Path(plan.data), reference.label if reference else None,
                             compared, plan.decoding, plan.judge, {"run": run_name})  # fmt: skip
    _write_folder(plan, folder, report, results)
    _record(plan, folder, report, results, reference, run_name)
    return EvalResult(report=report, folder=folder, failed=[r.label for r in results if not r.ok])


def _new_folder(ws: Workspace, stamp: str) -> Path:
    folder = ws.eval_dir(stamp)
    n = 2
    while folder.exists():  # two evals within one second
        folder = ws.eval_dir(f"{stamp}-{n}")
        n += 1
    return folder


def _write_folder(plan: EvalPlan, folder: Path, report: dict[str, Any], results: list) -> None:
    """eval/<stamp>/, appearing at once: plots, report.json and .md, predictions, config, manifest."""
    import yaml

    from llmforge import atomic
    from llmforge.evaluation import report as report_io
    from llmforge.manifest import build

    p = plan.prepared
    with atomic.atomic_dir(folder) as tmp:
        report["plots"] = report_io.plots(tmp, report, results, p.workspace)
        atomic.write_json(tmp / "report.json", report)
        atomic.write_text(tmp / "report.md", report_io.markdown(report))
        atomic.write_text(tmp / "predictions.jsonl", report_io.predictions_jsonl(results, p.items))
        atomic.write_text(tmp / "config.yaml", yaml.safe_dump(
            {"model": p.model_cfg.model_dump(mode="json"), "eval": p.eval_cfg.model_dump(mode="json")},
            sort_keys=False))  # fmt: skip
        # Hash the data and the adapters (small); weights are identified by each target's fingerprint instead,
        # since re-reading gigabytes of checkpoints and GGUFs on every eval would cost more than the eval.
        inputs: dict[str, Path | str] = {"data": Path(plan.data)}
        for r in results:
            if r.ok and r.adapter:
                inputs[f"{r.label} adapter"] = r.adapter
        atomic.write_json(tmp / "manifest.json", build(
            "eval", inputs, p.timer, targets=[r.summary() for r in results],
            failed=sorted(report["failed"])))  # fmt: skip


def _record(plan: EvalPlan, folder: Path, report: dict[str, Any], results: list, reference, run_name) -> None:
    """The registry entry. `llmforge runs` shows a flat metrics dict: the run's own numbers (else the first target
    that reported)."""
    from llmforge import registry

    ok = [r for r in results if r.ok]
    headline = next((r for r in ok if r.run and r.kind == "hf"), next((r for r in ok if r is not reference),
                                                                      reference))  # fmt: skip
    flat = {} if headline is None else {
        k: headline.metrics.get(k) for k in ("exact_match", "f1", "perplexity", "bleu", "rougeL", "chrf")
        if headline.metrics.get(k) is not None}  # fmt: skip
    failed = sorted(report["failed"])
    registry.record(plan.prepared.workspace.registry_file, "eval", f"eval-{folder.name}", parent=run_name,
                    path=str(folder), status=f"{len(failed)} of {len(results)} targets failed" if failed else "complete",
                    metrics=flat, metrics_of=headline.label if headline else None,
                    targets=[r.label for r in results], failed=failed)  # fmt: skip
