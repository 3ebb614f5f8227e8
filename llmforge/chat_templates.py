"""Chat-template families: the one place that knows how a conversation becomes text.

A model's chat template decides what it sees in training, what llama.cpp embeds in its GGUF and what Ollama
renders at inference; all three must produce the same text, byte for byte. This module holds, per family, the
HF Jinja template (with ``{% generation %}`` markers around each assistant turn, end-of-turn token inside), the
Ollama Go ``text/template`` that renders the same text, and the stop tokens.

The contract:
- ``render`` renders a Jinja chat template exactly as transformers' ``apply_chat_template(tokenize=False)``
  does (same sandbox, options, globals and filters); ``render_with_spans`` also returns the character span of
  every ``{% generation %}`` block, which is what training turns into its loss mask.
- ``identify`` says which family a template is by rendering probe conversations with it and with each family's
  template: a family matches only when every probe renders byte-identically (or both templates refuse it).
  Never by model name. A template no family reproduces is refused, never approximated.
- Supported conversation shapes: an optional first system message, then user/assistant turns, with or
  without the generation prompt. Tools, documents and reasoning fields are not part of the contract.
- ``Family.ollama_template`` renders, in Ollama, the text the Jinja template renders with
  ``add_generation_prompt=True`` for a conversation that ends with a user message, and with
  ``add_generation_prompt=False`` for one that ends with an assistant message (tests/integration/
  test_template_parity.py checks both with Go's own text/template), except:
  * BOS: a family whose Jinja template writes ``bos_token`` (``Family.bos_token`` set) leaves it out of the
    Ollama template because llama.cpp prepends the BOS token itself; the GGUF must then say add_bos_token=true,
    and false for every other family, or the model sees a BOS it never saw in training (or misses one).
  * What Go cannot do is named in ``Family.caveats`` (ids from CAVEATS), never left silent: families with
    ``trims_content`` strip whitespace around message text in Jinja and Go templates have no trim function in
    Ollama (``trims-whitespace``); a family without a system role (gemma) refuses a system message in Jinja while
    its Ollama template drops it (``drops-system``; deploy refuses a SYSTEM prompt for such a family).
- What the Ollama templates rely on (ollama/ollama template/template.go, server/routes.go, server/prompt.go):
  a template that mentions .Messages is executed once over {System, Messages, Tools, Response: "", ...};
  .Messages includes the system messages, with consecutive same-role messages merged ("\n\n"); .System joins
  all system texts; the Modelfile SYSTEM is prepended as a system message unless the request starts with one;
  MESSAGE few-shots come before the request's messages (so a request's own system message then lands after
  them); the template functions are `json`, `currentDate` (today as YYYY-MM-DD, arguments ignored),
  `yesterdayDate` and `toTypeScriptType`; .Think/.IsThinkSet/.ThinkLevel carry the request's think flag.
  tests/tools/gorender/main.go mirrors exactly this.
- Deploying a model's own template: ``deploy_verdict`` matches it, by rendering the probes at a fixed date
  (PROBE_DATE; strftime_now and currentDate both take it) with reasoning unset/on/off, against every family and
  against variants built from its own renders (default system prompt, today's date, BOS, Qwen3/QwQ reasoning
  switches; ChatML, Granite, Mistral v7, Cohere and Phi-3 layouts; Gemma 3, DeepSeek-R1 and SmolLM3-style
  reasoning headers). Its answer is 'exact', 'caveats' (the named
  CAVEATS: trims-whitespace, drops-system, no-tools, date-format, reasoning-history, system-flags) or 'refused'
  with the reason. Refused rather than caveated: anything the probes show differs in a way no caveat names (a
  harmony/channel format, tool-only templates, any layout no twin reproduces). ``identify`` (training's question) still answers with the fixed families only.
- Stop tokens: ``stop_tokens_for`` gives every end-of-turn, end-of-text and next-turn-header string; deploy
  writes one PARAMETER stop each, serve stops on them, and a reply containing any of them leaked a token.

Public surface: FAMILIES, get_family, render, render_with_spans, identify, explain_unknown, deploy_verdict,
CAVEATS, Caveat, DeployVerdict, fixed_date, PROBE_DATE,
check_end_of_turn_ids_trained, end_of_turn_tokens_for,
stop_tokens_for, template_writes_bos, Family.ollama_template_for, modelfile_quote.
Only the standard library and jinja2 are imported here, so the CLI, deploy and serve can use it cheaply.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmforge.errors import UsageError

__all__ = [
    "CAVEATS",
    "FAMILIES",
    "PROBE_DATE",
    "Caveat",
    "DeployVerdict",
    "Family",
    "PROBES",
    "Probe",
    "RenderedChat",
    "check_end_of_turn_ids_trained",
    "deploy_verdict",
    "end_of_turn_tokens_for",
    "explain_unknown",
    "fixed_date",
    "get_family",
    "has_generation_markers",
    "identify",
    "modelfile_quote",
    "render",
    "render_with_spans",
    "stop_tokens_for",
    "template_writes_bos",
]


# ----------------------------------------------------------------------------------------------------------------
# The families
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One chat-template family: its HF Jinja template, its Ollama Go template and its stop tokens."""

    name: str
    description: str
    # HF Jinja template. Each assistant turn's content and its end-of-turn token sit inside
    # {% generation %}...{% endgeneration %}, so assistant-only loss trains the model to stop.
    jinja: str
    # Ollama TEMPLATE (Go text/template over .Messages). For families whose end of turn is the tokenizer's own
    # EOS (alpaca) it contains EOS_PLACEHOLDER: use `ollama_template_for(eos_token)`, which fills it in.
    ollama_template: str
    # Tokens that close an assistant turn: each must lie inside a generation span.
    end_of_turn: tuple[str, ...]
    # Every string at which generation must stop: end-of-turn, end-of-text and next-turn headers (a model that
    # starts writing the next turn's header has finished its own). Ollama gets one PARAMETER stop for each.
    stop_tokens: tuple[str, ...]
    supports_system: bool
    # BOS the Jinja template writes first (None: it writes none). See the module docstring on BOS and GGUF.
    bos_token: str | None
    # EOS the templates are written for (None: they take the tokenizer's, or never write one).
    eos_token: str | None
    trims_content: bool = False
    # What the Ollama template cannot reproduce of the Jinja one: ids from CAVEATS (see deploy_verdict).
    caveats: tuple[str, ...] = ()
    # Set on families built from a model's own template by deploy_verdict (e.g. "default system prompt").
    variant: str = ""

    def ollama_template_for(self, eos_token: str | None = None) -> str:
        """The Ollama template with this tokenizer's EOS filled in where the family uses the tokenizer's EOS."""
        if EOS_PLACEHOLDER not in self.ollama_template:
            return self.ollama_template
        if not eos_token:
            raise UsageError(
                f"the {self.name} chat template ends each answer with the tokenizer's end-of-text token, "
                "but none was given",
                hint="the tokenizer needs an eos_token for this family",
            )
        # As a Go string literal, so that any character in the token survives Go's template parser.
        return self.ollama_template.replace(EOS_PLACEHOLDER, "{{ " + json.dumps(eos_token) + " }}")


# Written as a Go template comment so that the unfilled template still parses.
EOS_PLACEHOLDER = "{{/* eos_token */}}"

# Go template idiom for "this is the last message" inside `range $i, $_ := .Messages` (Go templates have no
# arithmetic): the slice from $i on has length 1.
_GO_LAST = "(eq (len (slice $.Messages $i)) 1)"

