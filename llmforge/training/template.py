"""The chat template a run trains with, the tokenized samples with their assistant-only loss masks, and the check
that every end-of-turn token is inside the trained span (on the very ids the trainer gets)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmforge.errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class ChosenTemplate:
    text: str
    source: str  # "tokenizer" | "family" | "configured" | "trl"
    family: str | None
    end_of_turn: tuple[str, ...]
    how: str | None = None  # how the loss mask is made: one of chat_spans.HOW (None: no mask, full-text loss)
    date: datetime | None = None  # the "today" a dated template (strftime_now) is rendered with in this run
    verdict: Any = None  # chat_spans.Verdict
    original: str | None = None  # the tokenizer's own template, as the base model ships it

    @property
    def saved_text(self) -> str:
        """The template the run saves with its tokenizer (and export embeds, and deploy reproduces): the model's own
        when llmforge only borrowed a marked twin to find the loss spans (a family's or TRL's copy renders the same
        conversations, but not e.g. the tool-calling path the original has); otherwise the one trained with."""
        if self.source in ("family", "trl") and self.original:
            return self.original
        return self.text


def resolve(tokenizer, configured: str = "auto", *, now: datetime | None = None) -> ChosenTemplate:
    """The template and mask method chat_spans decides for this tokenizer (given to it), or UsageError with the
    reason."""
    from llmforge import checkpoints

    own = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    verdict = checkpoints.use_training_template(tokenizer, configured, untrainable="raise")
    date = (now or datetime.now()).replace(microsecond=0) if verdict.dated else None
    family = verdict.family.name if verdict.family is not None else None
    return ChosenTemplate(verdict.template, verdict.source, family, verdict.end_of_turn, verdict.how, date, verdict,
                          original=own)


@dataclass
class Encoded:
    """The training rows of one split: {"input_ids", "assistant_masks"} per sample, and per sample its record and
    number of assistant turns (what the end-of-turn check needs)."""

    rows: list[dict[str, list[int]]]
    record_of: list[int]
    turns: list[int]

    @property
    def split_records(self) -> int:
        """Records that became more than one sample (one per assistant turn)."""
        return len(self.record_of) - len(set(self.record_of))


def encode(tokenizer, chosen: ChosenTemplate, records: list[dict[str, Any]], what: str = "training") -> Encoded:
    """Render and tokenize chat records exactly as the trainer will see them, with their loss masks."""
    from llmforge import chat_spans

    out = Encoded([], [], [])
    for n, record in enumerate(records):
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        try:
            for ids, mask, turns in chat_spans.encode(tokenizer, chosen.verdict, messages, now=chosen.date):
                out.rows.append({"input_ids": ids, "assistant_masks": mask})
                out.record_of.append(n)
                out.turns.append(turns)
        except UsageError as exc:
            raise UsageError(f"{what} record {n + 1}: {exc.message}", hint=exc.hint) from None
    return out


def check_end_of_turn_trained(tokenizer, encoded: Encoded, end_of_turn: tuple[str, ...], limit: int = 200) -> int:
    """Fail unless each assistant turn's trained tokens (in the ids the trainer gets) hold an end-of-turn token id,
    for the samples of the first `limit` records. Returns how many records were checked."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in end_of_turn}
    ids.discard(None)
    ids.discard(tokenizer.unk_token_id)
    if not ids:
        raise UsageError(
            f"end-of-turn token(s) {list(end_of_turn)} are not in the tokenizer's vocabulary",
            hint="check model.chat_template against the base model's tokenizer",
        )
    from llmforge import chat_templates

    checked = set()
    for row, record, turns in zip(encoded.rows, encoded.record_of, encoded.turns):
        if record >= limit:
            break
        try:
            chat_templates.check_end_of_turn_ids_trained(
                row["input_ids"], row["assistant_masks"], ids, assistant_turns=turns
            )
        except UsageError as exc:
            raise UsageError(f"training record {record + 1}: {exc.message}", hint=exc.hint) from None
        checked.add(record)
    return len(checked)


def apply_overlong(encoded: Encoded, max_length: int, policy: str) -> dict[str, Any]:
    """Apply train.overlong to encoded rows longer than `max_length`, in place; returns the counts the plan, the
    manifest and the CLI report. Truncation keeps the first tokens, as the trainer would; a row that keeps no trained
    token teaches nothing and is dropped (a record whose system prompt fills the budget would otherwise be silently
    skipped by the trainer)."""
    over = [i for i, row in enumerate(encoded.rows) if len(row["input_ids"]) > max_length]
    counts = {"policy": policy, "max_length": max_length, "rows": len(encoded.rows), "overlong": len(over),
              "truncated": 0, "dropped": 0, "longest": max((len(r["input_ids"]) for r in encoded.rows), default=0)}
    if not over:
        return counts
    if policy == "fail":
        first = over[0]
        raise UsageError(
            f"{len(over)} of {len(encoded.rows)} training samples are longer than train.max_length ({max_length} "
            f"tokens); the first is record {encoded.record_of[first] + 1} with {len(encoded.rows[first]['input_ids'])}",
            hint="raise train.max_length, shorten those records, or set train.overlong: truncate or drop",
        )
    keep = []
    for i, row in enumerate(encoded.rows):
        if len(row["input_ids"]) > max_length:
            if policy == "drop":
                counts["dropped"] += 1
                continue
            row = {key: value[:max_length] for key, value in row.items()}
            if not any(row["assistant_masks"]):
                counts["dropped"] += 1
                continue
            counts["truncated"] += 1
        keep.append(i)
    encoded.rows[:] = [encoded.rows[i] if len(encoded.rows[i]["input_ids"]) <= max_length
                       else {k: v[:max_length] for k, v in encoded.rows[i].items()} for i in keep]  # fmt: skip
    encoded.record_of[:] = [encoded.record_of[i] for i in keep]
    encoded.turns[:] = [encoded.turns[i] for i in keep]
    if not encoded.rows:
        raise UsageError(
            f"every training sample is longer than train.max_length ({max_length} tokens) with no answer token left "
            "within it", hint="raise train.max_length",
        )
    return counts
