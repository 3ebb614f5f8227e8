"""A/B variants: which variant answers a request, by weight, the same one every time for the same user or
conversation id (a hash of the id, so it holds across restarts and across several server processes)."""

from __future__ import annotations

import hashlib
import random

from llmforge.serving.target import Variant

CONVERSATION_HEADER = "x-conversation-id"
VARIANT_HEADER = "X-Llmforge-Variant"


def pick(variants: list[Variant], group: str, sticky_id: str | None) -> Variant:
    """The variant for this id: weight / total of all ids land on each. No id: a random one, by weight."""
    point = _point(group, sticky_id) if sticky_id else random.random()
    total = sum(v.weight for v in variants)
    edge = 0.0
    for v in variants:
        edge += v.weight / total
        if point < edge and v.weight > 0:
            return v
    return next(v for v in reversed(variants) if v.weight > 0)  # the rounding of the last edge


def _point(group: str, sticky_id: str) -> float:
    # sha256 rather than hash(): Python salts str hashes per process, and the same id must find the same variant
    # after a restart. The group is part of the input so that two tests do not split users the same way.
    digest = hashlib.sha256(f"{group}\0{sticky_id}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
