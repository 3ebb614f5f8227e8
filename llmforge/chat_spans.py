"""Which characters (and tokens) of a rendered chat are the assistant's: the loss mask for any chat template.

Training learns only the assistant's turns, each with the end-of-turn token that makes the model stop, and
never the next turn's header. `training_verdict` decides, per template, how that mask is made (`Verdict.how`),
trying in order:
- "tokenizer markers": the template has {% generation %} blocks: their spans.
- "family template": it renders like one of llmforge's families (chat_templates.identify): the family's marked twin.
- "trl training template": TRL ships a marked training version of exactly this template
  (trl.chat_template_utils.get_training_chat_template), used when it renders every probe as the original does.
- "incremental render": no markers, but the template renders turn by turn consistently. Assistant turn i spans
  from the end of messages[:i] rendered with the generation prompt to the end of its end-of-turn token in
  messages[:i+1] rendered without it; every such text must be a prefix of the whole conversation's rendering.
- "per-turn prefix": the template rewrites earlier turns once later ones follow (Qwen3, QwQ and the R1 distills
  drop <think> blocks from history; gpt-oss ends a final answer with <|return|> but an earlier one with <|end|>).
  Each assistant turn then becomes its own sample: the prompt exactly as inference renders it (add_generation_prompt
  =True), then the turn as the template renders it as the last one. Where the generation prompt writes more than the
  rendered turn begins with (the R1 distills open and close an empty <think> block), the sample keeps the prompt's
  text, because that is what the model sees at inference.
A template whose turns cannot be found this way is refused with the reason, never approximated.

Templates that write today's date (strftime_now) are rendered with one pinned moment (`pinned_date`), so a
sample never mixes two dates; training pins the run's start and records it.
Only the standard library and jinja2 are imported at module level (TRL only inside `trl_training_template`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmforge import chat_templates as ct
from llmforge.errors import UsageError

log = logging.getLogger(__name__)

MARKERS = "tokenizer markers"
FAMILY = "family template"
TRL = "trl training template"
INCREMENTAL = "incremental render"
PER_TURN = "per-turn prefix"
HOW = (MARKERS, FAMILY, TRL, INCREMENTAL, PER_TURN)

# Probe conversations render with this moment, so a verdict does not depend on the day it is computed.
PROBE_DATE = ct.PROBE_DATE

# Strings that end an assistant turn in published templates; any other `<...>` token the template writes right
# after the answer is taken too (the tokenizer check then insists that it is one token).
KNOWN_END_OF_TURN = (
    "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|return|>", "</s>", "<|END_OF_TURN_TOKEN|>",
    "<|end_of_text|>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<eos>",
)  # fmt: skip


@contextlib.contextmanager
def pinned_date(when: datetime | None) -> Iterator[None]:
    """Renders inside report `when` as today (strftime_now); None leaves the clock alone."""
    if when is None:
        yield
        return
    with ct.fixed_date(when):
        yield


@dataclass(frozen=True)
class Verdict:
    """Whether a chat template trains, how its loss mask is made (one of HOW) and why (or why not)."""

    trains: bool
    how: str
    reason: str
    template: str = ""  # what to render with: the marked template for markers/family/trl, the original otherwise
    end_of_turn: tuple[str, ...] = ()
    family: ct.Family | None = None
    source: str = ""  # "tokenizer", "family", "configured" or "trl"
    dated: bool = False  # it writes today's date: renders depend on the pinned moment

    def __iter__(self):  # `trains, how, reason = training_verdict(...)`
        return iter((self.trains, self.how, self.reason))


@dataclass(frozen=True)
class Sample:
    """One training text and the [start, end) character spans trained in it."""

    text: str
    spans: tuple[tuple[int, int], ...]


class _Inconsistent(Exception):
    """A conversation whose turns cannot be found by rendering prefixes (the message says why)."""


def _lcp(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _render(template: str, messages: Sequence[Mapping[str, Any]], prompt: bool, tokens: Mapping[str, Any]) -> str:
    return ct.render(template, messages, add_generation_prompt=prompt, **tokens)


def _turn(template: str, messages: Sequence[Mapping[str, Any]], i: int, tokens: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, completion) of assistant turn i: the text inference renders before it, and the turn that follows,
    as the template renders it when it is the last message (up to the end of that rendering)."""
    if i == 0:
        raise _Inconsistent("the conversation starts with an assistant turn, which has no prompt to follow")
    prompt = _render(template, messages[:i], True, tokens)
    whole = _render(template, messages[: i + 1], False, tokens)
    if whole.startswith(prompt):
        return prompt, whole[len(prompt) :]
    # The generation prompt may write more than the rendered turn starts with (R1 distills: "<think>\n</think>").
    # Allowed only when everything before the turn renders identically in both.
    before = _render(template, messages[:i], False, tokens)
    if not (prompt.startswith(before) and whole.startswith(before)):
        at = _lcp(prompt, whole)
        raise _Inconsistent(
            f"rendering assistant turn {_ordinal(messages, i)} changes the text before it "
            f"({prompt[max(0, at - 20) : at + 20]!r} becomes {whole[max(0, at - 20) : at + 20]!r})"
        )
    generation, rendered = prompt[len(before) :], whole[len(before) :]
    shared = _lcp(generation, rendered)
    # Back off to the end of a token or line: "<think>" and "<|im_end|>" share their "<", not a token.
    while shared and rendered[shared - 1] not in ">\n":
        shared -= 1
    return prompt, rendered[shared:]


