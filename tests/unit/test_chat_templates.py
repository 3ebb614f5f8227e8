"""Chat-template families: identification of real upstream templates, rendering, loss spans, Modelfile quoting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import upstream_templates

from llmforge import chat_spans as cs
from llmforge import chat_templates as ct
from llmforge.errors import UsageError

UPSTREAM = upstream_templates.expectations()


upstream = upstream_templates.read


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]


# --- identify ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_templates_are_identified_or_refused(name):
    bos, eos, expected = UPSTREAM[name]
    family = ct.identify(upstream(name), bos_token=bos, eos_token=eos)
    assert (family.name if family else None) == expected


@pytest.mark.parametrize("name", [n for n, v in UPSTREAM.items() if v[2]])
def test_identified_family_renders_every_probe_like_the_upstream_template(name):
    bos, eos, expected = UPSTREAM[name]
    family = ct.get_family(expected)

    def outcome(template, probe, gen):
        try:
            return ct.render(template, probe.messages, add_generation_prompt=gen, bos_token=bos, eos_token=eos)
        except UsageError:
            return "refused"

    for probe in ct.PROBES:
        for gen in (True, False):
            assert outcome(family.jinja, probe, gen) == outcome(upstream(name), probe, gen), (probe.name, gen)


def test_each_family_is_identified_as_itself_and_only_itself():
    for family in ct.FAMILIES.values():
        bos, eos = family.bos_token or "<s>", family.eos_token or "</s>"
        assert ct.identify(family.jinja, bos_token=bos, eos_token=eos) is family
        others = [f for f in ct.FAMILIES.values() if f is not family]
        assert all(ct._first_difference(family.jinja, f, bos, eos, {}) is not None for f in others)


ONE_CHARACTER_CHANGES = [
    ("meta-llama-Llama-3.1-8B-Instruct", "December 2023", "December 2024"),
    ("google-gemma-2-2b-it", "{{'<start_of_turn>model\n'}}", "{{'<start_of_turn>model '}}"),
    ("microsoft-Phi-3.5-mini-instruct", "'<|user|>\n'", "'<|user|> '"),
    ("mistralai-Mistral-Nemo-Instruct-2407", '"\\n\\n"', '"\\n "'),
]


@pytest.mark.parametrize(("name", "old", "new"), ONE_CHARACTER_CHANGES)
def test_identify_rejects_a_template_that_renders_one_character_differently(name, old, new):
    bos, eos, _ = UPSTREAM[name]
    original = upstream(name)
    assert original.count(old) == 1
    assert ct.identify(original.replace(old, new), bos_token=bos, eos_token=eos) is None


def test_identify_rejects_a_chatml_that_differs_only_on_padded_or_empty_content():
    trimming = ct.CHATML.jinja.replace(
        "message['content'] + '<|im_end|>\\n'", "message['content'] | trim + '<|im_end|>\\n'"
    )
    assert trimming != ct.CHATML.jinja
    assert ct.identify(trimming, bos_token=None, eos_token=None) is None
    phi_always_system = upstream("microsoft-Phi-3.5-mini-instruct").replace(
        "message['role'] == 'system' and message['content']", "message['role'] == 'system'"
    )
    assert ct.identify(phi_always_system, bos_token="<s>", eos_token="<|endoftext|>") is None


def test_identify_needs_the_tokens_the_family_writes():
    # Mistral's template with a tokenizer whose EOS is not </s> renders differently from the Ollama template.
    assert ct.identify(upstream("mistralai-Mistral-Nemo-Instruct-2407"), bos_token="<s>", eos_token="<eos>") is None


def test_identify_refuses_a_template_that_does_not_parse():
    with pytest.raises(UsageError, match="does not parse"):
        ct.identify("{% for m in messages %}", bos_token=None, eos_token=None)


def test_explain_unknown_names_the_obstacles():
    qwen = ct.explain_unknown(upstream("Qwen-Qwen3-0.6B"), bos_token=None, eos_token="<|im_end|>")
    assert "<think>" in qwen and "closest family: chatml" in qwen
    granite = ct.explain_unknown(
        upstream("ibm-granite-granite-3.3-2B-Instruct"), bos_token=None, eos_token="<|end_of_text|>"
    )
    assert "strftime_now" in granite


# --- render -----------------------------------------------------------------------------------------------------


def test_render_chatml_literal():
    text = ct.render(ct.CHATML.jinja, CONVERSATION, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_render_llama3_literal():
    text = ct.render(ct.LLAMA3.jinja, CONVERSATION, add_generation_prompt=True, bos_token="<|begin_of_text|>")
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_render_without_generation_prompt_and_llama31_date_string():
    closed = CONVERSATION[:3]
    assert ct.render(ct.CHATML.jinja, closed).endswith("<|im_start|>assistant\nHello!<|im_end|>\n")
    text = ct.render(ct.LLAMA3_1.jinja, closed[1:], bos_token="<|begin_of_text|>", date_string="01 Jan 2030")
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2030\n\n<|eot_id|>"
    )


def test_render_behaves_like_transformers_environment():
    # tojson without HTML escaping, with HF's keyword arguments
    template = "{{ messages[0]['content'] | tojson }}|{{ {'b': 1, 'a': '<&>'} | tojson(sort_keys=True) }}"
    assert ct.render(template, [{"role": "user", "content": "é<>&'"}]) == '"é<>&\'"|{"a": "<&>", "b": 1}'
    # tools and documents are defined (as None), None-valued message keys are dropped
    template = "{{ tools is defined }} {{ tools is none }} {{ messages[0].name is defined }}"
    assert ct.render(template, [{"role": "user", "content": "x", "name": None}]) == "True True False"
    # strftime_now, loop controls, trim_blocks/lstrip_blocks
    template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\n  {{ m.role }}\n{% endfor %}"
    assert ct.render(template, CONVERSATION) == "  system\n"  # lstrip_blocks strips before tags, not {{
    assert len(ct.render("{{ strftime_now('%Y') }}", CONVERSATION)) == 4
    # the sandbox refuses underscore attributes on namespaces
    with pytest.raises(UsageError):
        ct.render("{% set ns = namespace(_x=1) %}", CONVERSATION)


def test_render_refusals_are_usage_errors():
    with pytest.raises(UsageError, match="System role not supported"):
        ct.render(ct.GEMMA.jinja, CONVERSATION, bos_token="<bos>")
    with pytest.raises(UsageError, match="alternate"):
        ct.render(ct.MISTRAL.jinja, [CONVERSATION[1], CONVERSATION[1]], bos_token="<s>", eos_token="</s>")
    with pytest.raises(UsageError, match="empty conversation"):
        ct.render(ct.CHATML.jinja, [])


# --- generation spans and the end-of-turn token --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ct.FAMILIES))
def test_family_end_of_turn_is_inside_every_generation_span(name):
    family = ct.FAMILIES[name]
    bos, eos = family.bos_token or "<s>", family.eos_token or "</s>"
    assert ct.has_generation_markers(family.jinja)
    verdict = cs.training_verdict(family.jinja, bos, eos)  # what training decides, over every probe conversation
    assert verdict.trains and verdict.how == cs.MARKERS, verdict.reason
    messages = [*CONVERSATION, {"role": "assistant", "content": "Four."}]
    if not family.supports_system:
        messages = messages[1:]
    rendered = ct.render_with_spans(family.jinja, messages, bos_token=bos, eos_token=eos)
    eot = ct.end_of_turn_tokens_for(family, eos)
    assert len(rendered.spans) == sum(m["role"] == "assistant" for m in messages)
    for start, end in rendered.spans:
        assert rendered.text[start:end].endswith(eot), rendered.text[start:end]  # the end-of-turn token is the last trained text


def test_spans_hold_exactly_the_answers_and_their_end_token():
    rendered = ct.render_with_spans(
        ct.CHATML.jinja, CONVERSATION[:3] + [CONVERSATION[3], {"role": "assistant", "content": "4"}]
    )
    assert [rendered.text[a:b] for a, b in rendered.spans] == ["Hello!<|im_end|>", "4<|im_end|>"]
    text = rendered.text
    assert all(text[s:e] in ("Hello!<|im_end|>", "4<|im_end|>") for s, e in rendered.spans)


def test_end_of_turn_outside_the_span_is_caught():
    outside = ct.CHATML.jinja.replace(
        "{{- message['content'] + '<|im_end|>' }}\n        {%- endgeneration %}\n        {{- '\\n' }}",
        "{{- message['content'] }}\n        {%- endgeneration %}\n        {{- '<|im_end|>\\n' }}",
    )
    assert outside != ct.CHATML.jinja
    assert ct.identify(outside, bos_token=None, eos_token=None) is ct.CHATML  # same text, different spans
    verdict = cs.training_verdict(outside, None, "<|im_end|>")  # training refuses it, saying why
    assert not verdict.trains and "never learn to stop" in verdict.reason
    with pytest.raises(UsageError, match="never learn to stop"):
        cs.require(verdict)


def test_end_of_turn_ids_check():
    # ids:  user  hi  eot | asst  4   eot | user  x  eot | asst  5   eot
    ids = [1, 10, 2, 3, 11, 2, 1, 12, 2, 3, 13, 2]
    ct.check_end_of_turn_ids_trained(ids, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1], [2], assistant_turns=2)
    with pytest.raises(UsageError, match="assistant turn 2: no end-of-turn token id"):
        ct.check_end_of_turn_ids_trained(ids, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0], [2], assistant_turns=2)
    with pytest.raises(UsageError, match="trains 1 stretches of tokens for 2 assistant turns"):
        ct.check_end_of_turn_ids_trained(ids, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0], [2], assistant_turns=2)


def test_generation_block_inside_a_set_block_is_detected():
    template = "{% for m in messages %}{% set x %}pre{% generation %}{{ m.content }}{% endgeneration %}{% endset %}{{ x }}{% endfor %}"
    assert ct.render(template, CONVERSATION[:1]) == "preBe brief."
    with pytest.raises(UsageError, match="cannot locate"):
        ct.render_with_spans(template, CONVERSATION[:1])


# --- the training template choice, stop tokens ----------------------------------------------------------------------


def test_the_training_template_choice():
    # chat_spans.training_verdict is what training (and data, eval) ask: a marked template is used as is, one a family
    # reproduces is swapped for the family's marked twin, a configured family wins, an unknown name is a usage error
    marked = cs.training_verdict(ct.CHATML.jinja, None, "<|im_end|>")
    assert (marked.template, marked.family, marked.source) == (ct.CHATML.jinja, ct.CHATML, "tokenizer")

    gemma = cs.training_verdict(upstream("google-gemma-2-2b-it"), "<bos>", "<eos>")
    assert (gemma.template, gemma.source) == (ct.GEMMA.jinja, "family")

    configured = cs.training_verdict(upstream("Qwen-Qwen3-0.6B"), None, "<|im_end|>", configured="chatml")
    assert (configured.template, configured.source) == (ct.CHATML.jinja, "configured")
    assert cs.training_verdict(None, None, None, configured="alpaca").family is ct.ALPACA

    missing = cs.training_verdict(None, None, None)
    assert not missing.trains and "no chat template" in missing.reason
    with pytest.raises(UsageError) as err:
        cs.require(missing)
    assert "model.chat_template" in err.value.hint
    with pytest.raises(UsageError) as err:
        cs.training_verdict(None, None, None, configured="lama3")
    assert "did you mean 'llama3'" in err.value.hint


def test_stop_tokens_for():
    stops = ct.stop_tokens_for(
        upstream("meta-llama-Llama-3.1-8B-Instruct"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        extra_eos=["<|end_of_text|>", "<|eom_id|>"],
    )
    assert stops[0] == "<|eot_id|>" and len(stops) == len(set(stops))
    assert {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|start_header_id|>"} <= set(stops)
    alpaca = ct.stop_tokens_for(ct.ALPACA.jinja, bos_token=None, eos_token="<|endoftext|>")
    assert alpaca == ("### Instruction:", "### Response:", "<|endoftext|>")
    unknown = ct.stop_tokens_for(
        upstream("Qwen-Qwen3-0.6B"), bos_token=None, eos_token="<|im_end|>", extra_eos=["<|endoftext|>"]
    )
    assert unknown == ("<|im_end|>", "<|endoftext|>")


def test_ollama_template_for_fills_the_tokenizer_eos():
    assert ct.CHATML.ollama_template_for("<|im_end|>") == ct.CHATML.ollama_template
    filled = ct.ALPACA.ollama_template_for("<|endoftext|>")
    assert ct.EOS_PLACEHOLDER not in filled and '{{ "<|endoftext|>" }}' in filled
    assert json.loads('"<|endoftext|>"') == "<|endoftext|>"
    with pytest.raises(UsageError, match="end-of-text token"):
        ct.ALPACA.ollama_template_for(None)


def test_get_family():
    assert ct.get_family("ChatML") is ct.CHATML
    with pytest.raises(UsageError, match="unknown chat-template family 'gema'") as err:
        ct.get_family("gema")
    assert "did you mean 'gemma'" in err.value.hint


# --- Modelfile quoting ------------------------------------------------------------------------------------------


def test_modelfile_quote():
    text = 'Say "hi" {{ .Content }}\n\tünï 🙂 end"'
    assert ct.modelfile_quote(text) == f'"""{text}"""'
    for family in ct.FAMILIES.values():
        ct.modelfile_quote(family.ollama_template_for("</s>"), what="template")  # every family can be written
    with pytest.raises(UsageError, match='contains """'):
        ct.modelfile_quote('a """ b', what="system prompt")
    with pytest.raises(UsageError, match="U\\+00A0"):
        ct.modelfile_quote("no\u00a0break")
    with pytest.raises(UsageError, match="U\\+0000"):
        ct.modelfile_quote("nul\x00")


