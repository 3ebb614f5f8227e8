"""`llmforge chat`: talk to a served model (ours, any OpenAI-compatible endpoint, or Ollama) in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, SetOption, load
from llmforge.cli.output import console, escape, warn

HELP = (
    "/reset clears the history, /system TEXT sets the system prompt (empty clears it), "
    "/save FILE writes the conversation as JSON, /exit leaves (Ctrl-D too)."
)


def chat(
    endpoint: Annotated[
        Optional[str],
        typer.Argument(help="URL of an OpenAI-compatible server, or ollama:NAME (default: serve.host:serve.port).",
                       show_default=False),
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", help="Bearer key (default: serve.api_key).", show_default=False)
    ] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "-t", help="Sampling temperature.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Longest answer in tokens.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Chat with a model in the terminal: streaming answers, history, /reset, /system TEXT, /save FILE.

    Example:  llmforge chat http://127.0.0.1:8000   or   llmforge chat ollama:my-model
    """
    from llmforge.serving.chat_client import ChatSession

    cfg = load(config, set_).config
    if endpoint is None:
        host = cfg.serve.host if cfg.serve.host not in ("0.0.0.0", "::") else "127.0.0.1"
        endpoint = f"http://{host}:{cfg.serve.port}"
    key = api_key or (cfg.serve.api_key.get_secret_value() if cfg.serve.api_key is not None else None)
    session = ChatSession(endpoint, api_key=key, system=system, temperature=temperature, max_tokens=max_tokens)
    model = session.connect()
    interactive = sys.stdin.isatty()
    console.print(f"[bold]chatting with[/] {escape(model)} at {escape(session.target)}")
    if interactive:
        console.print(f"[dim]{escape(HELP)}[/]")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/help":
            console.print(escape(HELP))
        elif text == "/reset":
            session.reset()
            console.print("[dim]history cleared[/]")
        elif text == "/system" or text.startswith("/system "):
            session.set_system(text[len("/system") :].strip())
            console.print(f"[dim]system prompt {'set' if session.system else 'cleared'}[/]")
        elif text.startswith("/save"):
            name = text[len("/save") :].strip()
            if not name:
                warn("usage: /save FILE")
                continue
            from llmforge.errors import UsageError

            try:
                path = session.save(Path(name))
            except UsageError as exc:
                warn(exc.message)
                continue
            console.print(f"[dim]saved {len(session.conversation())} messages to {escape(str(path))}[/]")
        elif text.startswith("/"):
            warn(f"unknown command {text.split()[0]}; {HELP}")
        else:
            for piece in session.ask(text):
                console.out(piece, end="", highlight=False)
                console.file.flush()
            console.out("")
