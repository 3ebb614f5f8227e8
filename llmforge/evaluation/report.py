"""The evaluation report: report.json (machines), report.md (people), predictions.jsonl and PNG plots."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from llmforge.evaluation.comparison import METRIC_KEYS, TargetResult
from llmforge.evaluation.examples import Example
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)

SCALES = (
    "bleu and chrf: sacrebleu corpus scores, 0-100; rouge1/rouge2/rougeL: rouge-score F-measure averaged over "
    "examples, 0-1; exact_match and f1: SQuAD-normalised, 0-1; loss: mean NLL per scored (assistant) token, nats; "
    "perplexity: exp(loss). Lower is better for loss and perplexity only."
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def build(stamp: str, results: list[TargetResult], items: list[Example], data: Path, reference: str | None,
          deltas: dict[str, dict], decoding: dict, judge: dict | None, extra: dict) -> dict[str, Any]:
    return _clean({
        "stamp": stamp,
        "data": {"path": str(data), "examples": len(items), "generation_examples": sum(e.generates for e in items)},
        "decoding": decoding,
        "reference": reference,
        "metrics": {r.label: r.metrics for r in results if r.ok},
        "deltas": deltas,
        "targets": [r.summary() for r in results],
        "failed": {r.label: {"error": r.error, "hint": r.hint} for r in results if not r.ok},
        "judge": judge,
        "scales": SCALES,
        **extra,
    })


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation {report['stamp']}", ""]
    d = report["data"]
    lines += [f"Data: `{d['path']}`: {d['examples']} examples, {d['generation_examples']} with a reference answer.",
              f"Decoding: {', '.join(f'{k}={v}' for k, v in report['decoding'].items())}.", ""]
    keys = [k for k in METRIC_KEYS + ["latency_s", "tokens_per_second"]
            if any(k in ms and ms[k] is not None for ms in report["metrics"].values())]
    judge_keys = sorted({k for ms in report["metrics"].values() for k in ms if k.startswith("judge_")})
    keys += judge_keys
    # the user's own eval.metrics functions, under their names, after the built-in ones, in the config's order
    keys += dict.fromkeys(k for ms in report["metrics"].values() for k, v in ms.items() if v is not None and k not in keys)
    lines += ["| target | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for t in report["targets"]:
        if t["error"]:
            lines.append(f"| {t['label']} | FAILED: {t['error']} |" + " |" * (len(keys) - 1))
            continue
        ms = report["metrics"][t["label"]]
        lines.append(f"| {t['label']} | " + " | ".join(_fmt(ms.get(k)) for k in keys) + " |")
    lines.append("")
    if report["deltas"]:
        lines += [f"## Deltas against `{report['reference']}` (95% paired bootstrap intervals)", ""]
        for label, per in report["deltas"].items():
            lines.append(f"- **{label}**: " + "; ".join(
                f"{k} {v['delta']:+.4g}" + (f" [{v['low']:+.4g}, {v['high']:+.4g}]" if v.get("low") is not None else "")
                for k, v in per.items() if v.get("delta") is not None))
        lines.append("")
    if report["failed"]:
        lines += ["## Failed targets", ""]
        for label, f in report["failed"].items():
            lines.append(f"- **{label}**: {f['error']}" + (f" (hint: {f['hint']})" if f.get("hint") else ""))
        lines.append("")
    notes = [t for t in report["targets"] if t.get("judge_error")]
    for t in notes:
        lines.append(f"- judge failed for {t['label']}: {t['judge_error']}")
    lines += ["## Notes", "", report["scales"], ""]
    for t in report["targets"]:
        if t["error"] is None:
            lines.append(f"- {t['label']}: {t['kind']}, {t['generated']} generated, {t['cached']} from cache, "
                         f"scored tokens: {t['mask'] or 'n/a'}, {t['seconds']} s.")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def predictions_jsonl(results: list[TargetResult], items: list[Example]) -> str:
    rows = []
    by_target = {r.label: {p["index"]: p for p in r.predictions or []} for r in results if r.ok}
    nll = {r.label: r.nll for r in results if r.ok and r.nll}
    for ex in items:
        row: dict[str, Any] = {"index": ex.index, "line": ex.line, "prompt": ex.prompt, "reference": ex.reference,
                               "targets": {}}
        for label, preds in by_target.items():
            entry: dict[str, Any] = {}
            if ex.index in preds:
                p = preds[ex.index]
                entry.update(prediction=p["text"], scores=p.get("scores"), seconds=p["seconds"],
                             new_tokens=p.get("new_tokens"))
            if label in nll:
                s, n = nll[label][ex.index]
                entry["loss"] = s / n if n else None
            row["targets"][label] = entry
        rows.append(json.dumps(_clean(row), ensure_ascii=False))
    return "\n".join(rows) + "\n"


def plots(folder: Path, report: dict[str, Any], results: list[TargetResult], workspace: Workspace) -> list[str]:
    """Write the PNGs; returns their file names. Plotting problems never fail the evaluation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots")
        return []
    written = []
    ok = [r for r in results if r.ok]
    groups = [("text metrics (0-1)", ["rouge1", "rouge2", "rougeL", "exact_match", "f1"]),
              ("sacrebleu (0-100)", ["bleu", "chrf"]), ("perplexity", ["perplexity"])]
    groups = [(title, [k for k in keys if any(r.metrics.get(k) is not None for r in ok)]) for title, keys in groups]
    groups = [g for g in groups if g[1]]
    if ok and groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        width = 0.8 / len(ok)
        for ax, (title, keys) in zip(axes[0], groups):
            for j, r in enumerate(ok):
                xs = [i + j * width for i in range(len(keys))]
                ax.bar(xs, [r.metrics.get(k) or 0.0 for k in keys], width, label=r.label)
            ax.set_xticks([i + width * (len(ok) - 1) / 2 for i in range(len(keys))], keys)
            ax.set_title(title)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "metrics.png", dpi=100)
        plt.close(fig)
        written.append("metrics.png")
    runs = sorted({r.run for r in ok if r.run and r.kind == "hf"})
    curves = {run: _metrics_rows(workspace.metrics_file(run)) for run in runs}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for run, rows in curves.items():
            train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and "step" in r]
            evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None and "step" in r]
            if train:
                ax.plot(*zip(*train), label=f"{run} train loss")
            if evals:
                ax.plot(*zip(*evals), marker="o", label=f"{run} eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "loss_curves.png", dpi=100)
        plt.close(fig)
        written.append("loss_curves.png")
    reference = next((r for r in ok if r.label == report.get("reference")), None)
    others = [r for r in ok if r is not reference]
    if reference is not None and others:
        panels = []
        if reference.predictions and any(r.predictions for r in others):
            panels.append((f"per-example token F1 minus {reference.label}", "f1"))
        if reference.nll and any(r.nll for r in others):
            panels.append((f"per-example loss (nats/token) minus {reference.label}", "loss"))
        if panels:
            fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), squeeze=False)
            for ax, (title, kind) in zip(axes[:, 0], panels):
                for r in others:
                    diffs = _per_example_diffs(reference, r, kind)
                    if diffs:
                        ax.plot(sorted(diffs), marker=".", linestyle="-", label=r.label)
                ax.axhline(0, color="grey", linewidth=0.8)
                ax.set_title(title)
                ax.set_xlabel("examples, sorted by difference")
                ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(folder / "per_example.png", dpi=100)
            plt.close(fig)
            written.append("per_example.png")
    return written


def _per_example_diffs(reference: TargetResult, other: TargetResult, kind: str) -> list[float]:
    if kind == "f1":
        ref = {p["index"]: p["scores"]["f1"] for p in reference.predictions or [] if p.get("scores")}
        return [p["scores"]["f1"] - ref[p["index"]] for p in other.predictions or []
                if p.get("scores") and p["index"] in ref]
    if not reference.nll or not other.nll:
        return []
    return [(b[0] / b[1]) - (a[0] / a[1]) for a, b in zip(reference.nll, other.nll) if a[1] and b[1]]


def _metrics_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
