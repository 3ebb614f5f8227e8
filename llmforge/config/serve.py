"""`serve:` the OpenAI-compatible HTTP server."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmforge.config.base import TOKENS_MAX, Section
from llmforge.secrets import Secret


class ServeConfig(Section):
    engine: Literal["auto", "llamacpp", "transformers"] = Field(
        "auto", description="'auto' serves the newest GGUF export with llama.cpp, else the HF model with transformers."
    )
    model: str | None = Field(
        None,
        description="GGUF file, HF model folder, adapter folder, run name or export name to serve "
        "(default: the newest export, else the newest run, else model.name).",
    )
    host: str = Field("127.0.0.1", description="Address to bind. Only loopback unless you say otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    api_key: Secret | None = Field(
        None, description="Require this Bearer key on every route but /health and the chat page (masked in every output)."
    )
    insecure: bool = Field(
        False,
        description="Serve on a non-loopback host without api_key (refused otherwise): anyone who reaches the port "
        "can use the model.",
    )
    log_conversations: bool = Field(
        False, description="Log each chat exchange as JSONL under <workdir>/serve/conversations (feeds `data`)."
    )
    log_max_bytes: int = Field(
        10_000_000, ge=1024, le=1 << 40, description="Rotate the conversation log to a timestamped file past this many bytes."
    )
    max_tokens_limit: int = Field(4096, ge=1, le=TOKENS_MAX, description="Largest max_tokens a request may ask for.")
    max_body_bytes: int = Field(1_000_000, ge=1024, le=1 << 30, description="Largest request body accepted (413 beyond).")
    max_queue: int = Field(
        256, ge=1, le=1_000_000, description="Requests waiting for the engine at most; more get 503 with Retry-After."
    )
    rate_limit: int | None = Field(None, ge=1, le=1_000_000, description="Requests per minute per key (off when unset).")
    context_length: int | None = Field(
        None, ge=16, le=TOKENS_MAX, description="Context window per request in tokens (default: the model's own, at most 4096)."
    )
    parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests generated at once, in turns of one token (llama.cpp: one batched decode; each holds "
        "its own KV cache of context_length). More wait in arrival order.",
    )
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for the engine (default: the engine's choice).")
