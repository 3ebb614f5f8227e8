"""The client side of `llmforge chat`: a conversation with an OpenAI-compatible endpoint or an Ollama model.

The CLI owns the prompt and the printing; this module keeps the history and streams answers as text pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmforge import ollama_client
from llmforge.errors import LlmforgeError, UsageError

DEFAULT_TIMEOUT = 600.0


class ChatSession:
    def __init__(
        self,
        endpoint: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ):
        self.ollama_model = endpoint[len("ollama:") :] if endpoint.startswith("ollama:") else None
        if self.ollama_model == "":
            raise UsageError("ollama: needs a model name", hint="e.g. llmforge chat ollama:my-model")
        self.base_url = None if self.ollama_model else _base_url(endpoint)
        self.api_key = api_key
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system: str | None = system
        self.messages: list[dict[str, str]] = []
        self.sources: list[dict[str, Any]] = []
        self.llmforge = False  # whether the server is `llmforge serve` (it takes feedback), known after connect()
        self.answer_id: str | None = None  # the id of the last complete answer, for feedback

    @property
    def target(self) -> str:
        if self.ollama_model:
            return f"ollama model {self.ollama_model} at {ollama_host()}"
        return self.base_url

    # ------------------------------------------------------------ conversation state
    def reset(self) -> None:
        self.messages = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def conversation(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def save(self, path: Path) -> Path:
        """Write the conversation as one canonical JSON record (refuses to replace an existing file)."""
        from llmforge.atomic import refuse_overwrite, write_json

        path = Path(path)
        refuse_overwrite(path, False, "conversation file")
        return write_json(path, {"messages": self.conversation()})

    # ------------------------------------------------------------ talking
    def connect(self) -> str:
        """Check the endpoint answers; returns the model it serves. Raises LlmforgeError (exit 1) when down."""
        if self.ollama_model:
            client = self._ollama()
            try:
                client.show(self.ollama_model)
            except ConnectionError as exc:
                raise self._down(exc) from None
            except Exception as exc:  # ollama.ResponseError: unknown model
                raise LlmforgeError(f"ollama: {exc}", hint="list models with: ollama list") from None
            return self.ollama_model
        from llmforge.openai_client import EndpointError

        try:
            listed = self._client().get_json("/v1/models", timeout=10)
        except EndpointError as exc:
            if exc.status is None:
                raise self._down(exc.problem) from None
            if exc.status == 401:
                raise LlmforgeError(
                    f"{self.base_url} wants an API key", hint="pass --api-key or set LLMFORGE_SERVE__API_KEY"
                ) from None
            raise LlmforgeError(f"{self.base_url}/v1/models answered HTTP {exc.status}: {exc.body[:200]}") from None
        data = listed.get("data") or [{}]
        self.llmforge = data[0].get("owned_by") == "llmforge"
        self.model = self.model or data[0].get("id")
        return self.model or "unknown"

    def ask(self, text: str, *, sent: str | None = None) -> Iterator[str]:
        """Send a user message; yield the answer in pieces. The exchange enters the history once complete.
        `sent`, when given, is what the model gets instead of `text` (retrieved passages with it); the history keeps
        `text`. The sources a server attached to its answer are in `self.sources` afterwards."""
        self.messages.append({"role": "user", "content": sent or text})
        self.sources = []
        self.answer_id = self._streaming_id = None
        parts: list[str] = []
        try:
            stream = self._ollama_stream() if self.ollama_model else self._openai_stream()
            for piece in stream:
                parts.append(piece)
                yield piece
        except BaseException:
            self.messages.pop()
            raise
        self.messages[-1] = {"role": "user", "content": text}
        self.messages.append({"role": "assistant", "content": "".join(parts)})
        self.answer_id = self._streaming_id

    def feedback(self, good: bool, comment: str | None = None) -> str:
        """Thumbs up or down on the last answer (POST /v1/feedback, `llmforge serve` only); returns the answer's id.
        Raises UsageError when there is nothing to rate here, LlmforgeError when the server refuses."""
        if not self.llmforge:
            raise UsageError(f"{self.target} is not llmforge serve; only llmforge serve takes feedback on answers")
        if self.answer_id is None:
            raise UsageError("no answer to rate yet", hint="ask something first; /good and /bad rate the last answer")
        from llmforge.openai_client import EndpointError

        body: dict[str, Any] = {"id": self.answer_id, "score": "up" if good else "down"}
        if comment:
            body["comment"] = comment
        url = self.base_url + "/v1/feedback"
        try:
            self._client().post_json("/v1/feedback", body, timeout=30)
        except EndpointError as exc:
            if exc.status is None:
                raise self._down(exc.problem) from None
            raise LlmforgeError(f"{url} answered HTTP {exc.status}: {exc.detail}") from None
        return self.answer_id

    def _openai_stream(self) -> Iterator[str]:
        from llmforge.openai_client import EndpointError

        body: dict[str, Any] = {"messages": self.conversation()}
        for key in ("model", "temperature", "max_tokens"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        url = self.base_url + "/v1/chat/completions"
        try:
            for chunk in self._client().stream("/v1/chat/completions", body):
                self._streaming_id = self._streaming_id or chunk.get("id")
                if "error" in chunk:
                    raise LlmforgeError(f"{url}: {chunk['error'].get('message')}")
                if chunk.get("sources"):  # serve.retrieval's extension field, on the first chunk
                    self.sources = chunk["sources"]
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        except EndpointError as exc:
            if exc.status is None:
                raise self._down(exc.problem) from None
            raise LlmforgeError(f"{url} answered HTTP {exc.status}: {exc.detail}") from None
        except OSError as exc:  # the connection dropped mid-answer
            raise self._down(str(exc)) from None

    def _ollama_stream(self) -> Iterator[str]:
        options = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["num_predict"] = self.max_tokens
        try:
            for chunk in self._ollama().chat(
                self.ollama_model, messages=self.conversation(), stream=True, options=options or None
            ):
                piece = chunk["message"]["content"]
                if piece:
                    yield piece
        except ConnectionError as exc:
            raise self._down(exc) from None

    def _ollama(self):
        from llmforge.errors import require_extra

        require_extra("llmforge chat ollama:NAME", "deploy", "ollama")
        return ollama_client.connect(ollama_host())

    def _client(self):
        from llmforge.openai_client import Client

        # a busy server (429, or llmforge serve's full queue: 503) says when to come back: wait that long, twice
        return Client(self.base_url, api_key=self.api_key, timeout=DEFAULT_TIMEOUT, retries=2)

    def _down(self, exc: Exception | str) -> LlmforgeError:
        hint = "start Ollama (ollama serve) or set OLLAMA_HOST" if self.ollama_model else "start it: llmforge serve"
        return LlmforgeError(f"cannot reach {self.target}: {exc}", hint=hint)


def ollama_host() -> str:
    return ollama_client.resolve_host()


def _base_url(endpoint: str) -> str:
    url = endpoint.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    for suffix in ("/v1/chat/completions", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url

