"""The one place that builds an `ollama.Client` (host and timeouts) and turns its errors into our messages.

Deploy, eval, chat and doctor all talk to Ollama through the official client. The client raises httpx errors, its
own ConnectionError and `ollama.ResponseError`; `talking_to` turns them into LlmforgeErrors the CLI prints, so each
caller only says what it was doing. `ollama` and `httpx` are imported inside the functions (CLI import rule).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmforge.errors import LlmforgeError

DEFAULT_HOST = "http://127.0.0.1:11434"
# Seconds. Registering uploads the whole GGUF and Ollama copies it, and a first chat loads the model: minutes.
# Looking a model up or deleting it takes seconds. Reaching a live server at all takes well under CONNECT_TIMEOUT.
REGISTER_TIMEOUT = 600.0
LOOKUP_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
START_HINT = (
    "start it with `ollama serve` (or the Ollama app), or point at a running one with --host URL, "
    "deploy.host or OLLAMA_HOST"
)


def resolve_host(host: str | None = None) -> str:
    """The address to use: the one given, else $OLLAMA_HOST, else Ollama's default."""
    return host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST


def connect(host: str, *, timeout: float | None = None, connect_timeout: float | None = None) -> Any:
    """An `ollama.Client` for `host`. `timeout` bounds each request (None: no limit, the client's default);
    `connect_timeout` bounds reaching the server, so a dead host fails fast even when answers may take minutes."""
    import ollama

    if connect_timeout is None:
        return ollama.Client(host=host, timeout=timeout)
    import httpx

    return ollama.Client(host=host, timeout=httpx.Timeout(timeout, connect=connect_timeout))


def transport_errors() -> tuple[type[BaseException], ...]:
    """What the client raises when the server cannot be reached or the connection breaks."""
    import httpx

    return (ConnectionError, OSError, httpx.TransportError)


class Unreachable(LlmforgeError):
    """Ollama could not be reached (or the connection broke); `cause` names the underlying error type."""

    def __init__(self, host: str, error: BaseException, hint: str = START_HINT):
        super().__init__(f"cannot reach Ollama at {host} ({type(error).__name__})", hint=hint)
        self.host = host
        self.cause = type(error).__name__


class Refused(LlmforgeError):
    """Ollama answered with an error: `status` is the HTTP code (404: no such model), `detail` its message."""

    def __init__(self, message: str, *, status: int, detail: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.detail = detail

    @property
    def missing(self) -> bool:
        return self.status == 404


@contextmanager
def talking_to(host: str, doing: str, *, hint: str | None = None, with_status: bool = False) -> Iterator[None]:
    """Run client calls; a transport error becomes Unreachable, an error answer becomes Refused with the message
    "Ollama at HOST DOING: <Ollama's message>" (and " (HTTP <code>)" with `with_status`)."""
    import ollama

    try:
        yield
    except ollama.ResponseError as e:
        message = f"Ollama at {host} {doing}: {e.error}" + (f" (HTTP {e.status_code})" if with_status else "")
        raise Refused(message, status=e.status_code, detail=e.error, hint=hint) from None
    except transport_errors() as e:
        raise Unreachable(host, e) from None
