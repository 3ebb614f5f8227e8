"""Targets behind a server: an Ollama model (official client) and any OpenAI-compatible endpoint (plain HTTP).
They render the chat template themselves, so we send messages: this checks the model exactly as it is served.
Servers give no logits, so these targets have generation metrics only."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from llmforge.errors import LlmforgeError, require_extra

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip() or type(exc).__name__


class HTTPEngine:
    """POST {base}/chat/completions; the model is ?model=NAME in the target, else the endpoint's first model."""

    def __init__(self, base_url: str, model: str | None, *, timeout: float, api_key_env: str | None = None):
        self.base_url = base_url
        self.timeout = timeout
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.model = model or self._first_model() or "default"

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise LlmforgeError(f"{self.base_url}{path} answered HTTP {exc.code}: {detail}",
                                hint="check the endpoint URL, its model name (?model=NAME) and API key") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LlmforgeError(f"cannot reach {self.base_url} ({_reason(exc)})",
                                hint="is the server running? check the host and port") from None
        except ValueError as exc:
            raise LlmforgeError(f"{self.base_url}{path} did not answer JSON ({exc})") from None

    def _first_model(self) -> str | None:
        try:
            models = self._request("/models").get("data") or []
        except LlmforgeError as exc:
            if "cannot reach" in exc.message:
                raise
            return None  # some servers have no /models; the request itself will tell
        return models[0].get("id") if models else None

    def generate(self, prompt: list[dict[str, str]], max_new_tokens: int, temperature: float, seed: int) -> dict:
        started = time.perf_counter()
        out = self._request("/chat/completions", {
            "model": self.model, "messages": prompt, "max_tokens": max_new_tokens, "temperature": temperature,
            "seed": seed, "stream": False,
        })
        seconds = time.perf_counter() - started
        try:
            text = out["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise LlmforgeError(f"{self.base_url}/chat/completions: no choices[0].message in the reply") from None
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
