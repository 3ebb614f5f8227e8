"""`llmforge serve report`: the A/B variants compared from serve's conversation logs, written to
serve/reports/<stamp>/ as report.json (machines) and report.md (people), as `llmforge eval` writes its report."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from llmforge import atomic
from llmforge.errors import UsageError
from llmforge.serving.conversations import ConversationLog, feedback_dir
from llmforge.workspace import Workspace, timestamp


def build(folder: Path) -> dict[str, Any]:
    """Per A/B group and variant: requests, share, tokens, latency, finish reasons and user feedback, with each
    variant's differences from the group's first (by name). Feedback is a record's metadata.feedback, or a record of
    the feedback log beside `folder` (POST /v1/feedback) naming the answer's id: the latest for an answer wins."""
    files = ConversationLog(folder, 1).files()
    if not files:
        raise UsageError(f"no conversation logs in {folder}",
                         hint="serve with serve.log_conversations: true and serve.variants set, then send traffic")  # fmt: skip
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    unreadable = without_variant = 0
    answers: dict[str, dict] = {}  # id -> metadata of the variants' answers, for the feedback log to find
    for path in files:
        for line in _lines(path):
            try:
                meta = json.loads(line).get("metadata") or {}
            except (ValueError, AttributeError):
                unreadable += 1
                continue
            if not isinstance(meta, dict) or not meta.get("variant"):
                without_variant += 1
                continue
            groups[str(meta.get("variant_group", ""))][str(meta["variant"])].append(meta)
            if isinstance(meta.get("id"), str):
                answers[meta["id"]] = meta
    if not groups:
        raise UsageError(f"{folder}: no logged conversation names a variant",
                         hint="set serve.variants and send requests for serve.variant_group")  # fmt: skip
    feedback_files = ConversationLog(feedback_dir(folder), 1, "feedback").files()
    unmatched = 0
    for path in feedback_files:
        for line in _lines(path):
            try:
                record = json.loads(line)
                meta = answers.get(record["id"])
                value = record["feedback"]
            except (ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            if meta is None:  # an answer outside the A/B test, or in a log file since deleted
                unmatched += 1
            else:
                meta["feedback"] = value  # in file order: a user's second thought replaces the first
    report: dict[str, Any] = {"logs": [str(f) for f in files], "feedback_logs": [str(f) for f in feedback_files],
                              "unreadable_lines": unreadable,
                              "without_variant": without_variant, "feedback_without_variant": unmatched,
                              "groups": {}}  # fmt: skip
    for group, variants in sorted(groups.items()):
        total = sum(len(records) for records in variants.values())
        summaries = {name: _summary(records, total) for name, records in sorted(variants.items())}
        reference = next(iter(summaries))
        report["groups"][group] = {
            "requests": total,
            "reference": reference,
            "variants": summaries,
            "deltas": {name: _deltas(s, summaries[reference]) for name, s in summaries.items() if name != reference},
        }
    return report


def _summary(records: list[dict], total: int) -> dict[str, Any]:
    latencies = sorted(float(r["latency_s"]) for r in records if _number(r.get("latency_s")))
    completion = [int(r["usage"]["completion_tokens"]) for r in records if _usage(r, "completion_tokens")]
    prompt = [int(r["usage"]["prompt_tokens"]) for r in records if _usage(r, "prompt_tokens")]
    scores = [s for s in (_feedback(r.get("feedback")) for r in records) if s is not None]
    finish = Counter(str(r.get("finish_reason")) for r in records)
    return {
        "requests": len(records),
        "share": len(records) / total,
        "models": sorted({str(r.get("model")) for r in records}),
        "prompt_tokens": sum(prompt),
        "completion_tokens": sum(completion),
        "mean_completion_tokens": statistics.fmean(completion) if completion else None,
        "latency_s": {
            "mean": statistics.fmean(latencies) if latencies else None,
            "p50": _quantile(latencies, 0.5),
            "p95": _quantile(latencies, 0.95),
        },
        "tokens_per_second": sum(completion) / sum(latencies) if completion and sum(latencies) > 0 else None,
        "finish_reasons": dict(sorted(finish.items())),
        "length_rate": finish.get("length", 0) / len(records),
        "feedback": {"count": len(scores), "mean": statistics.fmean(scores) if scores else None},
    }


def _deltas(variant: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    def diff(a, b):
        return None if a is None or b is None else a - b

    return {
        "mean_latency_s": diff(variant["latency_s"]["mean"], reference["latency_s"]["mean"]),
        "p95_latency_s": diff(variant["latency_s"]["p95"], reference["latency_s"]["p95"]),
        "mean_completion_tokens": diff(variant["mean_completion_tokens"], reference["mean_completion_tokens"]),
        "length_rate": diff(variant["length_rate"], reference["length_rate"]),
        "feedback_mean": diff(variant["feedback"]["mean"], reference["feedback"]["mean"]),
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _usage(record: dict, key: str) -> bool:
    usage = record.get("usage")
    return isinstance(usage, dict) and _number(usage.get(key))


def _lines(path: Path) -> list[str]:
    # split at "\n" only: str.splitlines() also splits at U+2028, U+0085 and the like, which json.dumps leaves
    # unescaped inside a logged answer, and the record would read as two broken lines
    return [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]


def _feedback(value: Any) -> float | None:
    # a score as a number (a rating), or thumbs: true/"up" is 1, false/"down" is 0
    if isinstance(value, bool):
        return float(value)
    if _number(value):
        return float(value)
    if isinstance(value, str) and value.lower() in ("up", "down"):
        return 1.0 if value.lower() == "up" else 0.0
    if isinstance(value, dict):
        return _feedback(value.get("score", value.get("rating")))
    return None


def _quantile(ordered: list[float], q: float) -> float | None:
    # nearest rank: a latency that was really observed
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# A/B report {report.get('stamp', '')}".rstrip(), ""]
    lines.append(f"From {len(report['logs'])} log file(s) and {len(report['feedback_logs'])} feedback log file(s); "
                 f"{report['without_variant']} conversation(s) and {report['feedback_without_variant']} feedback(s) "
                 f"without a variant left out, {report['unreadable_lines']} unreadable line(s). Feedback: a thumb up "
                 "scores 1, down 0.")  # fmt: skip
    for group, body in report["groups"].items():
        lines += ["", f"## {group} ({body['requests']} requests; deltas against {body['reference']})", ""]
        lines.append("| variant | models | requests | share | mean latency s | p95 latency s | mean completion tokens "
                     "| tokens/s | finish reasons | feedback (n, mean) |")  # fmt: skip
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
        for name, s in body["variants"].items():
            finish = ", ".join(f"{k} {v}" for k, v in s["finish_reasons"].items())
            fb = s["feedback"]
            lines.append(
                f"| {name} | {', '.join(s['models'])} | {s['requests']} | {s['share']:.1%} | "
                f"{_fmt(s['latency_s']['mean'])} | {_fmt(s['latency_s']['p95'])} | {_fmt(s['mean_completion_tokens'])} "
                f"| {_fmt(s['tokens_per_second'])} | {finish} | {fb['count']}, {_fmt(fb['mean'])} |"
            )
        if body["deltas"]:
            lines += ["", "| variant | Δ mean latency s | Δ p95 latency s | Δ mean completion tokens | Δ length rate "
                      "| Δ feedback |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
            for name, d in body["deltas"].items():
                lines.append(f"| {name} | {_fmt(d['mean_latency_s'])} | {_fmt(d['p95_latency_s'])} | "
                             f"{_fmt(d['mean_completion_tokens'])} | {_fmt(d['length_rate'])} | "
                             f"{_fmt(d['feedback_mean'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write(workspace: Workspace) -> tuple[dict[str, Any], Path]:
    """Build the report from the workspace's conversation logs and publish serve/reports/<stamp>/ at once."""
    report = build(workspace.conversations_dir)
    stamp = timestamp()
    report = {"stamp": stamp, **report}
    folder = workspace.serve_dir / "reports" / stamp
    with atomic.atomic_dir(folder, force=True) as tmp:  # two reports in one second: the later one stands
        atomic.write_json(tmp / "report.json", report)
        atomic.write_text(tmp / "report.md", markdown(report))
    return report, folder
