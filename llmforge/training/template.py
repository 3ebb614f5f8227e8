"""The chat template a run trains with, and the check that every end-of-turn token is inside the trained span."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from llmforge.errors import UsageError

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class ChosenTemplate:
    text: str
    source: str  # "tokenizer" | "family" | "configured"
    family: str | None
    end_of_turn: tuple[str, ...]


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and bool(_GENERATION.search(template))


def resolve(tokenizer, configured: str = "auto") -> ChosenTemplate:
    """The tokenizer's own marked template, else the family's (one call into llmforge.chat_templates)."""
    eos = tokenizer.eos_token
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    try:
        from llmforge import chat_templates
    except ImportError:  # chat_templates.py not merged yet: only the tokenizer's own marked template works
        chat_templates = None
    if chat_templates is not None:
        chosen = chat_templates.resolve_training_template(
            own, configured, bos_token=tokenizer.bos_token, eos_token=eos
        )
        eot = tuple(chat_templates.end_of_turn_tokens_for(chosen.family, eos))
        family = getattr(chosen.family, "name", None)
        return ChosenTemplate(chosen.template, chosen.source, family, eot)
    if configured and configured != "auto":
        raise UsageError(
            f"model.chat_template: {configured!r} needs llmforge.chat_templates, which this build lacks",
            hint="set model.chat_template: auto and use a tokenizer whose template has {% generation %} markers",
        )
    if not own:
        raise UsageError(
            "the tokenizer has no chat template, so training cannot tell which tokens are the assistant's",
            hint="set model.chat_template: <family> (chatml, llama3, mistral, gemma, phi3, alpaca)",
        )
    if not has_generation_markers(own):
        raise UsageError(
            "the tokenizer's chat template has no {% generation %} markers around the assistant's reply",
            hint="set model.chat_template: <family> to train with that family's marked template, "
            "or set train.assistant_only_loss: false to train on every token",
        )
    return ChosenTemplate(own, "tokenizer", None, (eos,) if eos else ())


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
    checked = 0
    for n, record in enumerate(records[:limit]):
        messages = record["messages"]
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        token_ids, mask = out["input_ids"], out["assistant_masks"]
        trained_eot = sum(1 for t, m in zip(token_ids, mask) if m and t in ids)
        turns = sum(1 for m in messages if m["role"] == "assistant")
        if trained_eot < turns:
            trained = tokenizer.decode([t for t, m in zip(token_ids, mask) if m])
            raise UsageError(
                f"record {n + 1}: the end-of-turn token {'/'.join(end_of_turn)} is outside the trained span "
                f"({trained_eot} of {turns} assistant turns end inside it; trained text: {trained[-60:]!r})",
                hint="a model that never learns its stop token rambles once deployed: put the end-of-turn token "
                "inside {% generation %}...{% endgeneration %} or set model.chat_template to a known family",
            )
        checked += 1
    return checked