CHATML = Family(
    name="chatml",
    description="ChatML: <|im_start|>role ... <|im_end|> (Qwen2/2.5, many fine-tunes, llmforge's scratch models)",
    jinja=r"""
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
            {{- message['content'] + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        "{{ range $i, $_ := .Messages }}"
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<|im_end|>",),
    stop_tokens=("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
    supports_system=True,
    bos_token=None,
    eos_token=None,
)

LLAMA3 = Family(
    name="llama3",
    description="Llama 3 (8B/70B-Instruct): <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
    jinja=r"""
{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}
            {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        "{{ range $i, $_ := .Messages }}"
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<|eot_id|>",),
    stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"),
    supports_system=True,
    bos_token="<|begin_of_text|>",
    eos_token=None,
    trims_content=True,
    caveats=("trims-whitespace",),
)

# Llama 3.1 always writes a system turn that starts with a knowledge-cutoff and a fixed date, even without a
# system message; tool calling (not supported here) is what the rest of Meta's template is about.
LLAMA3_1 = Family(
    name="llama3.1",
    description="Llama 3.1 Instruct: Llama 3 turns plus an always-present system turn with cutoff and date",
    jinja=r"""
{{- bos_token }}
{%- if date_string is not defined %}
    {%- set date_string = '26 Jul 2024' %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}
            {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        '{{ range $i, $_ := .Messages }}{{ if and (eq $i 0) (eq .Role "system") }}{{ .Content }}{{ end }}{{ end }}'
        "<|eot_id|>"
        "{{ range $i, $_ := .Messages }}"
        '{{ if not (and (eq $i 0) (eq .Role "system")) }}'
        "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}"
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<|eot_id|>",),
    stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"),
    supports_system=True,
    bos_token="<|begin_of_text|>",
    eos_token=None,
    trims_content=True,
    caveats=("trims-whitespace",),
)

# Mistral's current layout (Mistral Nemo, Small, v3 "tekken"): no spaces around [INST]; the system message is
# folded into the LAST user message, and dropped when the conversation ends with an assistant turn.
MISTRAL = Family(
    name="mistral",
    description="Mistral (Nemo/Small, v3-tekken): <s>[INST]user[/INST]answer</s>, system in the last user turn",
    jinja=r"""
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST]' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {%- generation %}
            {{- message['content'] + eos_token }}
        {%- endgeneration %}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
""".strip(),
    ollama_template=(
        '{{ $system := "" }}{{ $hasSystem := false }}'
        '{{ range $i, $_ := .Messages }}{{ if and (eq $i 0) (eq .Role "system") }}'
        "{{ $system = .Content }}{{ $hasSystem = true }}{{ end }}{{ end }}"
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "user" }}'
        "[INST]{{ if and " + _GO_LAST + " $hasSystem }}{{ $system }}\n\n{{ end }}{{ .Content }}[/INST]"
        '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("</s>",),
    stop_tokens=("</s>", "[INST]", "[/INST]"),
    supports_system=True,
    bos_token="<s>",
    eos_token="</s>",
)

GEMMA = Family(
    name="gemma",
    description="Gemma / Gemma 2: <start_of_turn>user|model ... <end_of_turn>, no system role",
    jinja=r"""
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {{- raise_exception('System role not supported') }}
{%- endif %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<start_of_turn>model\n' }}
        {%- generation %}
            {{- message['content'] | trim + '<end_of_turn>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- else %}
        {{- '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        '{{ else if ne .Role "system" }}<start_of_turn>{{ .Role }}\n{{ .Content }}<end_of_turn>\n{{ end }}'
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<start_of_turn>model\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<end_of_turn>",),
    stop_tokens=("<end_of_turn>", "<start_of_turn>", "<eos>"),
    supports_system=False,
    bos_token="<bos>",
    eos_token=None,
    trims_content=True,
    caveats=("trims-whitespace", "drops-system"),
)

# Phi-3.5-mini's template: an empty system message is left out, other roles are skipped silently, and a
# conversation rendered without the generation prompt ends with the EOS token.
PHI3 = Family(
    name="phi3",
    description="Phi-3/3.5: <|user|> ... <|end|> <|assistant|> ... <|end|>",
    jinja=r"""
{%- for message in messages %}
    {%- if message['role'] == 'system' and message['content'] %}
        {{- '<|system|>\n' + message['content'] + '<|end|>\n' }}
    {%- elif message['role'] == 'user' %}
        {{- '<|user|>\n' + message['content'] + '<|end|>\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|assistant|>\n' }}
        {%- generation %}
            {{- message['content'] + '<|end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- else %}
    {{- eos_token }}
{%- endif %}
""".strip(),
    ollama_template=(
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "system" }}{{ if .Content }}<|system|>\n{{ .Content }}<|end|>\n{{ end }}'
        '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}<|end|>\n{{ end }}'
        "{{ if " + _GO_LAST + ' }}{{ if eq .Role "assistant" }}<|endoftext|>{{ else }}<|assistant|>\n{{ end }}{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<|end|>",),
    stop_tokens=("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"),
    supports_system=True,
    bos_token=None,
    eos_token="<|endoftext|>",
)

# Alpaca-style instruction format for base models that have no chat template of their own. The answer ends
# with the tokenizer's EOS, whatever it is, so the Ollama template is filled in per tokenizer.
ALPACA = Family(
    name="alpaca",
    description="Alpaca-style: ### Instruction: / ### Response:, answers end with the tokenizer's EOS",
    jinja=r"""
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- message['content'] + '\n\n' }}
    {%- elif message['role'] == 'user' %}
        {{- '### Instruction:\n' + message['content'] + '\n\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '### Response:\n' }}
        {%- generation %}
            {{- message['content'] + eos_token }}
        {%- endgeneration %}
        {{- '\n\n' }}
    {%- else %}
        {{- raise_exception('Only system, user and assistant roles are supported') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        "{{ range $i, $_ := .Messages }}"
        '{{ if eq .Role "system" }}{{ .Content }}\n\n'
        '{{ else if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
        '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}' + EOS_PLACEHOLDER + "\n\n{{ end }}"
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}### Response:\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=(),  # the tokenizer's EOS: see end_of_turn_tokens_for
    stop_tokens=("### Instruction:", "### Response:"),  # plus the tokenizer's EOS: see stop_tokens_for
    supports_system=True,
    bos_token=None,
    eos_token=None,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (CHATML, LLAMA3, LLAMA3_1, MISTRAL, GEMMA, PHI3, ALPACA)}


def get_family(name: str) -> Family:
    """The family called `name`; a UsageError that suggests the closest name otherwise."""
    family = FAMILIES.get(name.strip().lower())
    if family is not None:
        return family
    close = difflib.get_close_matches(name.strip().lower(), list(FAMILIES), n=1, cutoff=0.5)
    suggestion = f"did you mean '{close[0]}'? " if close else ""
    raise UsageError(
        f"unknown chat-template family '{name}'",
        hint=f"{suggestion}known families: {', '.join(FAMILIES)}",
    )


# ----------------------------------------------------------------------------------------------------------------
# Rendering like transformers' apply_chat_template
# ----------------------------------------------------------------------------------------------------------------

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

# The span recorder of the render in progress on this thread (or task): (chunks rendered so far, spans found).
_recorder: contextvars.ContextVar[tuple[list[str], list[tuple[int, int, str]]] | None] = contextvars.ContextVar(
    "llmforge_chat_template_recorder", default=None
)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body; during render_with_spans records where."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        body = caller()
        recorder = _recorder.get()
        if recorder is not None:
            chunks, spans = recorder
            # Everything before this block has already been yielded by Template.generate(); checked afterwards.
            start = sum(len(c) for c in chunks)
            spans.append((start, start + len(body), body))
        return body


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace() without underscore names, as transformers hardens it for untrusted templates."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same signature trick as jinja2's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for key in attrs:
            _Namespace._check(key)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, key: str, value: Any) -> None:
        _Namespace._check(key)
        jinja2.utils.Namespace.__setitem__(self, key, value)

    @staticmethod
    def _check(key: Any) -> None:
        if isinstance(key, str) and key.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({key!r})")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Like HF: plain json.dumps, no HTML escaping (Jinja's own tojson escapes <, >, & and ').
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# The date strftime_now reports, when fixed (see fixed_date); None: today's.
_fixed_now: contextvars.ContextVar[datetime | None] = contextvars.ContextVar("llmforge_fixed_now", default=None)
# When set, strftime_now ignores its format and writes YYYY-MM-DD, as Ollama's currentDate does.
_iso_dates: contextvars.ContextVar[bool] = contextvars.ContextVar("llmforge_iso_dates", default=False)


def _strftime_now(fmt: str) -> str:
    now = _fixed_now.get() or datetime.now()
    return now.strftime("%Y-%m-%d" if _iso_dates.get() else fmt)


@contextlib.contextmanager
def fixed_date(when: datetime, *, iso: bool = False) -> Iterator[None]:
    """Render with strftime_now fixed to `when` (and, with `iso`, always as YYYY-MM-DD like Ollama's currentDate).

    Templates that write today's date are compared with their Ollama twin at one date, the date being a parameter
    of both renders, not a difference between them."""
    token, iso_token = _fixed_now.set(when), _iso_dates.set(iso)
    try:
        yield
    finally:
        _fixed_now.reset(token)
        _iso_dates.reset(iso_token)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(
            f"the chat template does not parse: {e.message} (line {e.lineno})",
            hint="check model.chat_template or the tokenizer's chat_template.jinja",
        ) from e


def _plain(value: Any) -> Any:
    """Plain JSON-like data (what transformers hands a template): no objects with methods reach the sandbox."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _template_vars(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    bos_token: str | None,
    eos_token: str | None,
    special: Mapping[str, Any],
) -> dict[str, Any]:
    if not messages:
        raise UsageError("cannot render an empty conversation", hint="give at least one message")
    # transformers drops keys whose value is None (OpenAI clients send content=None) and always passes
    # tools/documents (None when absent), so `tools is defined` holds in every template.
    plain = [{k: _plain(v) for k, v in dict(m).items() if v is not None} for m in messages]
    variables: dict[str, Any] = {"tools": None, "documents": None}
    if bos_token is not None:
        variables["bos_token"] = bos_token
    if eos_token is not None:
        variables["eos_token"] = eos_token
    variables.update({k: _plain(v) for k, v in special.items()})
    variables.update(messages=plain, add_generation_prompt=add_generation_prompt)
    return variables


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **special: Any,
) -> str:
    """Render `messages` with a Jinja chat template exactly as transformers' apply_chat_template(tokenize=False).

    `special` carries the other variables transformers passes (unk_token, pad_token, date_string, ...).
    A template that refuses the conversation (raise_exception, a type error) raises UsageError.
    """
    variables = _template_vars(messages, add_generation_prompt, bos_token, eos_token, special)
    return "".join(_generate(_compile(template), variables))


def _generate(compiled: jinja2.Template, variables: dict[str, Any]) -> Iterable[str]:
    """The template's output chunks in order, with its refusals and failures turned into UsageError."""
    try:
        yield from compiled.generate(**variables)
    except jinja2.TemplateError as e:
        raise UsageError(
            f"the chat template refused the conversation: {e.message or e}",
            hint="llmforge supports an optional first system message, then user/assistant turns",
        ) from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise UsageError(
            f"the chat template failed on the conversation: {type(e).__name__}: {e}",
            hint="check that every message has a string 'role' and 'content'",
        ) from e


@dataclass(frozen=True)
class RenderedChat:
    """A rendered conversation and the [start, end) character span of each {% generation %} block in it."""

    text: str
    spans: tuple[tuple[int, int], ...]



def render_with_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **special: Any,
) -> RenderedChat:
    """Render like `render` and return where each {% generation %} block landed (the assistant-only loss mask).

    Offsets are in characters of `text`; map them to tokens with the tokenizer's offset mapping
    (transformers' return_assistant_tokens_mask does the same with char_to_token).
    """
    compiled = _compile(template)
    variables = _template_vars(messages, add_generation_prompt, bos_token, eos_token, special)
    chunks: list[str] = []
    spans: list[tuple[int, int, str]] = []
    token = _recorder.set((chunks, spans))
    try:
        for chunk in _generate(compiled, variables):
            chunks.append(chunk)
    finally:
        _recorder.reset(token)
    text = "".join(chunks)
    for start, end, body in spans:
        # A generation block nested inside a macro, {% set %} block or filter block renders into a buffer, so
        # the offset seen at its call would be wrong: detect it rather than train on the wrong tokens.
        if text[start:end] != body:
            raise UsageError(
                "cannot locate the {% generation %} blocks of this chat template in its output",
                hint="keep {% generation %} at the top level of the message loop, not inside a macro or set block",
            )
    return RenderedChat(text=text, spans=tuple((s, e) for s, e, _ in spans))


def has_generation_markers(template: str | None) -> bool:
    """Whether a template marks assistant turns with {% generation %} (what TRL's assistant_only_loss needs)."""
    return bool(template) and _GENERATION_RE.search(template) is not None


# ----------------------------------------------------------------------------------------------------------------
# Identifying a template by what it renders
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A conversation every candidate template renders; `padded` marks content with outer whitespace."""

    name: str
    messages: tuple[dict[str, str], ...]
    add_generation_prompt: bool
    padded: bool = False


def _m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


_S, _U1, _A1, _U2, _A2 = (
    _m("system", "You are a terse assistant."),
    _m("user", "What is 2 + 2?"),
    _m("assistant", "4."),
    _m("user", "And times 3?"),
    _m("assistant", "12."),
)

PROBES: tuple[Probe, ...] = (
    Probe("user", (_U1,), True),
    Probe("user-no-prompt", (_U1,), False),
    Probe("exchange", (_U1, _A1), False),
    Probe("two-exchanges-open", (_U1, _A1, _U2), True),
    Probe("system-user", (_S, _U1), True),
    Probe("system-exchanges", (_S, _U1, _A1, _U2, _A2), False),
    Probe("system-exchanges-open", (_S, _U1, _A1, _U2), True),
    Probe(
        "unicode",
        (
            _m("system", "Réponds en français. 日本語でもよい。"),
            _m("user", "Grüße — naïve café? 🙂 Ωμέγα «quote» Привет"),
            _m("assistant", "Ça va ☕ — 你好！ 👍🏽"),
            _m("user", "ok → next"),
        ),
        True,
    ),
    Probe(
        "template-syntax-in-content",
        (
            _m(
                "user",
                '{{ .Content }} {{- .System -}} {% if x %}{{ "q" }}{% endif %} {# c #} {"a": [1, 2]} '
                "'single' \"double\" back\\slash `tick` $.Messages",
            ),
            _m("assistant", "}} {{ {% %} end }}{{ {{/* go comment */}} <s> [INST]"),
            _m("user", "{{"),
        ),
        True,
    ),
    Probe(
        "template-syntax-closed",
        (
            _m("user", "}}"),
            _m("assistant", '{{ raise_exception(\'x\') }}"""'),
        ),
        False,
    ),
    Probe("empty", (_m("system", ""), _m("user", ""), _m("assistant", ""), _m("user", "")), True),
    Probe("empty-no-system", (_m("user", ""), _m("assistant", "")), False),
    Probe(
        "multiline",
        (
            _m("user", "line one\nline two\n\nline four\ttabbed"),
            _m("assistant", "- a\n- b\n\n```\ncode\n```"),
        ),
        False,
    ),
    Probe(
        "whitespace",
        (
            _m("user", "\n  padded question  \n"),
            _m("assistant", "  padded answer \n\n"),
            _m("user", " next "),
        ),
        True,
        padded=True,
    ),
    Probe("whitespace-system", (_m("system", "  sys  \n"), _m("user", "q ")), True, padded=True),
)


