"""The model's tokenizer for the data stage: loaded from a local folder (model.name) to count tokens of the
rendered chat template and to preview which tokens are trained. Without one, lengths are in characters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmforge.data.records import plain
from llmforge.errors import LlmforgeError, UsageError

log = logging.getLogger(__name__)


def load_tokenizer(name: str | None, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of `model.name` when it can be had without a download, else None."""
    if not name:
        return None
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            # The same tokenizer training will use (plain tokenizers load exactly as saved).
            from llmforge.checkpoints import load_tokenizer as load

            return load(path, trust_remote_code=trust_remote_code)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except ImportError:
        log.info("transformers is not installed: lengths are counted in characters")
    except (OSError, ValueError, LlmforgeError) as exc:
        log.info("no local tokenizer for %s (%s): lengths are counted in characters", name, exc)
    return None


def use_training_template(tokenizer, chat_template: str = "auto") -> tuple[Any, Exception | None]:
    """Give the tokenizer the chat template training will use (llmforge.chat_spans decides, as train does: the
    tokenizer's own, a family's or TRL's marked twin, or the configured family), so that lengths and previews
    match training token for token. Returns (the chat_spans.Verdict, the problem if the template cannot train)."""
    from llmforge import chat_spans

    verdict = chat_spans.verdict_for(tokenizer, chat_template)
    if not verdict.trains:
        log.info("no training chat template: %s", verdict.reason)
        try:
            chat_spans.require(verdict)
        except UsageError as exc:
            return verdict, exc
    tokenizer.chat_template = verdict.template
    return verdict, None


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
