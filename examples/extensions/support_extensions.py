"""Example llmforge extensions: a data.transforms function and two eval.metrics functions.

Make this folder importable (PYTHONPATH=examples/extensions, or install your own package) and name the functions
in the config as "support_extensions:function"; see llmforge.yaml beside this file.
"""

from __future__ import annotations

import re

TICKET = re.compile(r"\bTICKET-\d+\b")


def redact_tickets(record: dict) -> dict | None:
    """data.transforms: drop drafts (any turn marked [draft]); replace ticket numbers with <TICKET> in the rest.

    It gets the canonical record ({"messages": [...]} here) after normalization and returns a record, or None to
    drop it; llmforge validates what comes back like any input record."""
    messages = record["messages"]
    if any("[draft]" in m["content"] for m in messages):
        return None
    return {"messages": [{**m, "content": TICKET.sub("<TICKET>", m["content"])} for m in messages]}


def mentions_ticket(predictions: list[str], references: list[str]) -> float:
    """eval.metrics: the share of answers that leak a ticket number (lower is better); reported as mentions_ticket."""
    return sum(bool(TICKET.search(p)) for p in predictions) / max(len(predictions), 1)


def answer_length(predictions: list[str], references: list[str]) -> dict[str, float]:
    """eval.metrics returning several numbers: each key becomes a metric of its own."""
    n = max(len(predictions), 1)
    return {
        "answer_words": sum(len(p.split()) for p in predictions) / n,
        "reference_words": sum(len(r.split()) for r in references) / n,
    }
