"""The HTTP API: OpenAI-compatible routes, the simple /generate and /chat routes, health, metrics, the chat page,
and /v1/feedback (a user's thumb on a logged answer).

One ASGI middleware (Gate) sits in front of every route: it counts requests for /metrics, enforces the body
limit, the API key and the per-key rate limit, so a refused request never reaches JSON parsing. Handlers (module
level, on one APIRouter) turn a request into a Job for the picked model's engine worker and relay its events as JSON
or, through the one SSE helper `sse_response`, as server-sent events. Before that, a request
is refused (4xx, OpenAI's error shape) for text that is not valid Unicode, a `model` this server does not serve, or
an OpenAI parameter this server does not implement; /openapi.json declares every one of these answers. A request's
`model` picks one of the served models (serving/models.py), or for the A/B group a variant (serving/variants.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmforge import __version__
from llmforge.errors import UsageError
from llmforge.serving.conversations import ConversationLog, feedback_dir, plain_messages
from llmforge.serving.generation import PENALTY_WINDOW, Job, QueueFull, Result, Sampling
from llmforge.serving.metrics import Metrics
from llmforge.serving.models import ModelLoadFailed, Models, Slot
from llmforge.serving.prompt import render
from llmforge.serving.target import Variant
from llmforge.serving.variants import CONVERSATION_HEADER, VARIANT_HEADER, pick

log = logging.getLogger(__name__)

OPEN_ROUTES = {"/health", "/"}  # the chat page loads without a key and asks for one (conventions.md)
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/generate", "/chat",
          "/v1/feedback"}
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
POLL_SECONDS = 0.25  # how often a waiting non-streaming request checks that its client is still there
# what a handler leaves in the ASGI scope for the Gate: callables to run once the response is over (releasing the
# model it held) and headers to add to the response (the A/B variant)
SCOPE_FINISH = "llmforge.finish"
SCOPE_HEADERS = "llmforge.headers"


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Request(_Body):
    @model_validator(mode="before")
    @classmethod
    def _unicode_only(cls, data: Any) -> Any:
        # JSON can carry a lone surrogate ("\ud800"); Python keeps it in the str and the tokenizers fail on it deep
        # in the engine. It is bad input: refuse it before validation, naming where it is (ignored fields too).
        found = _lone_surrogate(data, ())
        if found:
            where, text, at = found
            raise PydanticCustomError(
                "invalid_unicode",
                "{where}: text holds a lone UTF-16 surrogate (U+{code}) at character {at}; send valid Unicode",
                {"where": where, "code": f"{ord(text[at]):04X}", "at": at},
            )
        return data


def _lone_surrogate(value: Any, path: tuple[str, ...]) -> tuple[str, str, int] | None:
    """(dotted path, the string, index) of the first string in a JSON value that UTF-8 cannot encode, or None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return ".".join(path) or "body", value, exc.start
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, path) or _lone_surrogate(item, (*path, str(key)))
        if found:
            return found
    return None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


# sampling settings beyond OpenAI's (top_k, repetition_penalty: vLLM and llama.cpp's servers take them too), the same
# on every generating route; penalties count the last PENALTY_WINDOW generated tokens, as llama.cpp's sampler does
TopK = Annotated[int | None, Field(ge=0, lt=2**31, description="Sample among the k likeliest tokens only (0: all).")]
RepetitionPenalty = Annotated[float | None, Field(
    ge=0.01, le=10, description=f"Divides the logit of each token among the last {PENALTY_WINDOW} generated (1: off; "
    "a negative logit is multiplied).")]  # fmt: skip
PresencePenalty = Annotated[float | None, Field(
    ge=-2, le=2, description=f"Subtracted from the logit of each token among the last {PENALTY_WINDOW} generated.")]  # fmt: skip