def _outcome(
    template: str, probe: Probe, bos_token: str | None, eos_token: str | None, special: Mapping[str, Any]
) -> tuple[str, str]:
    """('text', rendering) or ('refused', ''): two templates agree on a probe when both outcomes are equal."""
    try:
        return "text", render(
            template,
            probe.messages,
            add_generation_prompt=probe.add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **special,
        )
    except UsageError:
        _compile(template)  # a template that does not parse is an error, not a refusal
        return "refused", ""


def _family_tokens(family: Family, bos_token: str | None, eos_token: str | None) -> tuple[str | None, str | None]:
    # A family renders with the tokens it is written for, so a template only matches when the tokenizer's
    # BOS/EOS are those tokens too (the Ollama template writes them literally).
    return (
        family.bos_token if family.bos_token is not None else bos_token,
        family.eos_token if family.eos_token is not None else eos_token,
    )


def _first_difference(
    template: str, family: Family, bos_token: str | None, eos_token: str | None, special: Mapping[str, Any]
) -> tuple[Probe, tuple[str, str], tuple[str, str]] | None:
    fam_bos, fam_eos = _family_tokens(family, bos_token, eos_token)
    for probe in PROBES:
        got = _outcome(template, probe, bos_token, eos_token, special)
        want = _outcome(family.jinja, probe, fam_bos, fam_eos, special)
        if got != want:
            return probe, got, want
    return None


