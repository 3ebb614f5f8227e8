"""The root `llmforge` command: registers each stage's commands and turns LlmforgeError into a message and exit code."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

import typer
from typer.core import TyperGroup

from llmforge import __version__
from llmforge.cli import chat as chat_cmd
from llmforge.cli import config as config_cmd
from llmforge.cli import data as data_cmd
from llmforge.cli import deploy as deploy_cmd
from llmforge.cli import doctor as doctor_cmd
from llmforge.cli import evaluate as evaluate_cmd
from llmforge.cli import export as export_cmd
from llmforge.cli import runs as runs_cmd
from llmforge.cli import serve as serve_cmd
from llmforge.cli import train as train_cmd
from llmforge.cli import tune as tune_cmd
from llmforge.cli.output import error
from llmforge.errors import EXIT_FAILED, LlmforgeError

DEBUG_ENV = "LLMFORGE_DEBUG"


# Known-harmless library noise, dropped at its source logger (a regular expression matched at the message's start).
# bitsandbytes logs the first on every import on CPUs with AVX512-BF16; the optional `kernels` package only speeds up
# 4-bit inference there. llama.cpp (its lines reach this logger through llmforge.llamacpp's log callback) reports a
# context longer than n_ctx_train (0) whenever a GGUF is opened vocab-only, as the tokenizer check does; the file's
# context_length is not at fault (facts.md). A real n_ctx_train still gets its warning.
KNOWN_NOISE = {
    "bitsandbytes.backends.cpu.ops": r"Failed to load CPU gemm_4bit_forward from kernels-community",
    "llama-cpp-python": r"llama_context: n_ctx_seq \(\d+\) > n_ctx_train \(0\)",
}
# The same for Python warnings, by category and message: peft reads this deprecated transformers property on every
# adapter load; nothing a user can change.
KNOWN_WARNINGS = {FutureWarning: r"`is_gradient_checkpointing` is deprecated"}


class _DropMessage(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(str(record.msg))


def quiet_known_noise() -> None:
    for name, pattern in KNOWN_NOISE.items():
        source = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in source.filters):
            source.addFilter(_DropMessage(pattern))
    for category, message in KNOWN_WARNINGS.items():
        warnings.filterwarnings("ignore", message=message, category=category)
    if not sys.stderr.isatty():
        # transformers' and huggingface_hub's tqdm bars ("Loading weights", "Writing model shards") redraw with
        # carriage returns, which a log keeps as one long line; llmforge prints its own line per phase there.
        # Read when those libraries are imported, which the CLI does later; a value the user set wins.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class LlmforgeGroup(TyperGroup):
    """Maps the errors a user can fix to one line, a hint and an exit code; LLMFORGE_DEBUG=1 shows tracebacks."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except LlmforgeError as exc:
            if debug_enabled():
                raise
            error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="llmforge",
    cls=LlmforgeGroup,
    help="Fine-tune language models from one YAML file: data, train, eval, export (GGUF), deploy (Ollama), serve.\n\n"
    "Example:  llmforge config init && llmforge doctor",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmforge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Fine-tune language models from one YAML file."""
    quiet_known_noise()


app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("tune")(tune_cmd.tune)
app.command("eval")(evaluate_cmd.evaluate)
app.add_typer(export_cmd.app, name="export")
app.add_typer(deploy_cmd.app, name="deploy")
app.add_typer(serve_cmd.app, name="serve")
app.command("chat")(chat_cmd.chat)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(config_cmd.app, name="config")
app.command("doctor")(doctor_cmd.doctor)


def command_paths() -> list[list[str]]:
    """Every command as its argument path, the root (`[]`) first, subcommands sorted: for docs and help tests."""
    import typer.main

    def walk(cmd, path: list[str]):
        yield path
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except LlmforgeError as exc:  # raised outside a command (e.g. in a callback)
        error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except Exception:
        if debug_enabled():
            raise
        import traceback

        error("unexpected internal error (a bug in llmforge)", hint=f"rerun with {DEBUG_ENV}=1 for the traceback")
        traceback.print_exc(limit=1, file=sys.stderr)
        sys.exit(EXIT_FAILED)
