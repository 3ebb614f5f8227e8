"""`llmforge chat`: talk to a served model (ours, any OpenAI-compatible endpoint, or Ollama) in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, warn

HELP = (
    "/reset clears the history, /system TEXT sets the system prompt (empty clears it), "
    "/save FILE writes the conversation as JSON, /good and /bad [COMMENT] rate the last answer (llmforge serve), "
    "/exit leaves (Ctrl-D too)."
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
    docs: Annotated[
        Optional[Path],
        typer.Option("--docs", help="Answer from this folder of documents: the best passages go into each question, "
                     "their sources are printed under the answer (serve.retrieval sets top_k, chunk size).",
                     show_default=False),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Chat with a model in the terminal: streaming answers, history, /reset, /system TEXT, /save FILE, /good, /bad.

    /good and /bad [COMMENT] rate the last answer of llmforge serve (kept with serve.log_conversations).

    Example:  llmforge chat http://127.0.0.1:8000   or   llmforge chat ollama:my-model --docs ./handbook
    """
    from llmforge.serving.chat_client import ChatSession

    loaded = load(config, set_)
    cfg = loaded.config
    if endpoint is None:
        host = cfg.serve.host if cfg.serve.host not in ("0.0.0.0", "::") else "127.0.0.1"
        endpoint = f"http://{host}:{cfg.serve.port}"
    key = api_key or (cfg.serve.api_key.get_secret_value() if cfg.serve.api_key is not None else None)
    session = ChatSession(endpoint, api_key=key, system=system, temperature=temperature, max_tokens=max_tokens)
    model = session.connect()
    retriever = None
    if docs is not None:
        from llmforge.retrieval import open_docs, with_passages

        retriever = open_docs(cfg.serve.retrieval, workspace_of(loaded), docs)
        report = retriever.report
        skipped = f", {len(report.skipped)} skipped (not text)" if report.skipped else ""
        console.print(f"[dim]documents: {report.files} files, {report.chunks} passages ({report.indexed} indexed "
                      f"now{skipped}) in {escape(str(report.path))}[/]")  # fmt: skip
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
        elif text.split()[0] in ("/good", "/bad"):
            from llmforge.errors import LlmforgeError

            word = text.split()[0]
            try:
                session.feedback(word == "/good", text[len(word) :].strip() or None)
            except LlmforgeError as exc:
                warn(exc.message + (f" ({exc.hint})" if exc.hint else ""))
                continue
            console.print(f"[dim]feedback recorded: {'good' if word == '/good' else 'bad'} answer[/]")
        elif text.startswith("/"):
            warn(f"unknown command {text.split()[0]}; {HELP}")
        else:
            passages = retriever.search(text) if retriever is not None else []
            sent = with_passages(text, passages) if passages else None
            for piece in session.ask(text, sent=sent):
                console.out(piece, end="", highlight=False)
                console.file.flush()
            console.out("")
            print_sources([p.to_dict(n) for n, p in enumerate(passages, 1)] or session.sources)


def print_sources(sources: list[dict]) -> None:
    """The passages an answer drew on (ours from --docs, or those a server with serve.retrieval attached)."""
    if not sources:
        return
    console.print("[dim]sources:[/]")
    for number, source in enumerate(sources, 1):
        where = str(source.get("source"))
        lines = source.get("lines") or []
        if len(lines) == 2:
            where += f":{lines[0]}" if lines[0] == lines[1] else f":{lines[0]}-{lines[1]}"
        label = f"[{source.get('index', number)}] {where}"
        console.print(f"[dim]  {escape(label)}[/]", highlight=False)
