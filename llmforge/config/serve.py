"""`serve:` the OpenAI-compatible HTTP server."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmforge.config.base import COUNT_MAX, TOKENS_MAX, Section
from llmforge.config.retrieval import RetrievalConfig
from llmforge.secrets import Secret


class ServeVariant(Section):
    """One arm of an A/B test: requests for serve.variant_group go to `model` in proportion to `weight`."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,100}$", description="The variant's name (in logs, /metrics, a response header)."
    )
    model: str = Field(
        min_length=1, description="A model to serve: its name in serve.models, or anything serve.model accepts."
    )
    weight: float = Field(1.0, ge=0, le=1_000_000, description="Share of the traffic, relative to the others.")


class VllmConfig(Section):
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of the GPU's memory vLLM may take for weights and KV cache."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs to split the model across.")


class ServeConfig(Section):
    engine: Literal["auto", "llamacpp", "transformers", "vllm"] = Field(
        "auto",
        description="'auto' serves the newest GGUF export with llama.cpp, else the HF model with vLLM where vLLM and a "
        "CUDA GPU are present (`llmforge doctor` says why not), else with transformers.",
    )
    model: str | None = Field(
        None,
        description="GGUF file, HF model folder, adapter folder, run name or export name to serve "
        "(default: the newest export, else the newest run, else model.name).",
    )
    models: list[str] = Field(
        [],
        description="Serve several models in one process, chosen by each request's `model` (first: the default); "
        "each entry is what serve.model accepts. Loaded on first use.",
    )
    max_loaded: int | None = Field(
        None, ge=1, le=COUNT_MAX, description="Models loaded at once at most; the least recently used goes first."
    )
    memory_limit_mb: int | None = Field(
        None,
        ge=1,
        le=1 << 30,
        description="Loaded models' weights (file sizes) in MB at most; the least recently used is unloaded first.",
    )
    variants: list[ServeVariant] = Field(
        [],
        description="A/B test, a list of {name, model, weight}: requests for serve.variant_group (the default "
        "model) go to one by weight, the same one per `user` field or X-Conversation-Id header.",
    )
    variant_group: str = Field(
        "ab", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="The model id clients ask for to get a variant."
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
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="Answer from local documents (retrieval-augmented chat)."
    )
    vllm: VllmConfig = Field(
        default_factory=VllmConfig, description="Settings of the vLLM engine (serve.engine: vllm)."
    )

    @model_validator(mode="after")
    def _variants_make_sense(self):
        names = [v.name for v in self.variants]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"variants: the name {twice[0]!r} is used twice; give each variant its own name")
        if self.variants and not any(v.weight > 0 for v in self.variants):
            raise ValueError("variants: every weight is 0; give at least one variant a weight above 0")
        return self
