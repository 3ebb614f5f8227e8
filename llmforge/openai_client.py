"""The one client for OpenAI-compatible endpoints (data generate and augment, eval's served targets and judge,
`llmforge chat`): JSON requests and server-sent-event streams, timeouts, the API key as a bearer token, and retries
with exponential backoff that wait at least as long as a 429/503's Retry-After asks.

Standard library only (urllib): the core install reaches any endpoint without an extra.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from pydantic import SecretStr

from llmforge.errors import LlmforgeError

log = logging.getLogger(__name__)

# A server asking for a longer pause than this is treated as asking for this long: a typo'd or hostile header must
# not park a run for a day. Five minutes covers the rate-limit windows hosted APIs announce.
MAX_RETRY_AFTER = 300.0
# "Come back later" answers: rate limited, or overloaded (llmforge serve's full queue says 503 with Retry-After).
BUSY = (429, 503)


class EndpointError(LlmforgeError):
    """A request that failed for good. `status` is the HTTP status (None: no usable answer: unreachable, timed out,
    or not the JSON asked for); `problem` says what went wrong in a few words; `body` holds the start of the
    server's answer; `transient` tells a failure worth retrying later from one that will not go away."""

    def __init__(self, message: str, *, status: int | None, problem: str, body: str = "", transient: bool,
                 attempts: int = 1, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.problem = problem
        self.body = body
        self.transient = transient
        self.attempts = attempts

    @property
    def detail(self) -> str:
        """The server's own error message ({"error": {"message": ...}}) when it sent one, else the start of its body."""
        try:
            return str(json.loads(self.body)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return self.body[:200]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), capped; None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (now if now is not None else datetime.now(timezone.utc).timestamp())
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip() or type(exc).__name__


def _read_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")[:300]
    except OSError:
        return ""


class Client:
    """One endpoint: `base_url` is what comes before /chat/completions (e.g. http://127.0.0.1:8000/v1).

    `retries` more attempts follow a failure whose status is in `retry_statuses` (and, with `retry_unreachable`,
    one that got no usable answer), after `backoff` seconds, doubling each time, or the server's Retry-After when
    longer. `requests` and `retried` count what was sent."""

    def __init__(self, base_url: str, *, api_key: SecretStr | str | None = None, timeout: float = 60.0,
                 retries: int = 0, backoff: float = 1.0, retry_statuses: Iterable[int] = BUSY,
                 retry_unreachable: bool = False):
        self.base_url = base_url.rstrip("/")
        # kept as a secret so a repr or a traceback's locals of the client never show the key
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_statuses = frozenset(retry_statuses)
        self.retry_unreachable = retry_unreachable
        self.requests = 0
        self.retried = 0

    def url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _attempts(self, path: str, body: dict | None, read, timeout: float | None):
        """Send until `read(response)` returns, a failure is final, or the retries are spent."""
        url = self.url(path)
        data = None if body is None else json.dumps(body).encode()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.requests += 1
            request = urllib.request.Request(url, data=data, headers=self._headers(),
                                             method="GET" if body is None else "POST")
            wait_at_least = 0.0
            try:
                response = urllib.request.urlopen(request, timeout=timeout or self.timeout)
            except urllib.error.HTTPError as exc:
                text = _read_body(exc)
                transient = exc.code in self.retry_statuses
                failure = EndpointError(f"{url} answered HTTP {exc.code}: {text[:200]}", status=exc.code,
                                        problem=f"HTTP {exc.code}", body=text, transient=transient)
                wait_at_least = (retry_after(exc.headers.get("Retry-After")) if exc.headers else None) or 0.0
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                failure = EndpointError(f"cannot reach {self.base_url} ({_reason(exc)})", status=None,
                                        problem=_reason(exc), transient=self.retry_unreachable,
                                        hint="is the server running? check the host and port")
            else:
                try:
                    return read(response)
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    response.close()
                    failure = EndpointError(f"{url} did not answer as expected ({exc})", status=None,
                                            problem=f"unexpected reply ({exc})", transient=self.retry_unreachable)
            if not failure.transient or attempt == self.retries:
                failure.attempts = attempt + 1
                raise failure
            self.retried += 1
            pause = max(delay, wait_at_least)
            log.warning("request to %s failed (%s); retry %d in %.1fs", url, failure.problem, attempt + 1, pause)
            time.sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def get_json(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self._attempts(path, None, _json_of, timeout)

    def post_json(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return self._attempts(path, body, _json_of, timeout)

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions (not streamed); the reply, which has a choices[0].message, else EndpointError
        (an answer of another shape counts as a failed attempt)."""

        def read(response) -> dict[str, Any]:
            payload = _json_of(response)
            message = payload["choices"][0]["message"]
            if not isinstance(message, dict):
                raise TypeError("choices[0].message is not an object")
            return payload

        return self._attempts("/chat/completions", {**body, "stream": False}, read, None)

    def stream(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """POST with "stream": true; each server-sent event's JSON data, until [DONE] or the end of the stream.
        Retries happen only before the first event: a stream cut short is not sent twice."""
        response = self._attempts(path, {**body, "stream": True}, lambda r: r, timeout)
        with response:
            yield from sse_events(response)


def _json_of(response) -> dict[str, Any]:
    with response:
        payload = json.loads(response.read().decode("utf-8"))
    if not isinstance(payload, dict):
        raise TypeError("the reply is not a JSON object")
    return payload


def sse_events(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """The JSON `data` of each server-sent event (data lines joined by newlines, events ended by a blank line);
    comments (`:`) and other fields are skipped; `[DONE]` ends the stream."""
    data: list[str] = []
    for raw in lines:
        line = (raw.decode("utf-8") if isinstance(raw, bytes) else raw).rstrip("\r\n")
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            continue
        if not data:
            continue
        text, data = "\n".join(data), []
        if text == "[DONE]":
            return
        yield json.loads(text)
    if data and "\n".join(data) != "[DONE]":
        yield json.loads("\n".join(data))