def _ordinal(messages: Sequence[Mapping[str, Any]], i: int) -> int:
    return sum(1 for m in messages[: i + 1] if m.get("role") == "assistant")


def _end(completion: str, end_of_turn: Sequence[str]) -> int | None:
    """Where the trained span stops: just after the first end-of-turn token of the completion."""
    found = [(completion.find(t), t) for t in end_of_turn if t and t in completion]
    if not found:
        return None
    at, token = min(found)
    return at + len(token)


def _through_end_of_turn(text: str, start: int, end: int, end_of_turn: Sequence[str]) -> tuple[int, int]:
    """A marked span cut just after its last end-of-turn token: what follows it (TRL's Qwen2.5 template marks the
    newline after <|im_end|>) is the separator before the next turn, which the model never generates."""
    ends = [text.rfind(t, start, end) + len(t) for t in end_of_turn if t and text.find(t, start, end) >= 0]
    return (start, max(ends)) if ends else (start, end)


def _per_turn(
    template: str, messages: Sequence[Mapping[str, Any]], end_of_turn: Sequence[str], tokens: Mapping[str, Any]
) -> list[Sample]:
    samples = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt, completion = _turn(template, messages, i, tokens)
        end = _end(completion, end_of_turn)
        if end is None:
            raise _Inconsistent(
                f"assistant turn {_ordinal(messages, i)} renders as {completion[-60:]!r}: no end-of-turn token "
                f"({' or '.join(end_of_turn)}) follows the answer, so the model would never learn to stop"
            )
        samples.append(Sample(prompt + completion[:end], ((len(prompt), len(prompt) + end),)))
    return samples


def _merged(template: str, messages: Sequence[Mapping[str, Any]], turns: list[Sample], tokens) -> Sample | None:
    """The per-turn samples as one sample of the whole conversation, when each is a prefix of its rendering."""
    full = _render(template, messages, False, tokens)
    if not all(full.startswith(s.text) for s in turns):
        return None
    return Sample(full, tuple(s.spans[0] for s in turns))


