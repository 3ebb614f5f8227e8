"""The optional judge: a model behind an OpenAI-compatible endpoint scores each answer on a rubric (relevance,
helpfulness, accuracy by default), replying with one JSON object of integer scores."""

from __future__ import annotations

import json
import re
from typing import Any

from llmforge.errors import LlmforgeError
from llmforge.evaluation.remote import HTTPEngine

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def rubric_prompt(criteria: list[str], scale: int, question: list[dict[str, str]], reference: str,
                  answer: str) -> list[dict[str, str]]:
    conversation = "\n".join(f"{m['role']}: {m['content']}" for m in question)
    keys = ", ".join(f'"{c}": <1-{scale}>' for c in criteria)
    system = (
        "You are a strict evaluator. Score the ANSWER to the conversation against the rubric, each criterion "
        f"an integer from 1 (worst) to {scale} (best): {', '.join(criteria)}. The REFERENCE is a correct answer. "
        f"Reply with only one JSON object: {{{keys}}}"
    )
    user = f"CONVERSATION:\n{conversation}\n\nREFERENCE:\n{reference}\n\nANSWER:\n{answer}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_scores(text: str, criteria: list[str], scale: int) -> dict[str, float]:
    match = _OBJECT.search(text or "")
    if not match:
        raise LlmforgeError(f"the judge did not answer a JSON object: {text[:120]!r}")
    try:
        data = json.loads(match.group(0))
    except ValueError:
        raise LlmforgeError(f"the judge's JSON does not parse: {match.group(0)[:120]!r}") from None
    scores = {}
    for c in criteria:
        value = data.get(c)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= scale:
            raise LlmforgeError(f"the judge gave no score 1-{scale} for {c!r}: {match.group(0)[:120]!r}")
        scores[c] = float(value)
    return scores


class Judge:
    def __init__(self, config: Any):
        self.config = config
        base = config.endpoint.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.engine = HTTPEngine(base, config.model, timeout=config.timeout, api_key_env=config.api_key_env)

    @property
    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"endpoint": self.engine.base_url, "model": self.engine.model, "criteria": c.criteria, "scale": c.scale}

    def score(self, question: list[dict[str, str]], reference: str, answer: str) -> dict[str, float]:
        c = self.config
        messages = rubric_prompt(c.criteria, c.scale, question, reference, answer)
        reply = self.engine.generate(messages, c.max_tokens, 0.0, 0)
        return parse_scores(reply["text"], c.criteria, c.scale)
