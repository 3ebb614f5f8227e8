"""Language identification for `data.languages`: py3langid, whose naive Bayes model ships inside its wheel, so
nothing is downloaded at run time. The model loads once per process; forked workers inherit it from the parent."""

from __future__ import annotations

import functools
from typing import Any

# Detection reads at most this many characters of a record (up to 6 KB of UTF-8): the language shows in the first
# few sentences, and the cost grows with the bytes read (measured: 2000 characters of English about 0.4 ms, of
# Japanese about 1.2 ms), so a long record would otherwise cost as much as many short ones.
SAMPLE_CHARS = 2000


@functools.cache
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def load() -> None:
    """Load the model now (before a process pool forks, so workers share the parent's copy)."""
    _identifier()


def labels() -> list[str]:
    """Every code the model can answer with (ISO 639-1 where one exists, else ISO 639-3)."""
    return list(_identifier().labels)


def sample(record: dict[str, Any]) -> str:
    """The text a record's language is judged on: user and assistant turns (a system prompt is often boilerplate in
    another language), the prompt and chosen answer of a preference pair, or a text record's text; truncated."""
    if "text" in record:
        text = record["text"][:SAMPLE_CHARS]
    else:
        turns = record["messages"] if "messages" in record else record["prompt"] + record["chosen"]
        parts: list[str] = []
        size = 0
        for m in turns:
            if m["role"] in ("user", "assistant"):
                parts.append(m["content"])
                size += len(m["content"]) + 1
                if size >= SAMPLE_CHARS:
                    break
        text = "\n".join(parts)[:SAMPLE_CHARS]
    return text


def detect(record: dict[str, Any]) -> str:
    """The record's language code, e.g. 'en'; 'zxx' (no linguistic content) for a record without any words."""
    text = sample(record)
    if not text.strip():  # the model would still name a language, with no evidence for it
        return "zxx"
    return _identifier().classify(text)[0]
