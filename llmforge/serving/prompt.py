"""Turn chat messages into the model's prompt with the model's own chat template: the one rendering call.

llmforge.chat_templates.render is the project's renderer (same behaviour as transformers' apply_chat_template);
until that module is present this falls back to a sandboxed Jinja render with the same variables.
"""

from __future__ import annotations

from typing import Any

from llmforge.errors import UsageError


def render(template: str, messages: list[dict[str, Any]], bos_token: str | None, eos_token: str | None) -> str:
    """Render with add_generation_prompt=True. A template that refuses the conversation raises UsageError."""
    try:
        from llmforge.chat_templates import render as project_render
    except ImportError:
        project_render = None
    if project_render is not None:
        return project_render(template, messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
    return _fallback_render(template, messages, bos_token, eos_token)


def _fallback_render(template: str, messages: list[dict[str, Any]], bos_token, eos_token) -> str:
    import datetime
    import json

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # HF's {% generation %} marks the trained span; rendering for inference just keeps the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token or "", eos_token=eos_token or ""
        )
    except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise UsageError(f"the model's chat template refused these messages: {exc}") from None
