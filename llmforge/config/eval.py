"""`eval:` which model forms to evaluate, on what data, with which metrics."""

from __future__ import annotations

from pydantic import Field

from llmforge.config.base import Section

ALL_METRICS = ["perplexity", "bleu", "rouge", "chrf", "exact_match", "f1"]


class EvalConfig(Section):
    targets: list[str] = Field(
        default_factory=lambda: ["base", "run"],
        description="What to evaluate: base, run[:NAME], gguf:QUANT, ollama:NAME, a model folder, or http://... endpoint.",
    )
    data: str | None = Field(None, description="Evaluation data (default: the workspace's test split).")
    metrics: list[str] = Field(default_factory=lambda: list(ALL_METRICS), description="Metrics to compute.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many examples.")
    max_new_tokens: int = Field(128, ge=1, description="Generation length for text metrics.")
    seed: int = Field(0, description="Seed for sampling and bootstrap intervals.")
