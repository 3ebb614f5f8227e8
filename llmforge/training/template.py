"""The chat template a run trains with, and the check that every end-of-turn token is inside the trained span."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llmforge.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class ChosenTemplate:
    text: str
    source: str  # "tokenizer" | "family" | "configured"
    family: str | None
    end_of_turn: tuple[str, ...]


def resolve(tokenizer, configured: str = "auto") -> ChosenTemplate:
    """The tokenizer's own marked template, else the configured or identified family's (chat_templates decides)."""
    from llmforge import chat_templates

    eos = tokenizer.eos_token
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    chosen = chat_templates.resolve_training_template(own, configured, bos_token=tokenizer.bos_token, eos_token=eos)
    eot = tuple(chat_templates.end_of_turn_tokens_for(chosen.family, eos))
    return ChosenTemplate(chosen.template, chosen.source, getattr(chosen.family, "name", None), eot)


def check_end_of_turn_trained(tokenizer, records: list[dict[str, Any]], end_of_turn: tuple[str, ...],
                              limit: int = 200) -> int:
    """Render up to `limit` chats as training will and fail unless each assistant turn's end-of-turn token is
    inside the trained (assistant) mask. Returns how many chats were checked."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in end_of_turn}
    ids.discard(None)
    ids.discard(tokenizer.unk_token_id)
    if not ids:
        raise UsageError(
            f"end-of-turn token(s) {list(end_of_turn)} are not in the tokenizer's vocabulary",
            hint="check model.chat_template against the base model's tokenizer",
        )
    from llmforge import chat_templates

    checked = 0
    for n, record in enumerate(records[:limit]):
        messages = record["messages"]
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        turns = sum(1 for m in messages if m["role"] == "assistant")
        try:
            chat_templates.check_end_of_turn_ids_trained(
                out["input_ids"], out["assistant_masks"], ids, assistant_turns=turns
            )
        except UsageError as exc:
            raise UsageError(f"training record {n + 1}: {exc.message}", hint=exc.hint) from None
        checked += 1
    return checked
