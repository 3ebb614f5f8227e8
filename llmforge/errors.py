"""Errors a user can fix. Each carries a one-line message, an optional hint, and the exit code the CLI uses.

Exit codes: 0 ok, 1 the work failed, 2 bad usage, config or input. Only problems a user can act on are
LlmforgeErrors; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib.util

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# The name on the package index. `llmforge` there is another author's placeholder, so installing by that name would
# fetch someone else's code; the command and the import name stay `llmforge`.
DISTRIBUTION = "llmforge-cli"


def install_hint(extra: str) -> str:
    """How to add an extra, for pipx and pip users alike."""
    return f"pipx inject {DISTRIBUTION} '{DISTRIBUTION}[{extra}]'   or   pip install '{DISTRIBUTION}[{extra}]'"


class LlmforgeError(Exception):
    """The work failed for a reason the user can act on (exit 1)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class TrainingStopped(LlmforgeError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit 130/143). `run` is the run to resume;
    the CLI, which knows the command line, replaces the hint with the full command that continues it."""

    def __init__(self, message: str, *, run: str, exit_code: int):
        super().__init__(message, hint=f"continue with: llmforge train --resume -s train.run_name={run}",
                         exit_code=exit_code)
        self.run = run


class UsageError(LlmforgeError):
    """Bad usage: flags, config, or input files (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config value is unknown, missing or of the wrong type."""


class InputError(UsageError):
    """An input file is missing or malformed; the message names file, line and field."""


class MissingExtraError(UsageError):
    """A command needs an optional extra that is not installed."""

    def __init__(self, what: str, extra: str, modules: list[str]):
        missing = ", ".join(modules)
        super().__init__(
            f"{what} needs the '{extra}' extra ({missing} not installed)",
            hint=install_hint(extra),
        )
        self.extra = extra
        self.modules = modules


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Fail with an install hint unless every module can be imported (checked without importing it)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(what, extra, missing)