FrequencyPenalty = Annotated[float | None, Field(
    ge=-2, le=2, description=f"Subtracted from a token's logit per time it is among the last {PENALTY_WINDOW} "
    "generated.")]  # fmt: skip


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingBody(_Request):
    model: str | None = Field(None, description="A served model's id, as /v1/models lists it (any other: 404).")
    user: str | None = Field(None, description="Your end user's id: keeps them on one A/B variant.")
    max_tokens: int | None = Field(None, description="Tokens to generate at most (capped by serve.max_tokens_limit).")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: TopK = None
    repetition_penalty: RepetitionPenalty = None
    presence_penalty: PresencePenalty = None
    frequency_penalty: FrequencyPenalty = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="The same seed gives the same text.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="Keep generating past end-of-turn tokens (for benchmarks).")
    # OpenAI parameters this server does not implement: declared so that a request using one is refused (400,
    # naming it) instead of answered as if it had been honoured. `not_supported` lists, for each, the values
    # that ask for nothing missing (null always does).
    n: int | None = Field(None, description="Only 1.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported (only {}).")
    not_supported: ClassVar[dict[str, tuple[Any, ...]]] = {"n": (1,), "logit_bias": ({},)}


class ChatRequest(_SamplingBody):
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool | None = Field(None, description="Not supported (only false).")
    top_logprobs: int | None = Field(None, description="Not supported (only 0).")
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported (only []).")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Not supported (only 'none' or 'auto').")
    functions: list[dict[str, Any]] | None = Field(None, description="Not supported (only []).")
    function_call: str | dict[str, Any] | None = Field(None, description="Not supported (only 'none' or 'auto').")
    response_format: dict[str, Any] | None = Field(None, description='Not supported (only {"type": "text"}).')
    # with no tools to call, tool_choice "auto" and "none" both mean a plain answer
    not_supported: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_SamplingBody.not_supported,
        "logprobs": (False,),
        "top_logprobs": (0,),
        "tools": ([],),
        "tool_choice": ("none", "auto"),
        "functions": ([],),
        "function_call": ("none", "auto"),
        "response_format": ({"type": "text"},),
    }


class CompletionRequest(_SamplingBody):
    prompt: str | list[str]
    logprobs: int | None = Field(None, description="Not supported (even 0 asks for the sampled token's).")
    echo: bool | None = Field(None, description="Not supported (only false).")
    suffix: str | None = Field(None, description="Not supported (only '').")
    best_of: int | None = Field(None, description="Not supported (only 1).")
    not_supported: ClassVar[dict[str, tuple[Any, ...]]] = {
        **_SamplingBody.not_supported,
        "logprobs": (),
        "echo": (False,),
        "suffix": ("",),
        "best_of": (1,),
    }


class GenerateRequest(_Request):
    prompt: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: TopK = None
    repetition_penalty: RepetitionPenalty = None
    presence_penalty: PresencePenalty = None
    frequency_penalty: FrequencyPenalty = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="The same seed gives the same text.")
    stream: bool = False


class FeedbackRequest(_Request):
    id: str = Field(description="The id of a chat completion this server answered (chatcmpl-...).", max_length=200)
    score: Literal[1, -1, "up", "down"] = Field(description='1 or "up": a good answer; -1 or "down": a bad one.')
    comment: str | None = Field(None, description="What the user said about the answer.", max_length=4000)


class FeedbackAnswer(BaseModel):
    object: Literal["feedback"]
    id: str
    feedback: Literal["up", "down"]


# ---------------------------------------------------------------- errors


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status, headers=headers)


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    # a message or param may quote the request (a dict key, a model name): keep it encodable as UTF-8
    message = message.encode("utf-8", "replace").decode("utf-8")
    param = param.encode("utf-8", "replace").decode("utf-8") if isinstance(param, str) else param
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# what each error status means here, for the OpenAPI schema (clients and the schema fuzz test read it)
_ERRORS = {
    400: "Invalid request, or a parameter this server does not support (param names it)",
    401: "Missing or wrong API key",
    404: "The model named is not served here (code model_not_found)",
    413: "Request body larger than serve.max_body_bytes",
    429: "Rate limit reached (Retry-After)",
    500: "Generation failed in the engine, or the model failed to load",
    503: "The queue is full (Retry-After)",
}
# stream: true answers with server-sent events; the schema describes one event (each data is a JSON chunk, and
# "[DONE]" ends the stream)
_SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}}, "required": ["data"]}
_STREAMED = {200: {"description": "JSON, or server-sent events when stream is true",
                   "content": {"text/event-stream": {"schema": _SSE_EVENT}}}}  # fmt: skip


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
_ERROR_HEADERS = {401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
                  429: _RETRY_AFTER, 503: _RETRY_AFTER}  # fmt: skip