def identify(template: str, *, bos_token: str | None, eos_token: str | None, **special: Any) -> Family | None:
    """The family whose template renders every probe byte-identically to `template`, or None.

    `bos_token`/`eos_token` are the tokenizer's (None when it has none). A template that refuses a probe
    matches only a family that refuses it too. Raises UsageError if the template does not parse.
    """
    _compile(template)
    for family in FAMILIES.values():
        if _first_difference(template, family, bos_token, eos_token, special) is None:
            return family
    return None


def explain_unknown(template: str, *, bos_token: str | None, eos_token: str | None) -> str:
    """Why no family matches: the nearest family and the first probe where it differs, plus known obstacles."""
    reasons = []
    if "strftime_now" in template:
        reasons.append("it writes today's date (strftime_now), which an Ollama template cannot reproduce")
    if re.search(r"""split\(\s*['"]</think>""", template):
        reasons.append("it rewrites assistant turns around <think>...</think> reasoning blocks")
    best: tuple[float, str] | None = None
    for family in FAMILIES.values():
        diff = _first_difference(template, family, bos_token, eos_token, {})
        if diff is None:
            continue
        probe, got, want = diff
        ratio = difflib.SequenceMatcher(None, got[1], want[1]).ratio() if got[0] == want[0] == "text" else 0.0
        if best is None or ratio > best[0]:
            if got[0] != want[0]:
                what = f"{family.name} {'refuses' if want[0] == 'refused' else 'renders'} it, this template does not"
            else:
                at = next(
                    (i for i, (a, b) in enumerate(zip(got[1], want[1])) if a != b), min(len(got[1]), len(want[1]))
                )
                what = (
                    f"this template renders ...{got[1][max(0, at - 30) : at + 30]!r}, "
                    f"{family.name} renders ...{want[1][max(0, at - 30) : at + 30]!r}"
                )
            best = (ratio, f"closest family: {family.name}; first difference on probe '{probe.name}': {what}")
    if best is not None:
        reasons.append(best[1])
    return "; ".join(reasons)


# ----------------------------------------------------------------------------------------------------------------
# Deploying a model's own template: Ollama twins of real templates, named caveats, the verdict
# ----------------------------------------------------------------------------------------------------------------

# What an Ollama TEMPLATE cannot do of a model's Jinja template, by stable id. Each is a difference deploy reports
# (terminal, `--json`, manifest, registry, `deploy show`) instead of hiding it; tests/integration/
# test_template_parity.py checks, per id, that the Go rendering differs from the Jinja one only in that way.
# Everything else the Go template cannot express makes deploy refuse (status "refused", with the reason).
CAVEATS: dict[str, str] = {
    "trims-whitespace": "the template strips whitespace around message text and Ollama's Go templates cannot, so a "
    "message with leading or trailing whitespace reaches the model with it",
    "drops-system": "the template refuses a system message and an Ollama template cannot refuse, so Ollama drops a "
    "system message without a sign (deploy refuses a SYSTEM prompt for it)",
    "no-tools": "the template's tool-calling path (tool definitions, tool calls, tool results) is not in the Ollama "
    "TEMPLATE: Ollama lists the model without the tools capability and refuses requests that pass tools",
    "date-format": "the template writes today's date in its own format; Ollama's currentDate writes it as YYYY-MM-DD",
    "system-flags": "the template reads /think and /no_think in the system message (switching reasoning and cutting "
    "them out of the text) and Go templates cannot search text: under Ollama they stay in the system text and "
    "switch nothing; use the request's think flag instead",
    "reasoning-history": "the template cuts <think>...</think> reasoning out of earlier assistant turns; Ollama "
    "renders assistant text as the client sends it back (clients that keep reasoning in the text send it again)",
}

# A date whose day, month and year cannot be mistaken for each other: where it shows in a render, it came from
# strftime_now, and which format wrote it says how.
PROBE_DATE = datetime(2031, 12, 27, 9, 30)
_DATE_FORMATS = ("%Y-%m-%d", "%d %b %Y", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%m/%d/%Y", "%d/%m/%Y")
_DATE_MARK = "\x00date\x00"


@dataclass(frozen=True)
class Caveat:
    """One named difference between a model's template and its Ollama TEMPLATE (id from CAVEATS)."""

    id: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text}