def samples(
    verdict: Verdict,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str | None,
    eos_token: str | None,
    now: datetime | None = None,
    **special: Any,
) -> list[Sample]:
    """The training samples of one conversation and their trained spans, made as `verdict.how` says.

    One sample, except for "per-turn prefix" (one per assistant turn), and for "incremental render" when this
    conversation's turns do not render consistently (then per turn as well). Raises UsageError when the template
    refuses the conversation or an assistant turn cannot be found."""
    if not verdict.trains:
        raise UsageError(verdict.reason, hint=_hint())
    tokens = {"bos_token": bos_token, "eos_token": eos_token, **special}
    with pinned_date(now):
        if verdict.how in (MARKERS, FAMILY, TRL):
            rendered = ct.render_with_spans(verdict.template, messages, add_generation_prompt=False, **tokens)
            return [Sample(rendered.text, tuple(_through_end_of_turn(rendered.text, a, b, verdict.end_of_turn)
                                                for a, b in rendered.spans))]  # fmt: skip
        try:
            turns = _per_turn(verdict.template, messages, verdict.end_of_turn, tokens)
            if verdict.how == INCREMENTAL:
                merged = _merged(verdict.template, messages, turns, tokens)
                if merged is not None:
                    return [merged]
            return turns
        except _Inconsistent as exc:
            raise UsageError(f"cannot find the assistant's tokens: {exc}", hint=_hint()) from None


def _hint() -> str:
    return f"set model.chat_template: <family> (one of {', '.join(ct.FAMILIES)}) to train with that family's template"


# ----------------------------------------------------------------------------------------------------------------
# The verdict
# ----------------------------------------------------------------------------------------------------------------

_A3 = {"role": "assistant", "content": "Done: 36."}
# Besides chat_templates.PROBES: three exchanges without a system message, and one answer with inner whitespace.
EXTRA_PROBES = (
    ct.Probe("three-exchanges", (*ct.PROBES[5].messages[1:], ct._m("user", "Times 3 again?"), _A3), False),
    ct.Probe(
        "inner-whitespace",
        (ct._m("user", "Indent this."), ct._m("assistant", "def f():\n    return 1\n\n# end"),
         ct._m("user", "Thanks.")),
        True,
    ),
)  # fmt: skip


def probes() -> tuple[ct.Probe, ...]:
    """The probe conversations with at least one assistant turn: what a verdict is computed over."""
    return tuple(p for p in (*ct.PROBES, *EXTRA_PROBES) if any(m["role"] == "assistant" for m in p.messages))


def _discover_end_of_turn(template: str, tokens: Mapping[str, Any], eos_token: str | None) -> tuple[str, ...]:
    """The end-of-turn strings the template writes right after an answer, over every probe it accepts."""
    found: list[str] = []
    for probe in probes():
        for i, message in enumerate(probe.messages):
            if message["role"] != "assistant" or not message["content"].strip():
                continue
            try:
                _, completion = _turn(template, probe.messages, i, tokens)
            except (UsageError, _Inconsistent):
                continue
            content = message["content"].strip()
            at = completion.find(content)
            if at < 0:
                continue
            tail = completion[at + len(content) :].lstrip()
            known = [t for t in (eos_token, *KNOWN_END_OF_TURN) if t and tail.startswith(t)]
            match = re.match(r"<[^<>\s]{1,60}>", tail)
            token = known[0] if known else match.group(0) if match else None
            if token and token not in found:
                found.append(token)
    return tuple(found)


def _check_probe(samples_: list[Sample], messages: Sequence[Mapping[str, Any]], end_of_turn: Sequence[str]) -> None:
    """Each assistant turn is trained once, with its content and an end-of-turn token, and nothing after that."""
    spans = [s.text[a:b] for s in samples_ for a, b in s.spans]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(spans) != len(answers):
        raise _Inconsistent(f"{len(spans)} trained spans for {len(answers)} assistant turns")
    for n, (span, answer) in enumerate(zip(spans, answers), start=1):
        if answer.strip() not in span:
            raise _Inconsistent(f"assistant turn {n}: its answer {answer.strip()[:40]!r} is not in the trained span")
        if not any(span.endswith(t) for t in end_of_turn):
            raise _Inconsistent(
                f"assistant turn {n}: the trained span {span[-40:]!r} does not end with the end-of-turn token "
                f"({' or '.join(end_of_turn)}), so the model would never learn to stop"
            )


