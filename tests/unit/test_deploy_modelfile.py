"""Modelfile writing and quoting, and the choices deploy makes from a model's tokenizer facts (no torch, no server).

`parse_modelfile` reads a Modelfile the way Ollama's parser (parser/parser.go) does: a value runs on over newlines
until the text so far unquotes, `\"\"\"...\"\"\"` and `"..."` have no escapes, and characters Go's strconv.IsPrint
rejects (other than spaces and newlines) are dropped. Round-tripping through it proves that what Ollama reads from
our Modelfile is exactly what we meant, and exactly what the /api/create request carries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import upstream_templates
from hypothesis import given, settings
from hypothesis import strategies as st

from llmforge import chat_templates as ct
from llmforge.config.deploy import DeployConfig
from llmforge.deployment import modelfile as mf
from llmforge.deployment.ollama_deploy import (
    _bos_check,
    check_name,
    choose_template,
    full_name,
    leak_markers,
    stop_tokens,
)
from llmforge.deployment.source import GgufFacts, TrainingTokenizer
from llmforge.errors import ConfigError, UsageError


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse_modelfile(text: str) -> list[tuple[str, object]]:
    text = "".join(ch for ch in text if ch.isprintable() or ch in " \t\r\n")
    lines, i, commands = text.split("\n"), 0, []
    while i < len(lines):
        head = lines[i].lstrip(" \t")
        i += 1
        if not head or head.startswith("#"):
            continue
        word, _, value = head.partition(" ")
        word = word.lower()
        key = word
        if word in ("parameter", "message"):
            key, _, value = value.lstrip(" \t").partition(" ")
        while True:
            args, ok = _unquote(value.strip())
            if ok:
                break
            assert i < len(lines), "unexpected end of Modelfile"
            value += "\n" + lines[i]
            i += 1
        commands.append((("message", key) if word == "message" else key, args))
    return commands


def spec(**kw) -> mf.ModelfileSpec:
    base = dict(gguf=Path("/models/x-q8_0.gguf"), template=ct.CHATML.ollama_template, stop=["<|im_end|>"])
    return mf.ModelfileSpec(**{**base, **kw})


def test_modelfile_round_trips_through_ollamas_parser_to_the_create_request():
    s = spec(
        system='  Be "precise".\n{{ .System }} ü 🙂  ',
        stop=["<|im_end|>", "### Instruction:", "\n\nUser:", 'a"b'],
        parameters={"num_ctx": 2048, "temperature": 0.2},
        messages=[{"role": "user", "content": "q: a"}, {"role": "assistant", "content": "a\n\nb"}],
        license="MIT\nline two",
    )
    parsed = parse_modelfile(mf.render(s, name="bot"))
    request = mf.create_request(s, "sha256:" + "a" * 64)
    assert parsed[0] == ("from", "/models/x-q8_0.gguf")
    assert dict(parsed)["template"] == request["template"] == ct.CHATML.ollama_template
    assert dict(parsed)["system"] == request["system"] == s.system
    assert [v for k, v in parsed if k == "stop"] == request["parameters"]["stop"] == s.stop
    assert dict(parsed)["num_ctx"] == "2048" and dict(parsed)["temperature"] == "0.2"
    assert [(k[1], v) for k, v in parsed if isinstance(k, tuple)] == [
        (m["role"], m["content"]) for m in request["messages"]
    ]
    assert dict(parsed)["license"] == request["license"] == "MIT\nline two"
    assert request["files"] == {"model.gguf": "sha256:" + "a" * 64}


@pytest.mark.parametrize("family", list(ct.FAMILIES.values()), ids=lambda f: f.name)
def test_every_familys_go_template_survives_the_modelfile(family):
    template = family.ollama_template_for("</s>")
    parsed = dict(parse_modelfile(mf.render(spec(template=template, stop=list(family.stop_tokens)), name="m")))
    assert parsed["template"] == template


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_text_is_either_written_exactly_or_refused(text):
    try:
        rendered = mf.render(spec(system=text or "x"), name="m")
    except UsageError as e:
        assert '"""' in (text or "x") or "drops" in e.message
        return
    assert dict(parse_modelfile(rendered))["system"] == (text or "x")


def test_triple_quotes_and_dropped_characters_are_refused_with_the_reason():
    with pytest.raises(UsageError, match='system prompt contains """'):
        mf.render(spec(system='say """hi"""'), name="m")
    with pytest.raises(UsageError, match='chat template contains """'):
        mf.render(spec(template='{{ """ }}'), name="m")
    with pytest.raises(UsageError, match=r"content contains characters .* drops \(U\+200B\)"):
        mf.render(spec(messages=[{"role": "user", "content": "zero\u200bwidth"}]), name="m")