def _documented(*statuses: int, text_route: bool = False) -> dict[int | str, dict[str, Any]]:
    # FastAPI files `model` under the route's own media type; errors are JSON on a text/plain route too (/metrics),
    # so there the body is a plain $ref (the JSON routes register the ErrorResponse component)
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    model = {} if text_route else {"model": ErrorResponse}
    headers = {s: {"headers": _ERROR_HEADERS[s]} if s in _ERROR_HEADERS else {} for s in statuses}
    return {s: {**model, "description": _ERRORS[s], "content": body, **headers[s]} for s in statuses}


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------- the gate in front of every route


class RateLimiter:
    """At most `per_minute` requests in any 60 s window per identity (the key, else the client address)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, identity: str, now: float) -> float | None:
        if len(self._seen) > 10_000:  # forget identities idle for a minute, so the table cannot grow without end
            self._seen = {k: v for k, v in self._seen.items() if v and now - v[-1] < 60.0}
        times = self._seen.setdefault(identity, deque())
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.per_minute:
            return 60.0 - (now - times[0])
        times.append(now)
        return None


class Gate:
    def __init__(self, app, *, metrics: Metrics, api_key: str | None, max_body: int, rate_limit: int | None):
        self.app = app
        self.metrics = metrics
        self.api_key = api_key
        self.max_body = max_body
        self.limiter = RateLimiter(rate_limit) if rate_limit else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "other"
        status = [500]
        recorded = [False]
        start = time.perf_counter()

        def record() -> None:
            if not recorded[0]:
                recorded[0] = True
                self.metrics.finished(route, status[0], time.perf_counter() - start)

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = scope.get(SCOPE_HEADERS)
                if extra:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      *((k.lower().encode(), v.encode()) for k, v in extra.items())]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last byte leaves: a client that reads /metrics next sees this request
            await send(message)

        self.metrics.started()
        try:
            await self._handle(scope, receive, send_status, path)
        finally:
            for finish in scope.pop(SCOPE_FINISH, ()):
                finish()
            record()

    async def _handle(self, scope, receive, send, path: str):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        presented = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        if path not in OPEN_ROUTES:
            if self.api_key is not None and not (
                presented is not None and hmac.compare_digest(presented.encode(), self.api_key.encode())
            ):
                body = error_body(
                    "Invalid or missing API key. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"
                )
                return await _send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})
            if self.limiter is not None:
                client = scope.get("client") or ("unknown", 0)
                identity = "key:" + presented if presented else "addr:" + str(client[0])
                wait = self.limiter.retry_after(identity, time.monotonic())
                if wait is not None:
                    body = error_body("Rate limit reached; retry later.", "rate_limit_error", code="rate_limit_exceeded")
                    return await _send_json(send, 429, body, {"Retry-After": str(max(1, int(wait + 0.999)))})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # Read the whole body here, bounded, then replay it: a body past the limit never reaches the parser.
        length = headers.get("content-length")
        too_big = error_body(f"Request body larger than {self.max_body} bytes.", code="request_too_large")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _send_json(send, 413, too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- the application


class Picked:
    """The model one request is answered by, held from the moment it is picked until the response is over."""

    def __init__(self, slot: Slot, public: str, variant: Variant | None, group: str | None):
        self.slot = slot
        self.engine = slot.engine
        self.worker = slot.worker
        self.public = public  # the id the response names: what the request asked for
        self.variant = variant
        self.group = group
        self.started = time.perf_counter()


class Server:
    """What the handlers share: the models and their workers, limits, metrics and the conversation log."""

    def __init__(self, models: Models, variants: list[Variant], serve, conversations_dir, retriever=None):
        self.models = models
        self.retriever = retriever  # serve.retrieval's index (llmforge.retrieval.Retriever), or None
        self.variants = variants
        self.group = serve.variant_group if variants else None
        self.serve = serve
        self.metrics = Metrics()
        self.log = ConversationLog(conversations_dir, serve.log_max_bytes) if serve.log_conversations else None
        self.feedback_log = (ConversationLog(feedback_dir(conversations_dir), serve.log_max_bytes, "feedback")
                             if serve.log_conversations else None)  # fmt: skip
        self.created = int(time.time())

    @property
    def ids(self) -> list[str]:
        """The model ids /v1/models lists; the first answers requests that name none."""
        return ([self.group] if self.group else []) + list(self.models.slots)

    @property
    def waiting(self) -> int:
        return sum(slot.worker.waiting for slot in list(self.models.slots.values()) if slot.worker is not None)

    async def pick(self, request: Request, body) -> Picked:
        """404 for a model not served here, 400 for a parameter this server would otherwise ignore; then the model
        (the variant, for the A/B group), loaded and held until the response is over."""
        if isinstance(body, _SamplingBody):
            self.check_request(body)
        public = getattr(body, "model", None) or self.ids[0]
        variant = None
        if public == self.group:
            sticky = request.headers.get(CONVERSATION_HEADER) or getattr(body, "user", None)
            variant = pick(self.variants, self.group, sticky)
            request.scope[SCOPE_HEADERS] = {VARIANT_HEADER: variant.name}
        name = variant.model if variant else public
        slot = self.models.held_now(name)
        if slot is None:  # not loaded, or waiting for room: load in a thread, the event loop keeps serving
            loading = asyncio.get_running_loop().run_in_executor(None, self.models.acquire, name)
            try:
                slot = await asyncio.shield(loading)
            except asyncio.CancelledError:  # the request is gone; the load goes on, and lets go when done
                loading.add_done_callback(lambda f: None if f.cancelled() or f.exception() else self.models.release(f.result()))
                raise
            except ModelLoadFailed:
                raise APIError(500, f"The model {name!r} failed to load; see the server's log.", type="server_error",
                               code="model_load_failed") from None  # fmt: skip
        request.scope.setdefault(SCOPE_FINISH, []).append(lambda: self.models.release(slot))
        return Picked(slot, public, variant, self.group if variant else None)

    # request -> job
    def sampling(self, model: Picked, body, prompt_len: int, max_tokens: int | None) -> Sampling:
        limit = self.serve.max_tokens_limit
        room = model.engine.context_length - prompt_len
        if room < 1:
            raise APIError(
                400,
                f"The prompt is {prompt_len} tokens; the context window is {model.engine.context_length}.",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, "max_tokens must be at least 1.", param="max_tokens", code="invalid_value")
        if max_tokens is not None and max_tokens > limit:
            raise APIError(400, f"max_tokens may be at most {limit} on this server.", param="max_tokens",
                           code="invalid_value")  # fmt: skip
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stop):
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} strings of up to {MAX_STOP_LENGTH} characters.",
                           param="stop", code="invalid_value")  # fmt: skip
        return Sampling(
            max_tokens=min(max_tokens or limit, room),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            seed=body.seed,
            stop=tuple(stop),
            ignore_eos=getattr(body, "ignore_eos", False),
        )

    def check_request(self, body: _SamplingBody) -> None:
        """404 for a model this server does not serve; 400 for a parameter it would otherwise silently ignore."""
        if body.model is not None and body.model not in self.ids:
            served = ", ".join(repr(i) for i in self.ids)
            raise APIError(404, f"The model {body.model[:200]!r} is not served here; this server serves "
                                f"{served} (see /v1/models).", param="model",
                           code="model_not_found")  # fmt: skip
        for name, accepted in body.not_supported.items():
            value = getattr(body, name)
            if value is None or value in accepted:
                continue
            allowed = f" (or send {' or '.join(json.dumps(ok) for ok in accepted)})" if accepted else ""
            raise APIError(400, f"{name} is not supported by this server; leave it out{allowed}.", param=name,
                           code="unsupported_parameter")  # fmt: skip

    def chat_prompt(self, model: Picked, messages: list[dict[str, Any]]) -> list[int]:
        engine = model.engine
        if not messages:
            raise APIError(400, "messages must not be empty.", param="messages", code="invalid_value")
        if not engine.chat_template:
            raise APIError(400, "This model has no chat template; use /v1/completions with a raw prompt.",
                           param="messages", code="no_chat_template")  # fmt: skip
        try:
            text = render(engine.chat_template, messages, engine.bos_token, engine.eos_token)
        except UsageError as exc:
            raise APIError(400, exc.message, param="messages", code="invalid_value") from None
        return engine.tokenize(text, chat=True)

    def retrieve(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The messages with serve.retrieval's passages put into the last user turn, and their sources."""
        if self.retriever is None:
            return messages, []
        from llmforge.retrieval import augment

        messages, passages = augment(messages, self.retriever)
        return messages, [p.to_dict(n) for n, p in enumerate(passages, 1)]

    def text_prompt(self, model: Picked, prompt: str | list[str]) -> list[int]:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "prompt: send one string (batches are not supported).", param="prompt")
            prompt = prompt[0]
        ids = model.engine.tokenize(prompt, chat=False)
        if not ids:
            raise APIError(400, "prompt must not be empty.", param="prompt", code="invalid_value")
        return ids

    def events(self, request: Request, prompt: list[int], sampling: Sampling, model: Picked, *,
               watch: bool = True) -> Events:  # fmt: skip
        """Queue the job on the picked model's worker now (503 if its queue is full) and return its events. `watch`:
        check every POLL_SECONDS that the client is still there (a streamed response needs no watching: Starlette
        cancels it when the client goes away)."""
        events = Events(request, asyncio.get_running_loop(), self.metrics, watch, model)
        events.job = Job(prompt, sampling, events.emit)
        try:
            model.worker.submit(events.job)
        except QueueFull:
            raise APIError(503, "The server is busy; retry shortly.", type="server_error", code="queue_full") from None
        return events

    def account(self, started: float, first: float | None, result: Result) -> None:
        if first is not None:
            self.metrics.first_token(first - started)

    def record(self, messages, answer: str, result: Result, started: float, route: str, model: Picked,
               ident: str) -> None:  # fmt: skip
        if self.log is None or result.finish_reason not in ("stop", "length"):
            return
        metadata = {
            "id": ident,  # what POST /v1/feedback names
            "model": model.engine.name,
            "engine": model.engine.engine,
            "route": route,
            "created": int(time.time()),
            "latency_s": round(time.perf_counter() - started, 4),
            "finish_reason": result.finish_reason,
            "usage": usage(result),
        }
        if model.variant is not None:  # what `llmforge serve report` compares
            metadata.update(variant_group=model.group, variant=model.variant.name)
        self.log.record(messages, answer, metadata)


