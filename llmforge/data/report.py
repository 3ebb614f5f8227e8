"""The human side of a prepared dataset: report.md and the length histogram PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def histogram(values, path: Path, xlabel: str, title: str = "Record lengths") -> Path | None:
    """A length histogram (matplotlib, Agg backend); None when there is nothing to plot."""
    if not len(values):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(arr, bins=min(50, max(5, int(np.sqrt(len(arr))))), color="#4c72b0", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.set_title(f"{title} (n={len(arr)}, median {np.median(arr):g})")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    parts = [
        "# Data report",
        "",
        f"Dataset kind: **{report['dataset_kind']}**. Read {c['read']} records from {len(report['inputs'])} file(s); "
        f"wrote {c['written']} (train {c['train']}, val {c['val']}, test {c['test']}).",
        "",
        "## Counts",
        "",
        _table([(k, v) for k, v in c.items()], ("what", "records")),
        "",
        "## Inputs",
        "",
        _table([(i["file"], i["records"]) for i in report["inputs"]], ("file", "records")),
        "",
        "## Formats",
        "",
        _table(sorted(report["formats"].items()), ("format", "records")),
        "",
        "## PII replaced",
        "",
        _table(sorted(report["pii"].items()), ("kind", "replacements")),
    ]
    unreadable = [i for i in report["inputs"] if "error" in i]
    if unreadable:
        parts += ["", "## Unreadable files (their records up to the break, if any, were read)", ""]
        parts += [f"- `{i['file']}`: {i['error']}" for i in unreadable]
    length = report["length"]
    if len(length) > 1:
        parts += ["", f"## Length ({length['unit']})", "", _table([tuple(v for k, v in length.items() if k != "unit")],
                  tuple(k for k in length if k != "unit"))]  # fmt: skip
    if "languages" in report:
        detected = ", ".join(f"{code} {n}" for code, n in report["languages"].items()) or "none"
        parts += ["", f"Languages detected (records past the other filters): {detected}."]
    if report["filtered"]:
        parts += ["", "## Filtered", "", _table(sorted(report["filtered"].items()), ("reason", "records"))]
    if report["rejected_examples"]:
        parts += ["", "## Rejected (first problems; all in rejected.jsonl)", ""]
        parts += [f"- `{p}`" for p in report["rejected_examples"]]
    for kind in ("exact", "near"):
        cl = report["clusters"][kind]
        if cl["count"]:
            parts += ["", f"## {kind.capitalize()} duplicate clusters ({cl['count']}; largest first)", ""]
            for entry in cl["largest"]:
                size = entry.get("size", entry.get("duplicates", 0) + 1)
                parts.append(f"- `{entry['first']}`: {size} records")
    if report["warnings"]:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    split = report["split"]
    parts += [
        "",
        "## Split",
        "",
        f"Seed {split['seed']}, shares train {split['train']} / val {split['val']} / test {split['test']}; "
        f"near-duplicate clusters are never split ({split['near_action']}).",
        "",
        "## Timings (seconds)",
        "",
        _table(sorted(report["timings"].items()), ("phase", "seconds")),
        "",
    ]
    return "\n".join(parts)
