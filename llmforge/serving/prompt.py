"""Turn chat messages into the model's prompt with the model's own chat template, and find its stop tokens.

Both come from llmforge.chat_templates, the one place that knows chat templates: the same renderer training uses
(transformers' apply_chat_template semantics) and the same stop tokens deploy writes into a Modelfile.
"""

from __future__ import annotations

import logging
from typing import Any

from llmforge import chat_templates
from llmforge.errors import UsageError

log = logging.getLogger(__name__)


def render(template: str, messages: list[dict[str, Any]], bos_token: str | None, eos_token: str | None) -> str:
    """Render with add_generation_prompt=True. A template that refuses the conversation raises UsageError."""
    return chat_templates.render(template, messages, add_generation_prompt=True, bos_token=bos_token,
                                 eos_token=eos_token)  # fmt: skip


def stop_token_texts(
    template: str | None, bos_token: str | None, eos_token: str | None, extra_eos: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The texts of the tokens that end an assistant turn for this template (its family's and the EOS)."""
    if not template:
        return tuple(t for t in (eos_token, *extra_eos) if t)
    try:
        return chat_templates.stop_tokens_for(template, bos_token=bos_token, eos_token=eos_token, extra_eos=extra_eos)
    except UsageError as exc:  # a template that does not parse: chat requests will say so; stop on EOS
        log.warning("chat template: %s", exc.message)
        return tuple(t for t in (eos_token, *extra_eos) if t)
