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


def parity_cases(family: ct.Family):
    """(probe, messages Jinja renders, generation prompt) for every probe Ollama can be asked to render."""
    for probe in ct.PROBES:
        if probe.padded and family.trims_content:
            continue  # Jinja trims, Ollama's Go templates cannot (documented in chat_templates)
        messages = probe.messages
        if not family.supports_system:
            # Jinja refuses a system message; the Go template, which cannot refuse, drops it.
            messages = tuple(m for m in messages if m["role"] != "system")
        # Ollama adds the reply header after a user turn; a final assistant turn is a closed conversation.
        yield probe, messages, messages[-1]["role"] != "assistant"


@pytest.mark.parametrize("name", list(ct.FAMILIES))
def test_go_template_renders_like_jinja(gorender, name):
    family = ct.FAMILIES[name]
    eos = family.eos_token or "</s>"
    go_template = family.ollama_template_for(eos)
    cases = list(parity_cases(family))
    assert len(cases) >= 10
    for probe, messages, generation_prompt in cases:
        want = ct.render(
            family.jinja,
            messages,
            add_generation_prompt=generation_prompt,
            bos_token=family.bos_token,
            eos_token=eos,
        )
        # llama.cpp prepends the BOS token itself, so the Ollama template leaves it out.
        got = (family.bos_token or "") + go_render(gorender, go_template, probe.messages)
        assert got == want, probe.name


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
