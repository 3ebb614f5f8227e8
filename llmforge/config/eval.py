"""`eval:` which model forms to evaluate, on what data, with which metrics, and the optional judge."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmforge.config.base import COUNT_MAX, SEED_MAX, TOKENS_MAX, Section
from llmforge.extensions import is_entry

ALL_METRICS = ["perplexity", "bleu", "rouge", "chrf", "exact_match", "f1"]


class JudgeConfig(Section):
    endpoint: str | None = Field(
        None,
        description="OpenAI-compatible endpoint of the judge model (e.g. http://127.0.0.1:8000/v1); unset = no judge.",
    )
    model: str = Field("default", description="Model name sent to the judge endpoint.")
    api_key_env: str = Field(
        "LLMFORGE_JUDGE_API_KEY",
        description="Environment variable holding the judge's API key (keys never live in config files).",
    )
    criteria: list[str] = Field(
        default_factory=lambda: ["relevance", "helpfulness", "accuracy"],
        min_length=1,
        description="Rubric criteria the judge scores for each answer.",
    )
    scale: int = Field(5, ge=2, le=100, description="Each criterion is scored from 1 to this number.")
    max_tokens: int = Field(256, ge=1, le=TOKENS_MAX, description="Longest judge reply in tokens.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one judge reply.")


class EvalConfig(Section):
    targets: list[str] = Field(
        default_factory=lambda: ["base", "run"],
        description="What to evaluate: base, run[:NAME], gguf:QUANT, ollama:NAME, a model folder, "
        "a .gguf file, or an http://... OpenAI-compatible endpoint.",
    )
    data: str | None = Field(None, description="Evaluation data (default: the workspace's test split).")
    metrics: list[str] = Field(default_factory=lambda: list(ALL_METRICS), description="Metrics to compute: built-in names, or your own function as 'mypkg.module:function' "
        "(predictions, references -> float, or a dict of name -> float), reported under the function's name.")
    limit: int | None = Field(None, ge=1, le=COUNT_MAX, description="Evaluate at most this many examples.")
    max_new_tokens: int = Field(128, ge=1, le=TOKENS_MAX, description="Generation length for text metrics.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for sampling and bootstrap intervals.")
    temperature: float = Field(
        0.0, ge=0, description="Sampling temperature for generation; 0 decodes greedily (the default)."
    )
    max_length: int = Field(
        2048, ge=8, le=TOKENS_MAX, description="Longest sequence scored for perplexity; longer ones are cut to this many tokens."
    )
    bootstrap: int = Field(
        1000, ge=0, le=1_000_000, description="Bootstrap resamples for the confidence intervals of deltas against the base (0 = off)."
    )
    cache: bool = Field(
        True, description="Reuse generations cached per (target, prompt, decoding) under eval/cache/."
    )
    ollama_host: str | None = Field(
        None, description="Ollama address for ollama:NAME targets (default: $OLLAMA_HOST, else 127.0.0.1:11434)."
    )
    api_key_env: str = Field(
        "LLMFORGE_EVAL_API_KEY",
        description="Environment variable whose value is sent as the bearer key to http:// targets (if set).",
    )
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one reply from an Ollama or HTTP target.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Optional LLM judge scoring a rubric.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in ALL_METRICS and not is_entry(m)]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}, "
                             "or name your own function as 'mypkg.module:function'")
        return value