def test_template_writes_bos():
    assert ct.template_writes_bos(ct.LLAMA3.jinja, bos_token="<|begin_of_text|>")
    assert ct.template_writes_bos(upstream("google-gemma-2-2b-it"), bos_token="<bos>", eos_token="<eos>")
    assert not ct.template_writes_bos(ct.CHATML.jinja, bos_token="<|endoftext|>")
    assert not ct.template_writes_bos(upstream("microsoft-Phi-3.5-mini-instruct"), bos_token="<s>")
    assert not ct.template_writes_bos(ct.LLAMA3.jinja, bos_token=None)


def test_module_imports_only_the_standard_library_and_jinja2():
    code = (
        "import sys; before = set(sys.modules); import llmforge.chat_templates; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert set(out.stdout.split()) == {"jinja2", "markupsafe", "llmforge"}


# --- deploy verdicts over the whole corpus ----------------------------------------------------------------------

# What deploy makes of every real template in tests/fixtures/chat_templates: (status, family, caveat ids). The
# Ollama twins of the deployable ones are checked against Go's text/template in test_template_parity.py.
CORPUS_VERDICTS = {
    "Qwen-Qwen2.5-7B-Instruct": ("caveats", "chatml", ("no-tools",)),
    "Qwen-Qwen3-0.6B": ("caveats", "chatml", ("no-tools", "reasoning-history")),
    "Qwen-Qwen3-4B-Instruct-2507": ("caveats", "chatml", ("no-tools",)),
    "Qwen-QwQ-32B": ("caveats", "chatml", ("no-tools", "reasoning-history")),
    "meta-llama-Meta-Llama-3-8B-Instruct": ("caveats", "llama3", ("trims-whitespace",)),
    "meta-llama-Llama-3.1-8B-Instruct": ("caveats", "llama3.1", ("trims-whitespace", "no-tools")),
    "meta-llama-Llama-3.2-3B-Instruct": ("caveats", "llama3.1", ("trims-whitespace", "date-format", "no-tools")),
    "meta-llama-Llama-3.3-70B-Instruct": ("caveats", "llama3.1", ("trims-whitespace", "no-tools")),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("refused", None, ()),
    "mistralai-Mistral-Nemo-Instruct-2407": ("caveats", "mistral", ("no-tools",)),
    "Mistral-Small-3.2-24B-Instruct-2506": ("caveats", "mistral-system-prompt", ("no-tools",)),
    "unsloth-mistral-Devstral-Small-2507": ("caveats", "mistral-system-prompt", ("no-tools",)),
    "google-gemma-2-2b-it": ("caveats", "gemma", ("trims-whitespace", "drops-system")),
    "google-gemma-3-it": ("caveats", "gemma3", ("trims-whitespace",)),
    "microsoft-Phi-3-mini-4k-instruct": ("exact", "phi3", ()),
    "microsoft-Phi-3.5-mini-instruct": ("exact", "phi3", ()),
    "HuggingFaceTB-SmolLM3-3B": ("caveats", "chatml-reasoning-header", ("trims-whitespace", "system-flags")),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("caveats", "deepseek-r1", ("no-tools", "reasoning-history")),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("caveats", "deepseek-r1", ("no-tools", "reasoning-history")),
    "ibm-granite-granite-3.3-2B-Instruct": ("caveats", "granite", ("date-format", "no-tools")),
    "ibm-granite-granite-4.0": ("caveats", "granite", ("no-tools",)),
    "LiquidAI-LFM2": ("caveats", "chatml", ("no-tools",)),
    "LFM2.5-Instruct": ("caveats", "chatml", ("no-tools", "reasoning-history")),
    "CohereLabs-aya-expanse-8b": ("caveats", "cohere", ("trims-whitespace",)),
    "openai-gpt-oss-120b": ("refused", None, ()),
}


# The first thing each refusal names: what the template does that no Ollama TEMPLATE llmforge writes can.
REFUSED_BECAUSE = {
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "it refuses a plain conversation without tools",
    "openai-gpt-oss-120b": "it writes OpenAI's harmony format",
}


def test_every_corpus_template_has_a_verdict_and_most_deploy():
    assert {n for n, (status, _, _) in CORPUS_VERDICTS.items() if status == "refused"} == set(REFUSED_BECAUSE)
    assert set(CORPUS_VERDICTS) == set(upstream_templates.corpus())
    deployed = [n for n, (status, _, _) in CORPUS_VERDICTS.items() if status != "refused"]
    assert len(deployed) >= 15


@pytest.mark.parametrize("name", sorted(CORPUS_VERDICTS))
def test_deploy_verdict_over_the_corpus(name):
    _, bos, eos, _ = upstream_templates.corpus()[name]
    status, family, caveats = CORPUS_VERDICTS[name]
    verdict = ct.deploy_verdict(upstream_templates.read(name), bos, eos)
    assert (verdict.status, verdict.family.name if verdict.family else None, verdict.caveat_ids) == (
        status,
        family,
        caveats,
    )
    if status == "refused":
        assert verdict.reason.startswith("no family or variant") and REFUSED_BECAUSE[name] in verdict.reason
        return
    assert not verdict.reason
    for item in verdict.caveats:
        assert item.text.startswith(ct.CAVEATS[item.id])
    # The twin renders every probe as the model's own template does (the date being a parameter of both).
    assert ct._matches(upstream_templates.read(name), verdict.family, bos, eos)
    assert "currentDate" in verdict.family.ollama_template or "strftime_now" not in verdict.family.jinja


def test_variants_are_read_from_renders_not_names():
    qwen = ct.deploy_verdict(upstream_templates.read("Qwen-Qwen2.5-7B-Instruct"), None, "<|im_end|>")
    assert "You are Qwen, created by Alibaba Cloud." in qwen.family.ollama_template
    # The same text with another default system prompt gets that prompt, whatever the model is called.
    other = upstream_templates.read("Qwen-Qwen2.5-7B-Instruct").replace("You are Qwen", "You are Zed")
    zed = ct.deploy_verdict(other, None, "<|im_end|>")
    assert "You are Zed, created by" in zed.family.ollama_template and "Qwen" not in zed.family.ollama_template
    granite = ct.deploy_verdict(upstream_templates.read("ibm-granite-granite-3.3-2B-Instruct"), None, "<|end_of_text|>")
    assert "Today's Date: {{ currentDate }}." in granite.family.ollama_template
    assert "'December 27, 2031'" in granite.caveats[0].text
    mistral = ct.deploy_verdict(upstream_templates.read("Mistral-Small-3.2-24B-Instruct-2506"), "<s>", "</s>")
    assert "The current date is {{ currentDate }}." in mistral.family.ollama_template  # same format: exact date
    qwen3 = ct.deploy_verdict(upstream_templates.read("Qwen-Qwen3-0.6B"), None, "<|im_end|>")
    assert "$.IsThinkSet" in qwen3.family.ollama_template


def test_a_template_nothing_reproduces_is_refused_with_a_reason():
    verdict = ct.deploy_verdict("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}", None, None)
    assert verdict.status == "refused" and verdict.family is None and "closest family" in verdict.reason
    assert ct.deploy_verdict(None, None, None).reason == "the model has no chat template"
