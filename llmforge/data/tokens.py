"""Token counts for the data stage: records rendered with the chat template training uses and tokenized with the
model's tokenizer (both from llmforge.checkpoints, as every stage gets them). Without one, lengths are in characters.
"""

from __future__ import annotations

import logging
from typing import Any

from llmforge.data.records import plain

log = logging.getLogger(__name__)


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        return list(encoded["input_ids"])
    return list(encoded)


def conversation(record: dict[str, Any], which: str = "chosen") -> list[dict[str, str]] | None:
    """The messages a record trains on (prompt + chosen for preference, prompt + completion for KTO), None for raw
    text."""
    if "messages" in record:
        return record["messages"]
    if "prompt" in record:
        return record["prompt"] + record[which]
    return None


def _answers(record: dict[str, Any]) -> tuple[str, ...]:
    """The fields holding the answers a record is trained on."""
    if "completion" in record:
        return ("completion",)
    return ("chosen", "rejected") if "prompt" in record else ("chosen",)


class TokenCounter:
    """Counts tokens of a canonical record as training will see it: the chat template rendered and tokenized."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def count(self, record: dict[str, Any]) -> int:
        if "text" in record or not self.has_template:
            return len(self.tokenizer(plain(record), add_special_tokens=True)["input_ids"])
        sizes = []
        for which in _answers(record):
            encoded = self.tokenizer.apply_chat_template(conversation(record, which), tokenize=True, return_dict=True)
            sizes.append(len(_ids(encoded)))
        return max(sizes)