def test_no_template_line_when_embedded_and_the_create_command():
    text = mf.render(spec(template=None), name="bot")
    assert "TEMPLATE" not in text and "template" not in mf.create_request(spec(template=None), "sha256:0")
    assert mf.create_command("bot", Path("deploy/bot/Modelfile")) == "ollama create bot -f deploy/bot/Modelfile"


def test_parameters_are_checked_by_name_and_type():
    assert mf.check_parameters({"temperature": 1, "stop": "###", "num_ctx": 4096.0}) == {
        "temperature": 1.0,
        "stop": ["###"],
        "num_ctx": 4096,
    }
    with pytest.raises(ConfigError, match="deploy.parameters.temprature: not an Ollama parameter") as e:
        mf.check_parameters({"temprature": 0.1})
    assert "temperature" in e.value.hint
    with pytest.raises(ConfigError, match="num_ctx: expected int"):
        mf.check_parameters({"num_ctx": 1.5})
    with pytest.raises(ConfigError, match="top_k: expected int"):
        mf.check_parameters({"top_k": True})
    with pytest.raises(ConfigError, match=r"deploy.messages\[0\]"):
        mf.check_messages([{"role": "tool", "content": "x"}])


def test_names():
    assert check_name("support-bot") == "support-bot" and full_name("support-bot") == "support-bot:latest"
    assert full_name("me/bot:v2") == "me/bot:v2"
    with pytest.raises(UsageError, match="not a valid Ollama model name"):
        check_name("bad name")


# --------------------------------------------------------------------------------------------------------------
# What the Modelfile says, decided from the tokenizer's facts
# --------------------------------------------------------------------------------------------------------------


def facts(**kw) -> GgufFacts:
    base = dict(
        architecture="llama",
        chat_template=None,
        tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "a"),
        bos_token=None,
        eos_token="<|im_end|>",
        end_of_turn_tokens=(),
        add_bos=False,
        context_length=4096,
        control_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    )
    return GgufFacts(**{**base, **kw})


def test_the_family_comes_from_rendering_the_models_template_not_its_name():
    tok = TrainingTokenizer(chat_template=ct.CHATML.jinja, eos_token="<|im_end|>", generation_eos_ids=(0,))
    choice = choose_template("auto", facts(chat_template="something else"), tok)
    assert choice.family is ct.CHATML and choice.source == "identified"
    assert choice.ollama_template == ct.CHATML.ollama_template
    assert any("differs from the training tokenizer" in w for w in choice.warnings)
    stops = stop_tokens(choice.family, facts(), tok, ["###"])
    assert stops == ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "###"]
    assert set(leak_markers(choice.family, facts(), stops)) >= {"<|im_end|>", "<|im_start|>", "<|endoftext|>"}


@pytest.mark.parametrize("name", sorted(upstream_templates.corpus()))
def test_corpus_templates_deploy_as_their_verdict_says(name):
    _, bos, eos, _ = upstream_templates.corpus()[name]
    template = upstream_templates.read(name)
    verdict = ct.deploy_verdict(template, bos, eos)
    tok = TrainingTokenizer(chat_template=template, bos_token=bos, eos_token=eos)
    g = facts(tokens=tuple(t for t in (bos, eos) if t), bos_token=bos, eos_token=eos, add_bos=bos is not None)
    if verdict.status == "refused":
        with pytest.raises(UsageError, match="not one llmforge can reproduce") as e:
            choose_template("auto", g, tok)
        assert verdict.reason in e.value.message and "deploy.template: embedded" in e.value.hint
        return
    choice = choose_template("auto", g, tok)
    assert choice.family == verdict.family and choice.ollama_template == verdict.family.ollama_template_for(eos)
    assert choice.status == verdict.status and choice.caveats == verdict.caveats
    stops = stop_tokens(choice.family, g, tok, [])
    assert set(choice.family.stop_tokens) | {eos} <= set(stops)
    _bos_check(choice.family, g, [])  # these tokenizers add their BOS: accepted


