"""Ollama parity: each family's Go template, rendered by Go's text/template the way Ollama fills it, equals the
family's Jinja rendering byte for byte (tests/tools/gorender/main.go documents what it copies from Ollama)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llmforge import chat_templates as ct
from llmforge.errors import UsageError
from tests import upstream_templates

GORENDER_SRC = Path(__file__).resolve().parents[1] / "tools" / "gorender"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None,
    reason="Go is not installed (apt-get install golang-go): Ollama template parity needs Go's text/template",
)


@pytest.fixture(scope="module")
def gorender(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("gorender") / "gorender"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GORENDER_SRC, env=env, check=True, timeout=300)
    return binary


def go_render(binary: Path, template: str, messages, system: str = "") -> str:
    request = {"template": template, "messages": list(messages), "system": system}
    result = subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def go_render_many(binary: Path, requests: list[dict]) -> list[str | None]:
    """One gorender process for many renders: the text of each, or None where the template failed."""
    result = subprocess.run(
        [str(binary)], input=json.dumps({"batch": requests}), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [r.get("text") for r in json.loads(result.stdout)]


# An earlier answer that still carries its reasoning, as a client that keeps <think> in the text sends it back.
REASONING = ct.Probe(
    "reasoning-in-history",
    (
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<think>\nadding\n</think>\n\n4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12."},
        {"role": "user", "content": "Thanks."},
    ),
    True,
)
# Reasoning switched off from inside the system text, as SmolLM3 reads it.
SYSTEM_FLAG = ct.Probe(
    "system-flag", ({"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "Hi"}), True
)
PARITY_PROBES = (*ct.PROBES, REASONING, SYSTEM_FLAG)
THINK = (None, True, False)  # the /api/chat think flag left out, on, off (Jinja: enable_thinking absent/True/False)


def deployable() -> dict[str, tuple[str, str | None, str | None]]:
    """Every family and every corpus template that deploys: id -> (Jinja template, BOS, EOS)."""
    families = [*ct.FAMILIES.values(), *ct.DEPLOY_FAMILIES]
    found = {
        f"family:{f.name}" + (f" ({f.variant})" if f.variant else ""): (f.jinja, f.bos_token, f.eos_token or "</s>")
        for f in families
    }
    for name, (_, bos, eos, _) in upstream_templates.corpus().items():
        template = upstream_templates.read(name)
        if ct.deploy_verdict(template, bos, eos).status != "refused":
            found[f"corpus:{name}"] = (template, bos, eos)
    return found


DEPLOYABLE = deployable()


def jinja_outcome(template, messages, generation_prompt, bos, eos, think, *, iso=False):
    special = {} if think is None else {"enable_thinking": think}
    with ct.fixed_date(ct.PROBE_DATE, iso=iso):
        try:
            return "text", ct.render(
                template, messages, add_generation_prompt=generation_prompt, bos_token=bos, eos_token=eos, **special
            )
        except UsageError:
            return "refused", ""


def _stripped(messages, roles=("system", "user", "assistant")):
    return [{**m, "content": m["content"].strip()} if m["role"] in roles else m for m in messages]


def _edge_trimmed(messages):
    """Trailing whitespace off the system text, leading newlines off answers (SmolLM3's trimming)."""
    cut = {"system": lambda t: t.rstrip(), "assistant": lambda t: t.lstrip("\n")}
    return [{**m, "content": cut[m["role"]](m["content"])} if m["role"] in cut else m for m in messages]


def _without_reasoning(messages, strip="\n"):
    """Assistant text after its last </think>, as the templates cut it (most also drop the newlines after it)."""
    return [
        {**m, "content": m["content"].split("</think>")[-1].lstrip(strip)} if m["role"] == "assistant" else m
        for m in messages
    ]


def _flags_applied(messages, think):
    """What a template that reads /think and /no_think in the system text sees: the flag as the think setting, the
    text without it."""
    if not messages or messages[0]["role"] != "system":
        return messages, think
    text = messages[0]["content"]
    if "/no_think" in text:
        think = False
    elif "/think" in text:
        think = True
    text = text.replace("/no_think", "").replace("/think", "")
    return [{**messages[0], "content": text}, *messages[1:]], think


# Per caveat, the ways the Go side may be given the conversation so that only that difference is taken away:
# (messages, think) -> (messages, think). The parity test tries every combination of the verdict's caveats.
GO_SIDE = {
    "trims-whitespace": (
        lambda m, t: (_stripped(m), t),
        lambda m, t: (_stripped(m, ("user", "assistant")), t),  # templates that leave system text alone
        lambda m, t: (_edge_trimmed(m), t),
    ),
    "reasoning-history": (
        lambda m, t: (_without_reasoning(m), t),
        lambda m, t: (_without_reasoning(m, strip=""), t),  # templates that keep the newlines
    ),
    "system-flags": (_flags_applied,),
}


def _go_variants(messages, think, caveats):
    """(caveats it takes away, messages, think) for each combination of GO_SIDE transforms of the claimed caveats."""
    variants = [((), list(messages), think)]
    for caveat_id in sorted(caveats & set(GO_SIDE)):
        variants += [
            ((*taken, caveat_id), *transform(m, t)) for taken, m, t in variants for transform in GO_SIDE[caveat_id]
        ]
    return variants


def test_every_family_and_most_of_the_corpus_deploy():
    assert all(f"family:{n}" in DEPLOYABLE for n in ct.FAMILIES)
    assert sum(key.startswith("corpus:") for key in DEPLOYABLE) >= 15


@pytest.mark.parametrize("key", list(DEPLOYABLE))
def test_ollama_template_renders_like_the_models_jinja_except_for_named_caveats(gorender, key):
    """Go's text/template (as Ollama fills it) against the HF Jinja render, over whitespace, unicode, multi-turn,
    system and reasoning conversations with thinking unset/on/off, at one date for both: byte-identical wherever
    the verdict names no caveat; every difference explained by one of the verdict's caveats; every caveat seen."""
    template, bos, eos = DEPLOYABLE[key]
    verdict = ct.deploy_verdict(template, bos, eos)
    family = verdict.family
    caveats = set(verdict.caveat_ids)
    go_template = family.ollama_template_for(eos)
    prefix = family.bos_token or ""  # llama.cpp prepends BOS itself, so the Ollama template leaves it out
    date = f"{ct.PROBE_DATE:%Y-%m-%d}"

    cases = [(p, think) for p in PARITY_PROBES for think in THINK]
    requests, layout = [], []
    for probe, think in cases:
        variants = _go_variants(probe.messages, think, caveats)
        layout.append([taken for taken, _, _ in variants])
        requests += [{"template": go_template, "messages": m, "date": date, "think": t} for _, m, t in variants]
    rendered = iter(go_render_many(gorender, requests))

    identical, seen = 0, set()
    for (probe, think), takes in zip(cases, layout):
        messages = list(probe.messages)
        # Ollama adds the reply header after a user turn; a final assistant turn is a closed conversation.
        generation_prompt = messages[-1]["role"] != "assistant"
        go_side = [(taken, prefix + next(rendered)) for taken in takes]
        got = go_side[0][1]
        want = jinja_outcome(template, messages, generation_prompt, bos, eos, think)
        if want == ("text", got):
            identical += 1
            continue
        assert caveats - {"no-tools"}, (
            f"{key}: probe {probe.name} (think={think}) renders differently:\n{want}\n{got!r}"
        )
        jinja_side = [((), want)]
        if "date-format" in caveats:
            iso = jinja_outcome(template, messages, generation_prompt, bos, eos, think, iso=True)
            jinja_side.append((("date-format",), iso))
        if "drops-system" in caveats and want[0] == "refused":
            kept = [m for m in messages if m["role"] != "system"]
            jinja_side.append((("drops-system",), jinja_outcome(template, kept, generation_prompt, bos, eos, think)))
        # The fewest caveats that take the whole difference away.
        matches = [(*a, *b) for a, j in jinja_side for b, g in go_side if j == ("text", g)]
        assert matches, (
            f"{key}: probe {probe.name} (think={think}) differs in a way no caveat of {sorted(caveats)} explains"
        )
        seen.update(min(matches, key=len))
    if "date-format" not in caveats:  # with it, the date differs in every render
        assert identical >= len(ct.PROBES), f"{key}: only {identical} conversations render identically"
    # Caveats are measured, not decorative: each one claimed shows up (tools are never part of a probe).
    assert seen == caveats - {"no-tools"}, f"{key}: claimed {sorted(caveats)}, seen {sorted(seen)}"


@pytest.mark.parametrize("name", [n for n, f in ct.FAMILIES.items() if f.supports_system])
def test_modelfile_system_becomes_the_system_message(gorender, name):
    family = ct.FAMILIES[name]
    eos = family.eos_token or "</s>"
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    want = ct.render(
        family.jinja,
        [{"role": "system", "content": "Be brief."}, *conversation],
        add_generation_prompt=True,
        bos_token=family.bos_token,
        eos_token=eos,
    )
    got = go_render(gorender, family.ollama_template_for(eos), conversation, system="Be brief.")
    assert (family.bos_token or "") + got == want
    # A request's own system message wins over the Modelfile's SYSTEM, as in Ollama.
    own = [{"role": "system", "content": "Be brief."}, *conversation]
    assert go_render(gorender, family.ollama_template_for(eos), own, system="Something else.") == got


def test_the_comparison_catches_a_one_character_difference(gorender):
    broken = ct.CHATML.ollama_template.replace("<|im_end|>\n", "<|im_end|> ", 1)
    probe = ct.PROBES[0]
    want = ct.render(ct.CHATML.jinja, probe.messages, add_generation_prompt=True)
    assert go_render(gorender, broken, probe.messages) != want
    assert go_render(gorender, ct.CHATML.ollama_template, probe.messages) == want


def test_gorender_refuses_a_template_ollama_would_render_the_legacy_way(gorender):
    request = {"template": "{{ .Prompt }}", "messages": [{"role": "user", "content": "x"}], "system": ""}
    result = subprocess.run([str(gorender)], input=json.dumps(request), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and ".Messages" in result.stderr