def caveat(caveat_id: str, detail: str = "") -> Caveat:
    return Caveat(caveat_id, CAVEATS[caveat_id] + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class DeployVerdict:
    """What deploy makes of a template: 'exact' (renders byte-identically under Ollama), 'caveats' (identical but
    for the named caveats) or 'refused' (reason says why). `family` is the family or variant whose
    ollama_template deploy writes (None when refused)."""

    status: str
    family: Family | None
    caveats: tuple[Caveat, ...]
    reason: str = ""

    @property
    def caveat_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.caveats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "family": self.family.name if self.family else None,
            "variant": self.family.variant if self.family else None,
            "caveats": [c.to_dict() for c in self.caveats],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _Layout:
    """A turn-based format: each message is open[role] + content + end[role] + after[role]."""

    name: str
    open: Mapping[str, str]
    end: Mapping[str, str]
    after: Mapping[str, str]
    prompt: str  # what the generation prompt writes (the assistant's open)
    stop_tokens: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class _Options:
    bos: str | None = None  # written first by the Jinja template (llama.cpp adds it under Ollama)
    default_system: str | None = None  # system turn written when the conversation has no system message
    date_format: str | None = None  # strftime format of _DATE_MARK in default_system
    empty_system_is_default: bool = False  # an empty system message counts as none
    think: str | None = None  # "qwen3": empty <think> block on a closing answer, off-switch; "qwq": <think> prefill
    eos_when_closed: str | None = None  # written after the last answer when there is no generation prompt
    # Roles whose message text is stripped of surrounding whitespace (Go cannot: trims-whitespace).
    trim: tuple[str, ...] = ()
    skip_empty_system: bool = False  # a system message with empty text writes nothing


def _same(text: str) -> dict[str, str]:
    return {role: text for role in ("system", "user", "assistant")}


_LAYOUTS: tuple[_Layout, ...] = (
    _Layout(
        "chatml",
        {r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")},
        _same("<|im_end|>"),
        _same("\n"),
        "<|im_start|>assistant\n",
        ("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
        "ChatML: <|im_start|>role ... <|im_end|>",
    ),
    _Layout(
        "granite",
        {r: f"<|start_of_role|>{r}<|end_of_role|>" for r in ("system", "user", "assistant")},
        _same("<|end_of_text|>"),
        _same("\n"),
        "<|start_of_role|>assistant<|end_of_role|>",
        ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"),
        "IBM Granite: <|start_of_role|>role<|end_of_role|> ... <|end_of_text|>",
    ),
    _Layout(
        "mistral-system-prompt",
        {"system": "[SYSTEM_PROMPT]", "user": "[INST]", "assistant": ""},
        {"system": "[/SYSTEM_PROMPT]", "user": "[/INST]", "assistant": "</s>"},
        _same(""),
        "",
        ("</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]"),
        "Mistral v7 (Small 3.x, Devstral): [SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]answer</s>",
    ),
    _Layout(
        "cohere",
        {
            "system": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>",
            "user": "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
            "assistant": "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        },
        _same("<|END_OF_TURN_TOKEN|>"),
        _same(""),
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        ("<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>"),
        "Cohere (Command R, Aya): <|START_OF_TURN_TOKEN|><|USER_TOKEN|> ... <|END_OF_TURN_TOKEN|>",
    ),
    _Layout(
        "phi3",
        {r: f"<|{r}|>\n" for r in ("system", "user", "assistant")},
        _same("<|end|>"),
        _same("\n"),
        "<|assistant|>\n",
        ("<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"),
        "Phi-3: <|user|> ... <|end|> <|assistant|> ... <|end|>",
    ),
)

_QWEN3_EMPTY_THINK = "<think>\n\n</think>\n\n"


def _jinja_str(text: str) -> str:
    return json.dumps(text)  # ASCII escapes: Jinja string literals decode them


def _go_text(text: str) -> str:
    """Literal text in a Go template: raw, or as a Go string literal where it holds template delimiters."""
    if not text or ("{{" not in text and "}}" not in text):
        return text
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def _default_system_jinja(opts: _Options) -> str:
    pieces = (opts.default_system or "").split(_DATE_MARK)
    date = f"strftime_now({_jinja_str(opts.date_format or '%Y-%m-%d')})"
    return " + ".join(_jinja_str(p) if i == 0 else f"{date} + {_jinja_str(p)}" for i, p in enumerate(pieces))


def _default_system_go(opts: _Options) -> str:
    return "{{ currentDate }}".join(_go_text(p) for p in (opts.default_system or "").split(_DATE_MARK))


def _trim(opts: _Options, role: str) -> str:
    return " | trim" if role in opts.trim else ""


def _layout_jinja(lay: _Layout, opts: _Options) -> str:
    lines = []
    if opts.bos:
        lines.append("{{- bos_token }}")
    system_turn = (_jinja_str(lay.open["system"]), _jinja_str(lay.end["system"] + lay.after["system"]))
    if opts.default_system is not None:
        given = "messages[0]['role'] == 'system'" + (
            " and messages[0]['content']" if opts.empty_system_is_default else ""
        )
        lines += [
            f"{{%- if {given} %}}",
            "    {%- set system_message = messages[0]['content'] %}",
            "{%- else %}",
            f"    {{%- set system_message = {_default_system_jinja(opts)} %}}",
            "{%- endif %}",
            "{%- if messages[0]['role'] == 'system' %}",
            "    {%- set loop_messages = messages[1:] %}",
            "{%- else %}",
            "    {%- set loop_messages = messages %}",
            "{%- endif %}",
            f"{{{{- {system_turn[0]} + system_message + {system_turn[1]} }}}}",
        ]
    else:
        lines.append("{%- set loop_messages = messages %}")
    lines += [
        "{%- for message in loop_messages %}",
        "    {%- if message['role'] == 'assistant' %}",
        f"        {{{{- {_jinja_str(lay.open['assistant'])} }}}}",
    ]
    if opts.think == "qwen3":
        lines.append(f"        {{%- if loop.last %}}{{{{- {_jinja_str(_QWEN3_EMPTY_THINK)} }}}}{{%- endif %}}")
    lines += [
        "        {%- generation %}",
        f"            {{{{- message['content']{_trim(opts, 'assistant')} + {_jinja_str(lay.end['assistant'])} }}}}",
        "        {%- endgeneration %}",
        f"        {{{{- {_jinja_str(lay.after['assistant'])} }}}}",
    ]
    for role in ("user", "system"):
        opened, closed = _jinja_str(lay.open[role]), _jinja_str(lay.end[role] + lay.after[role])
        nonempty = " and message['content']" if role == "system" and opts.skip_empty_system else ""
        lines += [
            f"    {{%- elif message['role'] == '{role}'{nonempty} %}}",
            f"        {{{{- {opened} + message['content']{_trim(opts, role)} + {closed} }}}}",
        ]
    lines += ["    {%- endif %}", "{%- endfor %}", "{%- if add_generation_prompt %}"]
    lines.append(f"    {{{{- {_jinja_str(lay.prompt)} }}}}")
    if opts.think == "qwen3":
        lines.append(
            "    {%- if enable_thinking is defined and enable_thinking is false %}"
            f"{{{{- {_jinja_str(_QWEN3_EMPTY_THINK)} }}}}{{%- endif %}}"
        )
    elif opts.think == "qwq":
        lines.append("    {{- '<think>\\n' }}{%- if not enable_thinking %}{{- '</think>' }}{%- endif %}")
    if opts.eos_when_closed:
        lines += ["{%- else %}", "    {{- eos_token }}"]
    lines.append("{%- endif %}")
    return "\n".join(lines)


def _layout_go(lay: _Layout, opts: _Options) -> str:
    out = []
    skip_first = ""
    if opts.default_system is not None:
        first_is_system = '(eq (index $.Messages 0).Role "system")'
        given = (
            f"(and {first_is_system} (index $.Messages 0).Content)" if opts.empty_system_is_default else first_is_system
        )
        turn_open, turn_close = _go_text(lay.open["system"]), _go_text(lay.end["system"] + lay.after["system"])
        out.append(
            f"{{{{ if {given} }}}}{turn_open}{{{{ (index $.Messages 0).Content }}}}{turn_close}"
            f"{{{{ else }}}}{turn_open}{_default_system_go(opts)}{turn_close}{{{{ end }}}}"
        )
        skip_first = '{{ if and (eq $i 0) (eq .Role "system") }}{{ else '
    out.append("{{ range $i, $_ := .Messages }}")
    out.append((skip_first or "{{ ") + 'if eq .Role "assistant" }}' + _go_text(lay.open["assistant"]))
    if opts.think == "qwen3":
        out.append("{{ if " + _GO_LAST + " }}" + _go_text(_QWEN3_EMPTY_THINK) + "{{ end }}")
    out.append("{{ .Content }}" + _go_text(lay.end["assistant"] + lay.after["assistant"]))
    for role in ("user", "system"):
        turn = f"{_go_text(lay.open[role])}{{{{ .Content }}}}{_go_text(lay.end[role] + lay.after[role])}"
        if role == "system" and opts.skip_empty_system:
            turn = "{{ if .Content }}" + turn + "{{ end }}"
        out.append(f'{{{{ else if eq .Role "{role}" }}}}' + turn)
    out.append("{{ end }}")
    prompt = _go_text(lay.prompt)
    if opts.think == "qwen3":
        prompt += "{{ if and $.IsThinkSet (not $.Think) }}" + _go_text(_QWEN3_EMPTY_THINK) + "{{ end }}"
    elif opts.think == "qwq":
        prompt += "<think>\n{{ if not $.Think }}</think>{{ end }}"
    closing = _go_text(opts.eos_when_closed or "")
    out.append("{{ if " + _GO_LAST + ' }}{{ if ne .Role "assistant" }}' + prompt)
    out.append(("{{ else }}" + closing if closing else "") + "{{ end }}{{ end }}")
    out.append("{{ end }}")
    return "".join(out)


def _layout_family(lay: _Layout, opts: _Options) -> Family:
    variant, caveats = [], []
    if opts.bos:
        variant.append(f"BOS {opts.bos}")
    if opts.default_system is not None:
        variant.append("default system prompt" + (" with today's date" if opts.date_format else ""))
    if opts.date_format and opts.date_format != "%Y-%m-%d":
        caveats.append("date-format")
    if opts.think:
        variant.append("reasoning switch")
    if opts.eos_when_closed:
        variant.append("EOS after a closed conversation")
    if opts.skip_empty_system:
        variant.append("empty system message left out")
    if opts.trim:
        caveats.insert(0, "trims-whitespace")
    return Family(
        name=lay.name,
        description=lay.description,
        jinja=_layout_jinja(lay, opts),
        ollama_template=_layout_go(lay, opts),
        end_of_turn=(lay.end["assistant"],),
        stop_tokens=lay.stop_tokens,
        supports_system=True,
        bos_token=opts.bos,
        eos_token=None,
        caveats=tuple(caveats),
        variant=", ".join(variant),
    )


def _dated_llama3_1(date_format: str) -> Family:
    """Llama 3.1's layout with today's date (Llama 3.2 writes strftime_now where 3.1 writes a fixed date)."""
    base = LLAMA3_1
    fixed = "{%- set date_string = '26 Jul 2024' %}"
    assert fixed in base.jinja and "Today Date: 26 Jul 2024" in base.ollama_template
    caveats = base.caveats + (("date-format",) if date_format != "%Y-%m-%d" else ())
    return dataclasses.replace(
        base,
        jinja=base.jinja.replace(fixed, f"{{%- set date_string = strftime_now({_jinja_str(date_format)}) %}}"),
        ollama_template=base.ollama_template.replace("Today Date: 26 Jul 2024", "Today Date: {{ currentDate }}"),
        caveats=caveats,
        variant="today's date",
    )


# Families deploy also knows (tried by deploy_verdict only, so that training's `identify` answers as before).

# Gemma 3: no system turn; a system message's text opens the first user turn, followed by a blank line.
GEMMA3 = Family(
    name="gemma3",
    description="Gemma 3: Gemma turns, a system message written at the start of the first user turn",
    jinja=r"""
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'assistant' %}
        {{- '<start_of_turn>model\n' + (first_user_prefix if loop.first else '') }}
        {%- generation %}
            {{- message['content'] | trim + '<end_of_turn>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- else %}
        {{- '<start_of_turn>' + message['role'] + '\n' + (first_user_prefix if loop.first else '') }}
        {{- message['content'] | trim + '<end_of_turn>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
""".strip(),
    ollama_template=(
        '{{ $prefix := "" }}{{ if eq (index $.Messages 0).Role "system" }}'
        '{{ $prefix = printf "%s\\n\\n" (index $.Messages 0).Content }}{{ end }}'
        "{{ range $i, $_ := .Messages }}"
        '{{ if and (eq $i 0) (eq .Role "system") }}'
        '{{ else }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ if le $i 1 }}{{ $prefix }}{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}"
        "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<start_of_turn>model\n{{ end }}'
        "{{ end }}"
    ),
    end_of_turn=("<end_of_turn>",),
    stop_tokens=("<end_of_turn>", "<start_of_turn>", "<eos>"),
    supports_system=True,
    bos_token="<bos>",
    eos_token=None,
    trims_content=True,
    caveats=("trims-whitespace",),
)


def _deepseek_r1(think_switch: bool) -> Family:
    """DeepSeek-R1 distills: the last system text first, then <｜User｜>/<｜Assistant｜> turns; the reply opens a
    <think> block, closed at once unless thinking is on when the template has the switch."""
    switch_jinja = "{%- if not enable_thinking %}{{- '</think>' }}{%- endif %}" if think_switch else ""
    switch_go = "{{ if not $.Think }}</think>{{ end }}" if think_switch else ""
    return Family(
        name="deepseek-r1",
        description="DeepSeek-R1 distills: <｜User｜>question<｜Assistant｜>answer<｜end▁of▁sentence｜>, <think> prefill",
        jinja=r"""
{%- set ns = namespace(system_prompt='') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system_prompt = message['content'] %}
    {%- endif %}
{%- endfor %}
{{- bos_token + ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<｜Assistant｜>' }}
        {%- generation %}
            {{- message['content'] + '<｜end▁of▁sentence｜>' }}
        {%- endgeneration %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<｜Assistant｜><think>\n' }}SWITCH
{%- endif %}
""".strip().replace("SWITCH", switch_jinja),
        ollama_template=(
            '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}'
            "{{ $system }}{{ range $i, $_ := .Messages }}"
            '{{ if eq .Role "user" }}<｜User｜>{{ .Content }}'
            '{{ else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>{{ end }}'
            "{{ if and " + _GO_LAST + ' (ne .Role "assistant") }}<｜Assistant｜><think>\n' + switch_go + "{{ end }}"
            "{{ end }}"
        ),
        end_of_turn=("<｜end▁of▁sentence｜>",),
        stop_tokens=("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"),
        supports_system=True,
        bos_token="<｜begin▁of▁sentence｜>",
        eos_token=None,
        variant="reasoning switch" if think_switch else "",
    )


DEPLOY_FAMILIES: tuple[Family, ...] = (GEMMA3, _deepseek_r1(False), _deepseek_r1(True))


def _think_settings(*templates: str) -> tuple[bool | None, ...]:
    return (None, True, False) if any("enable_thinking" in t for t in templates) else (None,)


def _matches(template: str, family: Family, bos_token: str | None, eos_token: str | None) -> bool:
    """Every probe (at every reasoning setting either template reads) renders byte-identically, at PROBE_DATE."""
    fam_bos, fam_eos = _family_tokens(family, bos_token, eos_token)
    with fixed_date(PROBE_DATE):
        for think in _think_settings(template, family.jinja):
            special = {} if think is None else {"enable_thinking": think}
            for probe in PROBES:
                got = _outcome(template, probe, bos_token, eos_token, special)
                if got != _outcome(family.jinja, probe, fam_bos, fam_eos, special):
                    return False
    return True


def _default_system_of(template: str, lay: _Layout, bos: str | None, eos: str | None) -> tuple[str, str | None] | None:
    """The system text the template writes when the conversation has none (date replaced by _DATE_MARK), or None."""
    with fixed_date(PROBE_DATE):
        try:
            text = render(template, PROBES[0].messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
        except UsageError:
            return None
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    opened, closed = lay.open["system"], lay.end["system"]
    if not text.startswith(opened) or closed not in text[len(opened) :]:
        return None
    default = text[len(opened) : text.index(closed, len(opened))]
    for fmt in _DATE_FORMATS:
        written = PROBE_DATE.strftime(fmt)
        if written in default:
            return default.replace(written, _DATE_MARK), fmt
    return default, None


def _reasoning_header_family(template: str, bos_token: str | None, eos_token: str | None) -> Family | None:
    """A ChatML twin for templates that always open with a system turn announcing the reasoning mode (SmolLM3's
    "Reasoning Mode: /think" or "/no_think"), read from three renders: no system message with reasoning unset and
    off, and one with a marker as system text. None when the renders do not have that shape."""
    marker, user = "\x01system\x01", PROBES[0].messages

    def rendered(messages: Sequence[Mapping[str, Any]], **special: Any) -> str | None:
        try:
            with fixed_date(PROBE_DATE):
                return render(template, messages, add_generation_prompt=True, bos_token=bos_token,
                              eos_token=eos_token, **special)  # fmt: skip
        except UsageError:
            return None

    on, off = rendered(user), rendered(user, enable_thinking=False)
    custom = rendered([{"role": "system", "content": marker}, *user])
    close, turn = "<|im_end|>\n", "<|im_start|>user\n"
    if not on or not off or not custom or "/think" not in on or "/no_think" not in off or marker not in custom:
        return None
    head = on[: on.index("/think")]
    if not off.startswith(head + "/no_think") or not custom.startswith(head + "/think") or close + turn not in on:
        return None
    mid = custom[len(head) + len("/think") : custom.index(marker)]
    after = custom[custom.index(marker) + len(marker) : custom.index(close)]
    think_default = on[len(head) + len("/think") + len(mid) : on.index(close + turn)]
    plain_default = off[len(head) + len("/no_think") + len(mid) : off.index(close + turn)]
    if not off[len(head) + len("/no_think") :].startswith(mid):
        return None
    empty = "<think>\n\n</think>\n"
    q = _jinja_str
    jinja = "\n".join(
        [
            "{%- set thinking = enable_thinking is not defined or enable_thinking %}",
            "{%- if messages[0]['role'] == 'system' %}",
            "    {%- set custom = messages[0]['content'].rstrip() %}",
            "{%- else %}",
            "    {%- set custom = '' %}",
            "{%- endif %}",
            f"{{{{- {q(head)} + ('/think' if thinking else '/no_think') + {q(mid)} }}}}",
            f"{{%- if custom %}}{{{{- custom + {q(after)} }}}}",
            f"{{%- elif thinking %}}{{{{- {q(think_default)} }}}}",
            f"{{%- else %}}{{{{- {q(plain_default)} }}}}{{%- endif %}}",
            f"{{{{- {q(close)} }}}}",
            "{%- for message in messages %}",
            "    {%- if message['role'] == 'user' or message['role'] == 'tool' %}",
            f"        {{{{- {q(turn)} + message['content'] + {q(close)} }}}}",
            "    {%- elif message['role'] == 'assistant' %}",
            "        {{- '<|im_start|>assistant\\n' }}",
            f"        {{%- if not thinking %}}{{{{- {q(empty)} }}}}{{%- endif %}}",
            "        {%- generation %}",
            "            {{- message['content'].lstrip('\\n') + '<|im_end|>' }}",
            "        {%- endgeneration %}",
            "        {{- '\\n' }}",
            "    {%- endif %}",
            "{%- endfor %}",
            "{%- if add_generation_prompt %}",
            f"    {{{{- '<|im_start|>assistant\\n' }}}}{{%- if not thinking %}}{{{{- {q(empty)} }}}}{{%- endif %}}",
            "{%- endif %}",
        ]
    )
    go = (
        "{{ $think := or (not $.IsThinkSet) $.Think }}"
        '{{ $custom := "" }}{{ if eq (index $.Messages 0).Role "system" }}'
        "{{ $custom = (index $.Messages 0).Content }}{{ end }}"
        + _go_text(head)
        + "{{ if $think }}/think{{ else }}/no_think{{ end }}"
        + _go_text(mid)
        + "{{ if $custom }}{{ $custom }}"
        + _go_text(after)
        + "{{ else if $think }}"
        + _go_text(think_default)
        + "{{ else }}"
        + _go_text(plain_default)
        + "{{ end }}"
        + _go_text(close)
        + "{{ range $i, $_ := .Messages }}"
        + '{{ if or (eq .Role "user") (eq .Role "tool") }}'
        + _go_text(turn)
        + "{{ .Content }}"
        + _go_text(close)
        + '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ if not $think }}'
        + empty
        + "{{ end }}{{ .Content }}<|im_end|>\n{{ end }}"
        + "{{ if and "
        + _GO_LAST
        + ' (ne .Role "assistant") }}<|im_start|>assistant\n{{ if not $think }}'
        + empty
        + "{{ end }}{{ end }}{{ end }}"
    )
    return Family(
        name="chatml-reasoning-header",
        description="ChatML with a system turn that always announces the reasoning mode (SmolLM3)",
        jinja=jinja,
        ollama_template=go,
        end_of_turn=("<|im_end|>",),
        stop_tokens=CHATML.stop_tokens,
        supports_system=True,
        bos_token=None,
        eos_token=None,
        caveats=("trims-whitespace", "system-flags"),
        variant="reasoning switch, default system prompts",
    )


def _candidates(template: str, bos_token: str | None, eos_token: str | None) -> Iterator[Family]:
    """Families, then variants built from what the template renders for probe conversations (never its name)."""
    yield from FAMILIES.values()
    yield from DEPLOY_FAMILIES
    if "strftime_now" in template or "date_string" in template:
        yield from (_dated_llama3_1(fmt) for fmt in _DATE_FORMATS)
    if "/no_think" in template:
        header = _reasoning_header_family(template, bos_token, eos_token)
        if header is not None:
            yield header
    bos_options: tuple[str | None, ...] = (None,)
    if bos_token:
        with fixed_date(PROBE_DATE):
            try:
                first = render(template, PROBES[0].messages, add_generation_prompt=True, bos_token=bos_token,
                               eos_token=eos_token)  # fmt: skip
            except UsageError:
                first = ""
        if first.startswith(bos_token):
            bos_options = (bos_token,)
    for lay in _LAYOUTS:
        for bos in bos_options:
            defaults: list[tuple[str | None, str | None]] = [(None, None)]
            found = _default_system_of(template, lay, bos, eos_token)
            if found is not None:
                defaults.append(found)
            # Options the template's text cannot use are not tried (a pruning of the search, not an identification).
            thinks = (None, "qwen3", "qwq") if "think" in template else (None,)
            eos_options = (None, eos_token) if eos_token and "eos_token" in template else (None,)
            every, turns = ("system", "user", "assistant"), ("user", "assistant")
            trims: tuple[tuple[str, ...], ...] = (
                ((), every, turns) if "trim" in template or ".strip(" in template else ((),)
            )
            for default, fmt in defaults:
                empties = (False, True) if default is not None else (False,)
                skips = (False,) if default is not None else (False, True)
                for empty, think, eos_closed, trim, skip in itertools.product(
                    empties, thinks, eos_options, trims, skips
                ):
                    yield _layout_family(lay, _Options(bos, default, fmt, empty, think, eos_closed, trim, skip))


def _template_caveats(template: str) -> list[str]:
    """Caveats that follow from what the model's template does beyond the probe conversations."""
    found = []
    if re.search(r"\btools\b|tool_calls", template):
        found.append("no-tools")
    if "</think>" in template and re.search(r"""split\(\s*['"]</think>""", template):
        found.append("reasoning-history")
    return found


def _refusal_reason(template: str, bos_token: str | None, eos_token: str | None) -> str:
    """Why no twin matches: what the template does that an Ollama TEMPLATE cannot, then the nearest family."""
    reasons = []
    try:
        with fixed_date(PROBE_DATE):
            render(template, PROBES[0].messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    except UsageError as e:
        reasons.append(f"it refuses a plain conversation without tools ({e.message})")
    if "<|channel|>" in template:
        reasons.append("it writes OpenAI's harmony format (channels, developer turns, reasoning effort)")
    if "/no_think" in template:
        reasons.append("it reads /think and /no_think out of the system message, which Go templates cannot search")
    # explain_unknown speaks for training, where a date cannot be reproduced; deploy has currentDate.
    known = explain_unknown(template, bos_token=bos_token, eos_token=eos_token).split("; ")
    reasons += [r for r in known if r and "strftime_now" not in r]
    return "; ".join(reasons)


def deploy_verdict(template: str | None, bos_token: str | None, eos_token: str | None) -> DeployVerdict:
    """Whether deploy can write an Ollama TEMPLATE for this Jinja chat template, and at what cost.

    The template is matched, by rendering PROBES (at a fixed date, with reasoning unset/on/off), against every
    family and against variants of the known layouts built from its own renders (default system prompt, today's
    date, BOS, reasoning switches). A match renders every probe byte-identically; its Ollama twin is checked
    against Go's text/template by tests/integration/test_template_parity.py. The verdict is 'exact' when the Ollama
    TEMPLATE reproduces the template on every conversation deploy supports, 'caveats' when it does so except for
    the named CAVEATS, and 'refused' (with the reason) when no family or variant matches.
    """
    if not template:
        return DeployVerdict("refused", None, (), "the model has no chat template")
    _compile(template)
    for family in _candidates(template, bos_token, eos_token):
        if _matches(template, family, bos_token, eos_token):
            ids = list(dict.fromkeys([*family.caveats, *_template_caveats(template)]))
            detail = {}
            if "date-format" in ids:
                fmt = re.search(r"strftime_now\((\"[^\"]*\")\)", family.jinja)
                if fmt:
                    written = PROBE_DATE.strftime(json.loads(fmt.group(1)))
                    detail["date-format"] = f"it writes {written!r} where Ollama writes {PROBE_DATE:%Y-%m-%d}"
            caveats = tuple(caveat(i, detail.get(i, "")) for i in ids)
            return DeployVerdict("caveats" if caveats else "exact", family, caveats)
    why = _refusal_reason(template, bos_token, eos_token)
    return DeployVerdict(
        "refused",
        None,
        (),
        "no family or variant llmforge can write as an Ollama TEMPLATE renders it" + (f": {why}" if why else ""),
    )


# ----------------------------------------------------------------------------------------------------------------
# What training and deployment ask
# ----------------------------------------------------------------------------------------------------------------


def end_of_turn_tokens_for(family: Family | None, eos_token: str | None) -> tuple[str, ...]:
    """The tokens that close an assistant turn: the family's, else (and for alpaca) the tokenizer's EOS."""
    tokens = family.end_of_turn if family is not None else ()
    if not tokens and eos_token:
        tokens = (eos_token,)
    return tokens


def check_end_of_turn_ids_trained(
    input_ids: Sequence[int], assistant_mask: Sequence[int], end_of_turn_ids: Iterable[int], *, assistant_turns: int
) -> None:
    """Raise UsageError unless a tokenized sample's assistant-only loss mask trains each assistant turn's end-of-turn
    token: a model whose end-of-turn token is outside the trained span never learns to stop, and rambles once deployed.
    The train stage checks this on the very ids the trainer gets.

    Each run of consecutive masked tokens is one trained assistant turn; there must be `assistant_turns` runs and
    each must contain one of `end_of_turn_ids` (the ids of the end-of-turn tokens, e.g. from
    tokenizer.convert_tokens_to_ids(end_of_turn_tokens_for(...))). Raises UsageError otherwise.
    """
    if len(input_ids) != len(assistant_mask):
        raise ValueError(f"{len(input_ids)} token ids but {len(assistant_mask)} mask entries")
    ends = set(end_of_turn_ids)
    runs: list[list[int]] = []
    previous = 0
    for token, masked in zip(input_ids, assistant_mask):
        if masked and not previous:
            runs.append([])
        if masked:
            runs[-1].append(token)
        previous = masked
    if len(runs) != assistant_turns:
        raise UsageError(
            f"the loss mask trains {len(runs)} stretches of tokens for {assistant_turns} assistant turns",
            hint="every assistant turn needs exactly one {% generation %}...{% endgeneration %} block",
        )
    for number, run in enumerate(runs, start=1):
        if not ends & set(run):
            raise UsageError(
                f"assistant turn {number}: no end-of-turn token id ({sorted(ends)}) among its {len(run)} trained "
                "tokens, so the model would never learn to stop",
                hint="check that the end-of-turn token is a single special token inside {% generation %}",
            )


def stop_tokens_for(
    template: str, *, bos_token: str | None, eos_token: str | None, extra_eos: Iterable[str] = ()
) -> tuple[str, ...]:
    """Every stop string for a model with this template: the family's, the tokenizer's EOS, and `extra_eos`
    (end-of-text tokens that generation_config.json declares). Unknown template: only the EOS tokens."""
    family = identify(template, bos_token=bos_token, eos_token=eos_token)
    found = list(family.stop_tokens) if family is not None else []
    found += [eos_token] if eos_token else []
    found += list(extra_eos)
    return tuple(dict.fromkeys(t for t in found if t))


def template_writes_bos(template: str, *, bos_token: str | None, eos_token: str | None = None) -> bool:
    """Whether the rendered text starts with the BOS token. Training tokenizes the rendered text without adding
    special tokens, so llama.cpp must add BOS itself (GGUF add_bos_token) exactly when this is true."""
    if not bos_token:
        return False
    probe = PROBES[0]
    text = render(template, probe.messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    return text.startswith(bos_token)


# ----------------------------------------------------------------------------------------------------------------
# Modelfile text
# ----------------------------------------------------------------------------------------------------------------


def modelfile_quote(text: str, *, what: str = "value") -> str:
    """`text` as a Modelfile triple-quoted value, or UsageError when Ollama's parser would change it.

    Ollama's Modelfile parser (parser/parser.go) has no escapes: a value in \"\"\"...\"\"\" ends at the first
    \"\"\" followed by whitespace, and it silently drops characters that Go's strconv.IsPrint rejects other
    than space, tab and newlines (control characters, no-break and other Unicode spaces, format characters).
    """
    if '"""' in text:
        raise UsageError(
            f'the {what} contains """, which a Modelfile cannot hold (its triple-quoted values have no escapes)',
            hint='remove the """ from it',
        )
    dropped = sorted({ch for ch in text if not ch.isprintable() and ch not in " \t\r\n"})
    if dropped:
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in dropped[:5])
        raise UsageError(
            f"the {what} contains characters Ollama's Modelfile parser drops ({shown})",
            hint="remove or replace those characters",
        )
    return f'"""{text}"""'