def test_a_configured_family_that_renders_differently_is_refused():
    """deploy.template: <family> over a model whose own template is something else would silently differ."""
    llama32 = upstream_templates.read("meta-llama-Llama-3.2-3B-Instruct")
    tok = TrainingTokenizer(chat_template=llama32, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    g = facts(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos=True)
    with pytest.raises(UsageError, match=r"deploy.template is 'llama3.1' but .* llama3.1 \(today's date\)"):
        choose_template("llama3.1", g, tok)
    same = TrainingTokenizer(chat_template=ct.LLAMA3.jinja, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    configured = choose_template("llama3", g, same)
    assert configured.family is ct.LLAMA3 and [c.id for c in configured.caveats] == ["trims-whitespace"]


def test_unknown_embedded_and_configured_templates():
    odd = facts(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(UsageError, match="not one llmforge can reproduce") as e:
        choose_template("auto", odd, TrainingTokenizer())
    assert "deploy.template: embedded" in e.value.hint
    embedded = choose_template("embedded", odd, TrainingTokenizer())
    assert embedded.ollama_template is None and "not checked" in embedded.warnings[0]
    with pytest.raises(UsageError, match="is none llmforge knows"):
        choose_template("chatml", odd, TrainingTokenizer())
    forced = choose_template("chatml", facts(), TrainingTokenizer())  # no template at all: the family is the format
    assert forced.family is ct.CHATML and forced.caveats == ()
    with pytest.raises(UsageError, match="has no chat template"):
        choose_template("auto", facts(), TrainingTokenizer())
    with pytest.raises(UsageError, match="unknown chat-template family 'chatm'") as e:
        choose_template("chatm", odd, TrainingTokenizer())
    assert "did you mean 'chatml'" in e.value.hint


def test_bos_must_be_added_by_the_gguf_when_the_family_writes_it():
    with pytest.raises(UsageError, match="add_bos_token=false"):
        _bos_check(ct.LLAMA3, facts(bos_token="<|begin_of_text|>", add_bos=False), [])
    warnings: list[str] = []
    _bos_check(ct.CHATML, facts(bos_token="<s>", add_bos=True), warnings)
    assert "never wrote in training" in warnings[0]
    _bos_check(ct.LLAMA3, facts(bos_token="<|begin_of_text|>", add_bos=True), warnings)
    assert len(warnings) == 1


def test_generation_config_eos_ids_and_gguf_eot_become_stops():
    g = facts(tokens=("<s>", "</s>", "<|eot_id|>", "<|eom_id|>"), eos_token="</s>", end_of_turn_tokens=("<|eot_id|>",))
    tok = TrainingTokenizer(generation_eos_ids=(3, 99))  # 99 is beyond the vocabulary: ignored
    assert stop_tokens(None, g, tok, []) == ["</s>", "<|eot_id|>", "<|eom_id|>"]


def test_config_fields_have_defaults_that_deploy_accepts():
    cfg = DeployConfig()
    assert cfg.template == "auto" and cfg.check is True and cfg.messages == [] and cfg.license is None


def test_a_modelfile_over_a_model_in_ollama_with_an_adapter_says_from_and_adapter_both_ways():
    s = spec(gguf=None, template=None, base="llama3.2", adapter=Path("/w/export/r/lora/r-lora-f32.gguf"), system="Hi")
    parsed = parse_modelfile(mf.render(s, name="bot"))
    assert parsed[:2] == [("from", "llama3.2"), ("adapter", "/w/export/r/lora/r-lora-f32.gguf")]
    request = mf.create_request(s, None, "sha256:" + "b" * 64)
    assert request["from_"] == "llama3.2" and "files" not in request and "template" not in request
    assert request["adapters"] == {"r-lora-f32.gguf": "sha256:" + "b" * 64} and request["system"] == "Hi"


def test_the_adapters_base_is_compared_key_by_key_and_by_vocabulary_hash_when_ollama_lists_it():
    from llmforge.deployment.source import base_mismatches, tokens_hash

    expected = {
        "general.architecture": "llama",
        "llama.block_count": 16,
        "llama.embedding_length": 2048,
        "llama.vocab_size": 128256,
        "tokenizer.ggml.tokens": tokens_hash(["<s>", "a", "b"]),
    }
    same = {"general.architecture": "llama", "llama.block_count": 16, "llama.embedding_length": 2048,
            "tokenizer.ggml.tokens": []}  # fmt: skip
    assert base_mismatches(expected, same) == []  # vocab_size unreported, tokens not listed: not differences
    other = {**same, "llama.block_count": 28, "llama.embedding_length": 3072, "tokenizer.ggml.tokens": ["<s>", "a"]}
    assert base_mismatches(expected, other) == [
        "llama.block_count is 28, the adapter's base has 16",
        "llama.embedding_length is 3072, the adapter's base has 2048",
        "the tokenizer's vocabulary differs (tokenizer.ggml.tokens hash)",
    ]
    assert base_mismatches(expected, {**same, "tokenizer.ggml.tokens": ["<s>", "a", "b"]}) == []
    assert base_mismatches(expected, {**same, "general.architecture": "qwen2"}) == [
        "general.architecture is qwen2, the adapter's base has llama"
    ]


def test_the_stop_strings_of_a_model_in_ollama_are_read_from_shows_parameters():
    from llmforge.deployment.ollama_deploy import _parameter_stops

    shown = 'num_keep                       24\nstop                           "<|eot_id|>"\nstop    "a b"\ntemperature 0.7'
    assert _parameter_stops(shown) == ["<|eot_id|>", "a b"]
