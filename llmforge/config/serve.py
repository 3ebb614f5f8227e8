"""`serve:` the OpenAI-compatible HTTP server."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from llmforge.config.base import Section


class ServeConfig(Section):
    engine: Literal["auto", "llamacpp", "transformers"] = Field(
        "auto", description="'auto' serves the newest GGUF export with llama.cpp, else the HF model with transformers."
    )
    model: str | None = Field(None, description="GGUF file, model folder or run to serve (default: the newest export).")
    host: str = Field("127.0.0.1", description="Address to bind. Only loopback unless you say otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_key: SecretStr | None = Field(None, description="Require this Bearer key on every route but /health.")
    log_conversations: bool = Field(False, description="Log each exchange as JSONL in the workspace (feeds `data`).")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    rate_limit: int | None = Field(None, ge=1, description="Requests per minute per key (off when unset).")
