"""Training verdicts and assistant spans over every real upstream template in tests/fixtures/chat_templates: each
trains (its spans hold each answer and its end-of-turn token, and stop there) or is refused with its reason."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
import upstream_templates

from llmforge import chat_spans as cs
from llmforge import chat_templates as ct
from llmforge.errors import UsageError

# corpus file -> how training makes its loss mask (without TRL: unit tests do not import it), or ("", reason)
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct": cs.INCREMENTAL,
    "Qwen-Qwen3-0.6B": cs.PER_TURN,
    "Qwen-Qwen3-4B-Instruct-2507": cs.FAMILY,
    "Qwen-QwQ-32B": cs.PER_TURN,
    "meta-llama-Meta-Llama-3-8B-Instruct": cs.FAMILY,
    "meta-llama-Llama-3.1-8B-Instruct": cs.FAMILY,
    "meta-llama-Llama-3.2-3B-Instruct": cs.INCREMENTAL,
    "meta-llama-Llama-3.3-70B-Instruct": cs.FAMILY,
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("", "fails on every probe conversation"),
    "mistralai-Mistral-Nemo-Instruct-2407": cs.FAMILY,
    "Mistral-Small-3.2-24B-Instruct-2506": cs.INCREMENTAL,
    "unsloth-mistral-Devstral-Small-2507": cs.INCREMENTAL,
    "google-gemma-2-2b-it": cs.FAMILY,
    "google-gemma-3-it": cs.INCREMENTAL,
    "microsoft-Phi-3-mini-4k-instruct": cs.INCREMENTAL,
    "microsoft-Phi-3.5-mini-instruct": cs.FAMILY,
    "HuggingFaceTB-SmolLM3-3B": cs.INCREMENTAL,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": cs.PER_TURN,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": cs.PER_TURN,
    "ibm-granite-granite-3.3-2B-Instruct": cs.INCREMENTAL,
    "ibm-granite-granite-4.0": cs.INCREMENTAL,
    "LiquidAI-LFM2": cs.INCREMENTAL,
    "LFM2.5-Instruct": cs.INCREMENTAL,
    "CohereLabs-aya-expanse-8b": cs.INCREMENTAL,
    "openai-gpt-oss-120b": cs.PER_TURN,
}


def verdict_of(name: str) -> cs.Verdict:
    _model, bos, eos, _source = upstream_templates.CORPUS[name]
    return cs.training_verdict(upstream_templates.read(name), bos, eos)


def test_every_corpus_template_has_an_expected_verdict():
    assert set(EXPECTED) == set(upstream_templates.corpus())
    assert sum(1 for how in EXPECTED.values() if how in cs.HOW) >= 24


@pytest.mark.parametrize("name", list(EXPECTED))
def test_verdict_and_spans_over_every_probe(name):
    _model, bos, eos, _source = upstream_templates.CORPUS[name]
    verdict = verdict_of(name)
    trains, how, reason = verdict
    expected = EXPECTED[name]
    if isinstance(expected, tuple):
        assert not trains and expected[1] in reason
        with pytest.raises(UsageError, match="cannot train on this chat template"):
            cs.require(verdict)
        return
    assert trains and how == expected, reason
    accepted = 0
    for probe in cs.probes():
        try:
            samples = cs.samples(verdict, probe.messages, bos_token=bos, eos_token=eos, now=cs.PROBE_DATE)
        except UsageError as exc:
            assert "refused" in exc.message, (probe.name, exc.message)  # the template itself refuses the shape
            continue
        accepted += 1
        answers = [m["content"] for m in probe.messages if m["role"] == "assistant"]
        spans = [(s, a, b) for s in samples for a, b in s.spans]
        assert len(spans) == len(answers), probe.name
        if how == cs.PER_TURN:
            assert len(samples) == len(answers)
        for (sample, a, b), answer in zip(spans, answers):
            trained = sample.text[a:b]
            ends = [t for t in verdict.end_of_turn if trained.endswith(t)]
            assert ends, (probe.name, trained)
            body = trained[: -len(ends[0])]
            # the answer (as the template writes it: some trim it) ends the span, right before end-of-turn
            assert body.rstrip().endswith(answer.strip()), (probe.name, trained)
            assert not any(t in body for t in verdict.end_of_turn), (probe.name, trained)
    assert accepted >= 8, accepted  # system/no system, multi-turn, unicode, whitespace, empty, template syntax


def _trained(sample: cs.Sample) -> list[str]:
    """The text of each trained span."""
    return [sample.text[a:b] for a, b in sample.spans]


def test_next_turn_header_is_not_trained_and_earlier_turns_are_prefixes():
    verdict = verdict_of("Qwen-Qwen2.5-7B-Instruct")
    messages = ct.PROBES[5].messages  # system, two exchanges
    [sample] = cs.samples(verdict, messages, bos_token=None, eos_token="<|im_end|>")
    assert _trained(sample) == ["4.<|im_end|>", "12.<|im_end|>"]
    assert sample.text == ct.render(upstream_templates.read("Qwen-Qwen2.5-7B-Instruct"), messages)


def test_reasoning_templates_train_each_turn_after_its_own_inference_prompt():
    messages = ct.PROBES[5].messages
    template = upstream_templates.read("Qwen-Qwen3-0.6B")
    samples = cs.samples(verdict_of("Qwen-Qwen3-0.6B"), messages, bos_token=None, eos_token="<|im_end|>")
    for sample, upto in zip(samples, (2, 4)):
        prompt = ct.render(template, messages[:upto], add_generation_prompt=True)
        assert sample.text.startswith(prompt) and sample.spans[0][0] == len(prompt)
    assert _trained(samples[1]) == ["<think>\n\n</think>\n\n12.<|im_end|>"]
    # R1 distills: the generation prompt opens (and here closes) a think block the rendered turn lacks; the sample
    # keeps the prompt inference sees
    r1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"
    _m, bos, eos, _s = upstream_templates.CORPUS[r1]
    first = cs.samples(verdict_of(r1), messages, bos_token=bos, eos_token=eos)[0]
    prompt = ct.render(upstream_templates.read(r1), messages[:2], add_generation_prompt=True, bos_token=bos)
    assert first.text == prompt + "4." + eos and _trained(first) == ["4." + eos]


@pytest.mark.parametrize(
    "name, shown",
    [("ibm-granite-granite-3.3-2B-Instruct", "February 03, 2030"), ("meta-llama-Llama-3.2-3B-Instruct", "03 Feb 2030")],
)
def test_dated_templates_render_the_pinned_day(name, shown):
    _model, bos, eos, _source = upstream_templates.CORPUS[name]
    verdict = verdict_of(name)
    assert verdict.dated
    messages = ct.PROBES[2].messages  # no system message: the template writes its default one, with the date
    [sample] = cs.samples(verdict, messages, bos_token=bos, eos_token=eos, now=datetime(2030, 2, 3))
    assert shown in sample.text and _trained(sample)[0].startswith("4.")
    assert not verdict_of("Qwen-Qwen2.5-7B-Instruct").dated


def test_template_without_end_of_turn_and_one_that_does_not_parse_are_refused():
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    trains, how, reason = cs.training_verdict(plain, None, None)
    assert not trains and "could not learn to stop" in reason
    trains, _how, reason = cs.training_verdict("{% for %}", None, None)
    assert not trains and "does not parse" in reason
    assert not cs.training_verdict(None, None, None).trains


def test_a_trl_template_is_used_only_when_it_renders_like_the_original():
    original = upstream_templates.read("Qwen-Qwen2.5-7B-Instruct")
    marked = original.replace("{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
                              "{{- '<|im_start|>' + message.role + '\\n' }}{% generation %}{{- message.content + "
                              "'<|im_end|>' }}{% endgeneration %}{{- '\\n' }}", 1)  # fmt: skip
    assert marked != original and ct.has_generation_markers(marked)
    # marking user turns too makes no difference to the text, but the spans are wrong: not used
    assert cs.training_verdict(original, None, "<|im_end|>", trl_template=marked).how == cs.INCREMENTAL
    changed = marked.replace("<|im_start|>", "<|im_start|> ")
    assert cs.training_verdict(original, None, "<|im_end|>", trl_template=changed).how == cs.INCREMENTAL


def test_token_mask_marks_every_token_overlapping_a_span():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]
    assert cs.token_mask(offsets, [(4, 9)]) == [0, 1, 1, 0, 0]


# --- the one choice of training template every stage makes (checkpoints.use_training_template) ----------------------


class _Tokenizer:
    """What the choice reads of a tokenizer: its template and special tokens (no transformers needed)."""

    def __init__(self, chat_template: str | None):
        self.chat_template, self.bos_token, self.eos_token = chat_template, None, "<|im_end|>"


def test_every_stage_gets_the_same_training_template():
    from llmforge.checkpoints import use_training_template

    unmarked = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", ct.CHATML.jinja)
    for policy in ("raise", "keep", "keep-own"):
        tokenizer = _Tokenizer(unmarked)
        verdict = use_training_template(tokenizer, untrainable=policy)
        assert verdict.trains and verdict.source == "family" and tokenizer.chat_template == ct.CHATML.jinja


def test_a_template_that_cannot_train_is_each_callers_policy():
    from llmforge.checkpoints import use_training_template

    with pytest.raises(UsageError, match="cannot train on this chat template"):
        use_training_template(_Tokenizer(None), untrainable="raise")  # train
    with pytest.raises(UsageError, match="cannot train on this chat template"):
        use_training_template(_Tokenizer(None), untrainable="keep-own")  # eval: nothing to render with
    tokenizer = _Tokenizer(None)
    verdict = use_training_template(tokenizer, untrainable="keep")  # data: counts characters, says why
    assert not verdict.trains and verdict.reason and tokenizer.chat_template is None
    with pytest.raises(ValueError, match="untrainable"):
        use_training_template(_Tokenizer(None), untrainable="ignore")