def _same_renders(template: str, other: str, tokens: Mapping[str, Any]) -> str | None:
    """None when both templates render (or refuse) every probe identically, else the first probe that differs."""
    for probe in (*ct.PROBES, *EXTRA_PROBES):
        outcomes = []
        for t in (template, other):
            try:
                outcomes.append(_render(t, probe.messages, probe.add_generation_prompt, tokens))
            except UsageError:
                outcomes.append(None)
        if outcomes[0] != outcomes[1]:
            return probe.name
    return None


def training_verdict(
    template: str | None,
    bos_token: str | None,
    eos_token: str | None,
    *,
    configured: str = "auto",
    trl_template: str | None = None,
) -> Verdict:
    """How training makes the loss mask for `template` (a tokenizer's chat template), or why it cannot.

    `configured` is model.chat_template (a family name wins over everything); `trl_template` is TRL's marked
    training version of this template when TRL has one (see trl_training_template). Never raises for a template
    it cannot train: the refusal is the verdict."""
    if configured and configured != "auto":
        family = ct.get_family(configured)
        return Verdict(True, FAMILY, f"model.chat_template: {family.name}", family.jinja,
                       ct.end_of_turn_tokens_for(family, eos_token), family, "configured")  # fmt: skip
    if not template:
        return Verdict(False, "", "the tokenizer has no chat template, so training cannot tell the assistant's tokens")
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    dated = "strftime_now" in template
    with pinned_date(PROBE_DATE):
        try:
            family = ct.identify(template, bos_token=bos_token, eos_token=eos_token)
        except UsageError as exc:  # does not parse
            return Verdict(False, "", exc.message)
        found = _discover_end_of_turn(template, tokens, eos_token)
        if ct.has_generation_markers(template):
            eot = ct.end_of_turn_tokens_for(family, eos_token) if family else found
            return _marked(
                template, MARKERS, "its own {% generation %} blocks", eot, family, "tokenizer", dated, tokens
            )
        if family is not None:
            return _marked(family.jinja, FAMILY, f"renders exactly like llmforge's {family.name} family",
                           ct.end_of_turn_tokens_for(family, eos_token), family, "family", dated, tokens)  # fmt: skip
        if trl_template and ct.has_generation_markers(trl_template):
            differs = _same_renders(template, trl_template, tokens)
            if differs is None:
                trl = _marked(trl_template, TRL, "TRL's marked training version of this exact template", found,
                              None, "trl", dated, tokens)  # fmt: skip
                if trl.trains:
                    return trl
                log.info("TRL's training template is not used: %s", trl.reason)
            else:
                log.info("TRL's training template renders probe %s differently: not used", differs)
        if not found:
            failure = _first_failure(template, tokens)
            if failure:
                return Verdict(False, "", f"the template fails on every probe conversation ({failure})", template,
                               dated=dated)  # fmt: skip
            return Verdict(False, "", "no end-of-turn token follows an assistant answer in any probe conversation, "
                           "so the model could not learn to stop", template, dated=dated)  # fmt: skip
        return _unmarked(template, found, dated, tokens)


def _first_failure(template: str, tokens: Mapping[str, Any]) -> str | None:
    """The first probe's error when the template renders none of them (a tools-only template), else None."""
    first = None
    for probe in probes():
        try:
            _render(template, probe.messages, False, tokens)
            return None
        except UsageError as exc:
            first = first or exc.message
    return first