class Events:
    """One job's events, from the engine thread to its handler: ("text", str) ... then ("done", Result).

    The engine thread appends to a deque and wakes the event loop only when no wake-up is already on its way, so
    the tokens produced while the loop was busy arrive together, for one write, and each token costs no queue, task
    or timer of its own. Iterating yields the events gathered since the last batch, as a list."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop, metrics: Metrics, watch: bool,
                 model: Picked | None = None):  # fmt: skip
        self.request = request
        self.job: Job | None = None
        self._loop = loop
        self._metrics = metrics
        self._model = model  # for the per-variant metrics of an A/B variant's answer
        self._watch = watch
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake_sent = False  # a wake-up is scheduled on the loop and has not run yet
        self._waiter: asyncio.Future | None = None
        self._ticker: asyncio.TimerHandle | None = None

    def emit(self, kind: str, value: Any) -> None:
        """Called in the engine thread."""
        if kind == "done":  # counted here: a client that left never reads this event
            self._metrics.tokens(value.prompt_tokens, value.completion_tokens, value.finish_reason == "cancelled",
                                 value.cached_tokens)  # fmt: skip
            model = self._model
            if model is not None and model.variant is not None:
                self._metrics.variant(model.group, model.variant.name, model.slot.name, value.finish_reason,
                                      value.completion_tokens, time.perf_counter() - model.started)  # fmt: skip
        self._queue.append((kind, value))
        if not self._wake_sent:
            self._wake_sent = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed (server shutting down)
                pass

    def _wake(self) -> None:
        # clear the flag before the handler drains the deque: an event appended after this line sends a new wake-up
        self._wake_sent = False
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aiter__(self):
        loop = self._loop
        checked = loop.time()
        # one timer a request, not one a wait: it wakes the handler every POLL_SECONDS to look at the client
        if self._watch:
            self._ticker = loop.call_later(POLL_SECONDS, self._tick)
        try:
            while True:
                if not self._queue:
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                # a busy generation fills the queue without pause: check the client by the clock
                if self._watch and loop.time() - checked >= POLL_SECONDS:
                    checked = loop.time()
                    if await self.request.is_disconnected():
                        return
                batch = []
                while self._queue:
                    batch.append(self._queue.popleft())
                if batch:
                    yield batch
                    if batch[-1][0] == "done":
                        return
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
            self.job.cancel()  # a no-op once done; otherwise the worker skips or stops this job

    def _tick(self) -> None:
        self._ticker = self._loop.call_later(POLL_SECONDS, self._tick)
        self._wake_waiter()


def usage(result: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"
_TEXT = "\x00text\x00"  # stands for a text delta in a chunk template; no JSON string we send holds it
_encode_text = json.encoder.encode_basestring  # json.dumps of one str with ensure_ascii=False, minus the call overhead


class TextChunks:
    """The SSE event of a text delta, built as the JSON dump of `template` (which holds _TEXT where the delta goes)
    would be, from a prefix and suffix encoded once per request: per token only the delta is encoded."""

    def __init__(self, template: dict[str, Any]):
        before, mark, after = sse(template).partition(json.dumps(_TEXT, ensure_ascii=False).encode())
        assert mark, "the template holds no _TEXT"
        self._before, self._after = before, after

    def __call__(self, text: str) -> bytes:
        return self._before + _encode_text(text).encode() + self._after


def sse_response(
    server: Server,
    events: Events,
    started: float,
    text_chunk: TextChunks,
    closing: Callable[[Result], list[dict[str, Any]]],
    *,
    opening: Sequence[dict[str, Any]] = (),
    finished: Callable[[str, Result], None] | None = None,
) -> StreamingResponse:
    """The one server-sent-events loop of every streaming route: `opening` events, a `text_chunk` per text delta,
    then on success `closing(result)`'s events, `finished(text, result)` and [DONE]; on an engine error an
    error event instead; nothing more for a cancelled job. The client going away cancels the job (Events)."""

    async def body():
        if opening:
            yield b"".join(sse(event) for event in opening)
        first = None
        parts: list[str] = []
        async for batch in events:
            out = []
            for kind, value in batch:
                if kind == "text":
                    out.append(text_chunk(value))
                    parts.append(value)
                    continue
                first = first or (time.perf_counter() if out else None)
                server.account(started, first, value)
                if value.finish_reason == "error":
                    out.append(sse(error_body("Generation failed.", "server_error", code="engine_error")))
                elif value.finish_reason != "cancelled":
                    out.extend(sse(event) for event in closing(value))
                    # before [DONE] leaves: a client may send feedback on the answer as soon as it has it all
                    if finished is not None and value.finish_reason in ("stop", "length"):
                        finished("".join(parts), value)
                    out.append(SSE_DONE)
                if out:
                    yield b"".join(out)
                return
            if out:
                first = first or time.perf_counter()
                yield b"".join(out)

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


async def collect(events: Events, server: Server, started: float) -> tuple[str, Result]:
    parts: list[str] = []
    first = None
    result = Result("cancelled", 0, 0)
    async for batch in events:
        for kind, value in batch:
            if kind == "text":
                first = first or time.perf_counter()
                parts.append(value)
            else:
                result = value
    server.account(started, first, result)
    if result.finish_reason == "error":
        raise APIError(500, "Generation failed.", type="server_error", code="engine_error")
    return "".join(parts), result


# ---------------------------------------------------------------- routes (the Server is request.app.state.server)

router = APIRouter()
GENERATION_RESPONSES = {**_STREAMED, **_documented(400, 401, 404, 413, 429, 500, 503)}


def _server(request: Request) -> Server:
    return request.app.state.server


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def chat_page():
    page = resources.files("llmforge.serving").joinpath("static/chat.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


@router.get("/health")
async def health(request: Request):
    server = _server(request)
    models = server.models
    default = models.slots[models.default].target
    return {"status": "ok", "model": server.ids[0], "engine": default.engine, "queued": server.waiting}


@router.get("/metrics", response_class=PlainTextResponse, responses=_documented(401, 429, text_route=True))
async def metrics(request: Request):
    server = _server(request)
    models = server.models
    loaded = models.loaded() if len(models.slots) > 1 else None  # one model: the single-model text as before
    return PlainTextResponse(
        server.metrics.render(server.waiting, loaded=loaded, loads=models.loads, unloads=models.unloads),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


@router.get("/v1/models", responses=_documented(401, 429))
async def list_models(request: Request):
    server = _server(request)
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": server.created, "owned_by": "llmforge"} for i in server.ids],
    }


async def chat(request: Request, body: ChatRequest, route: str):
    server = _server(request)
    started = time.perf_counter()
    model = await server.pick(request, body)
    messages = plain_messages(body.messages)
    # off the event loop: a search may run an embedding model. `sources` is an extension field of the answer
    # (on the first chunk when streaming); OpenAI clients ignore it, the chat page and `llmforge chat` show it.
    messages, sources = await asyncio.to_thread(server.retrieve, messages) if server.retriever else (messages, [])
    extra = {"sources": sources} if sources else {}
    prompt = server.chat_prompt(model, messages)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    sampling = server.sampling(model, body, len(prompt), max_tokens)
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    head = {"id": ident, "created": int(time.time()), "model": model.public}
    events = server.events(request, prompt, sampling, model, watch=not body.stream)

    if body.stream:
        chunk = {**head, "object": "chat.completion.chunk"}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def closing(result: Result) -> list[dict[str, Any]]:
            end = [{**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                          "finish_reason": result.finish_reason}]}]  # fmt: skip
            return end + [{**chunk, "choices": [], "usage": usage(result)}] if include_usage else end

        return sse_response(
            server, events, started,
            TextChunks({**chunk, "choices": [{"index": 0, "delta": {"content": _TEXT}, "logprobs": None,
                                              "finish_reason": None}]}),
            closing,
            opening=[{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}], **extra}],
            finished=lambda text, result: server.record(messages, text, result, started, route, model, ident),
        )  # fmt: skip

    text, result = await collect(events, server, started)
    server.record(messages, text, result, started, route, model, ident)
    return {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": result.finish_reason}],  # fmt: skip
        "usage": usage(result),
        **extra,
    }


@router.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
async def chat_completions(request: Request, body: ChatRequest):
    return await chat(request, body, "/v1/chat/completions")


@router.post("/chat", responses=GENERATION_RESPONSES)
async def simple_chat(request: Request, body: ChatRequest):
    """The same as /v1/chat/completions, for scripts that want a short path."""
    return await chat(request, body, "/chat")


@router.post("/v1/completions", responses=GENERATION_RESPONSES)
async def completions(request: Request, body: CompletionRequest):
    server = _server(request)
    started = time.perf_counter()
    model = await server.pick(request, body)
    prompt = server.text_prompt(model, body.prompt)
    sampling = server.sampling(model, body, len(prompt), body.max_tokens)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model.public}  # fmt: skip
    events = server.events(request, prompt, sampling, model, watch=not body.stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def closing(result: Result) -> list[dict[str, Any]]:
            end = [{**head, "choices": [{"index": 0, "text": "", "logprobs": None,
                                         "finish_reason": result.finish_reason}]}]  # fmt: skip
            return end + [{**head, "choices": [], "usage": usage(result)}] if include_usage else end

        text_chunk = TextChunks({**head, "choices": [{"index": 0, "text": _TEXT, "logprobs": None,
                                                      "finish_reason": None}]})  # fmt: skip
        return sse_response(server, events, started, text_chunk, closing)
    text, result = await collect(events, server, started)
    return {**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": result.finish_reason}], "usage": usage(result)}  # fmt: skip


@router.post("/generate", responses={**_STREAMED, **_documented(400, 401, 413, 429, 500, 503)})
async def generate(request: Request, body: GenerateRequest):
    """{prompt, max_tokens, temperature, stream} -> {text}; streaming sends {"text": delta} events."""
    server = _server(request)
    started = time.perf_counter()
    model = await server.pick(request, body)
    prompt = server.text_prompt(model, body.prompt)
    sampling = server.sampling(model, body, len(prompt), body.max_tokens)
    events = server.events(request, prompt, sampling, model, watch=not body.stream)
    if body.stream:

        def closing(result: Result) -> list[dict[str, Any]]:
            return [{"text": "", "finish_reason": result.finish_reason, "usage": usage(result)}]

        return sse_response(server, events, started, TextChunks({"text": _TEXT}), closing)
    text, result = await collect(events, server, started)
    return {"text": text, "finish_reason": result.finish_reason, "usage": usage(result)}


# /v1/feedback's error answers, for the schema
FEEDBACK = _documented(400, 401, 404, 413, 429, 500)
FEEDBACK[404] = {**FEEDBACK[404], "description": "No logged answer has this id, or this server does not log "
                                                 "conversations (serve.log_conversations)"}  # fmt: skip
FEEDBACK[500] = {**FEEDBACK[500], "description": "The feedback log could not be written"}


async def feedback(request: Request, body: FeedbackRequest):
    """A user's thumbs up or down (and comment) on an answer, by the id of its chat completion: appended to the
    feedback log beside the conversation log, read by `llmforge serve report`, counted in /metrics."""
    server = _server(request)
    if server.feedback_log is None:
        raise APIError(404, "This server does not log conversations, so there is no answer to attach feedback to; "
                            "serve with serve.log_conversations: true.", param="id",
                       code="conversation_log_off")  # fmt: skip
    known, variant = await asyncio.to_thread(server.log.answer, body.id)  # the first lookup reads the logs
    if not known:
        raise APIError(404, f"No logged answer has the id {body.id[:200]!r}; send the id of a chat completion this "
                            "server answered (with serve.log_conversations on).", param="id",
                       code="conversation_not_found")  # fmt: skip
    thumb = "up" if body.score in (1, "up") else "down"
    record = {"id": body.id, "feedback": thumb, "created": int(time.time())}
    if body.comment:
        record["comment"] = body.comment
    if not server.feedback_log.append(record):
        raise APIError(500, "The feedback could not be written; see the server's log.", type="server_error",
                       code="feedback_not_written")  # fmt: skip
    server.metrics.feedback(thumb, variant)
    return {"object": "feedback", "id": body.id, "feedback": thumb}


router.add_api_route("/v1/feedback", feedback, methods=["POST"], response_model=FeedbackAnswer, responses=FEEDBACK)


# ---------------------------------------------------------------- errors as OpenAI answers them


async def _api_error(request: Request, exc: APIError):
    return exc.response({"Retry-After": "1"} if exc.status == 503 else None)


async def _invalid(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body("The request body is not valid JSON.", code="invalid_json"), 400)
    if first.get("type") == "invalid_unicode":  # the message names the field already
        return JSONResponse(error_body(first["msg"], param=first["ctx"]["where"], code="invalid_value"), 400)
    where = ".".join(loc) or "body"
    message = f"{where}: {first.get('msg', 'invalid value')}"
    return JSONResponse(error_body(message, param=".".join(loc) or None, code="invalid_value"), 400)


async def _http(request: Request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), code=code), exc.status_code, headers=exc.headers)


async def _bug(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body("Internal server error.", "server_error", code="internal_error"), 500)


def _openapi(app: FastAPI) -> dict[str, Any]:
    # FastAPI documents a 422 for every route with a body; bad bodies get a 400 here, as OpenAI answers them
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(models: Models, variants: list[Variant], serve, conversations_dir, retriever=None) -> FastAPI:
    server = Server(models, variants, serve, conversations_dir, retriever)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models.start()
        try:
            yield
        finally:
            models.stop()

    app = FastAPI(title="llmforge", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server
    app.openapi = lambda: _openapi(app)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
    key = serve.api_key.get_secret_value() if serve.api_key is not None else None
    app.add_middleware(
        Gate, metrics=server.metrics, api_key=key, max_body=serve.max_body_bytes, rate_limit=serve.rate_limit
    )
    return app
