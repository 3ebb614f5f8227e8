"""Targets behind a server: an Ollama model (official client) and any OpenAI-compatible endpoint (plain HTTP).
They render the chat template themselves, so we send messages: this checks the model exactly as it is served.
Servers give no logits, so these targets have generation metrics only."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from llmforge.errors import LlmforgeError, require_extra

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip() or type(exc).__name__


class HTTPEngine:
    """POST {base}/chat/completions; the model is ?model=NAME in the target, else the endpoint's first model.
    A busy server (429/503) is retried after its Retry-After; anything else fails the target at once."""

    RETRIES = 3  # a busy server's requests, not a broken one's: 429/503 only

    def __init__(self, base_url: str, model: str | None, *, timeout: float, api_key_env: str | None = None):
        from llmforge.openai_client import Client

        self.base_url = base_url
        self.timeout = timeout
        api_key = os.environ.get(api_key_env) if api_key_env else None
        self.client = Client(base_url, api_key=api_key, timeout=timeout, retries=self.RETRIES)
        self.model = model or self._first_model() or "default"

    def _failed(self, exc, path: str) -> LlmforgeError:
        if exc.status is not None:
            return LlmforgeError(f"{self.base_url}{path} answered HTTP {exc.status}: {exc.body[:200]}",
                                 hint="check the endpoint URL, its model name (?model=NAME) and API key")
        if exc.problem.startswith("unexpected reply"):
            return LlmforgeError(f"{self.base_url}{path}: no choices[0].message in the reply")
        return LlmforgeError(f"cannot reach {self.base_url} ({exc.problem})",
                             hint="is the server running? check the host and port")

    def _first_model(self) -> str | None:
        from llmforge.openai_client import EndpointError

        try:
            models = self.client.get_json("/models").get("data") or []
        except EndpointError as exc:
            if exc.status is None and not exc.problem.startswith("unexpected reply"):
                raise self._failed(exc, "/models") from None
            return None  # some servers have no /models; the request itself will tell
        return models[0].get("id") if models else None

    def generate(self, prompt: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int) -> dict:
        from llmforge.openai_client import EndpointError

        started = time.perf_counter()
        try:
            out = self.client.chat_completion({
                "model": self.model, "messages": prompt, "max_tokens": max_new_tokens, "temperature": temperature,
                "seed": seed,
            })
        except EndpointError as exc:
            raise self._failed(exc, "/chat/completions") from None
        seconds = time.perf_counter() - started
        text = out["choices"][0]["message"].get("content") or ""
        tokens = (out.get("usage") or {}).get("completion_tokens")
        return {"text": text.strip(), "new_tokens": int(tokens) if tokens is not None else None, "seconds": seconds}

    def close(self) -> None:
        pass


class OllamaEngine:
    def __init__(self, host: str, model: str, *, timeout: float):
        require_extra("evaluating an Ollama model", "deploy", "ollama")
        from llmforge import ollama_client

        self.host, self.model = host, model
        self.client = ollama_client.connect(host, timeout=timeout)
        self.digest = None
        try:
            listed = self.client.list()
        except (ConnectionError, OSError) as exc:
            raise LlmforgeError(f"cannot reach Ollama at {host} ({_reason(exc)})",
                                hint="start it (ollama serve) or set OLLAMA_HOST / eval.ollama_host") from None
        except Exception as exc:  # httpx errors and ollama.ResponseError
            raise LlmforgeError(f"Ollama at {host} failed: {_reason(exc)}",
                                hint="start it (ollama serve) or set OLLAMA_HOST / eval.ollama_host") from None
        names = {}
        for item in getattr(listed, "models", None) or []:
            name = getattr(item, "model", None) or getattr(item, "name", None)
            if name:
                names[name] = getattr(item, "digest", None)
        wanted = [model, f"{model}:latest"]
        found = next((n for n in wanted if n in names), None)
        if found is None:
            raise LlmforgeError(f"Ollama at {host} has no model {model!r}",
                                hint=f"deploy it first (llmforge deploy ollama --name {model}); has: "
                                + (", ".join(sorted(names)) or "none"))
        self.digest = names[found]

    def generate(self, prompt: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int) -> dict:
        # repeat_penalty 1.0: Ollama's default (1.1) would decode differently from every other target
        options: dict[str, Any] = {"temperature": temperature, "seed": seed, "num_predict": max_new_tokens,
                                   "repeat_penalty": 1.0}
        if temperature == 0:
            options["top_k"] = 1
        started = time.perf_counter()
        try:
            out = self.client.chat(model=self.model, messages=prompt, options=options, stream=False)
        except Exception as exc:
            raise LlmforgeError(f"Ollama at {self.host}, model {self.model}: {_reason(exc)}") from None
        seconds = time.perf_counter() - started
        text = (out.message.content or "") if getattr(out, "message", None) else ""
        return {"text": text.strip(), "new_tokens": getattr(out, "eval_count", None), "seconds": seconds}

    def close(self) -> None:
        pass