def _marked(template, how, why, eot, family, source, dated, tokens) -> Verdict:
    verdict = Verdict(True, how, why, template, tuple(eot), family, source, dated)
    if not verdict.end_of_turn:
        return Verdict(False, "", f"{why}, but no end-of-turn token is known for it", template, dated=dated)
    for probe in probes():
        try:
            got = samples(verdict, probe.messages, **tokens)
        except UsageError as exc:
            if "refused" in exc.message:
                continue  # the template refuses this shape (gemma: a system message)
            return Verdict(False, "", f"probe '{probe.name}': {exc.message}", template, dated=dated)
        try:
            _check_probe(got, probe.messages, verdict.end_of_turn)
        except _Inconsistent as exc:
            return Verdict(False, "", f"{why}, but on probe '{probe.name}': {exc}", template, dated=dated)
    return verdict


def _unmarked(template: str, eot: tuple[str, ...], dated: bool, tokens: Mapping[str, Any]) -> Verdict:
    split_by: str | None = None
    accepted = 0
    for probe in probes():
        try:
            _render(template, probe.messages, False, tokens)
        except UsageError:
            continue  # the template refuses this shape (gemma 2: a system message)
        try:
            turns = _per_turn(template, probe.messages, eot, tokens)
            _check_probe(turns, probe.messages, eot)
        except (UsageError, _Inconsistent) as exc:
            return Verdict(False, "", f"probe '{probe.name}': {exc}", template, eot, dated=dated)
        accepted += 1
        if split_by is None and len(turns) > 1 and _merged(template, probe.messages, turns, tokens) is None:
            split_by = probe.name
    if not accepted:
        return Verdict(False, "", "the template refuses every probe conversation", template, eot, dated=dated)
    if split_by is None:
        return Verdict(True, INCREMENTAL, "each turn renders as a prefix of the later ones", template, eot,
                       source="tokenizer", dated=dated)  # fmt: skip
    return Verdict(True, PER_TURN, f"earlier turns render differently once later turns follow (probe '{split_by}'): "
                   "one sample per assistant turn", template, eot, source="tokenizer", dated=dated)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# With a tokenizer
# ----------------------------------------------------------------------------------------------------------------


def trl_training_template(tokenizer) -> str | None:
    """TRL's marked training version of the tokenizer's template (matched by exact string), or None."""
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        return None
    try:
        return get_training_chat_template(tokenizer)
    except Exception as exc:  # noqa: BLE001 - any failure only means "TRL has none": the other ways are tried
        log.info("no TRL training template: %s", exc)
        return None


def verdict_for(tokenizer, configured: str = "auto") -> Verdict:
    """`training_verdict` for a tokenizer's own template, asking TRL only when llmforge has no marked template."""
    own = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
    bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
    verdict = training_verdict(own, bos, eos, configured=configured)
    if own and verdict.how not in (MARKERS, FAMILY):
        trl = trl_training_template(tokenizer)
        if trl:
            verdict = training_verdict(own, bos, eos, configured=configured, trl_template=trl)
    return verdict


def require(verdict: Verdict) -> Verdict:
    """The verdict, or the UsageError a user sees when the template cannot train."""
    if not verdict.trains:
        raise UsageError(f"cannot train on this chat template: {verdict.reason}", hint=_hint())
    return verdict


def token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for every token that overlaps a trained character span (as transformers' assistant mask does)."""
    return [int(e > s and any(s < b and e > a for a, b in spans)) for s, e in offsets]


def encode(
    tokenizer, verdict: Verdict, messages: Sequence[Mapping[str, Any]], *, now: datetime | None = None
) -> list[tuple[list[int], list[int], int]]:
    """(token ids, loss mask, assistant turns trained) of each sample of one conversation, tokenized as
    apply_chat_template does (no special tokens added: the template writes them)."""
    out = []
    for sample in samples(verdict, messages, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, now=now):
        try:
            enc = tokenizer(sample.text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise UsageError(
                "the tokenizer cannot report character offsets, so the assistant's tokens cannot be found",
                hint="use the model's fast tokenizer (tokenizer.json)",
            ) from None
        out.append((list(enc["input_ids"]), token_mask(enc["offset_mapping"], sample.spans), len(sample.spans)))
    return out
