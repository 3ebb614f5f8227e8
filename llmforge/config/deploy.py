"""`deploy:` registering the exported model with Ollama."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmforge.config.base import OllamaName, Section


class DeployConfig(Section):
    name: OllamaName | None = Field(None, description="Ollama model name (default: the project name).")
    host: str | None = Field(None, description="Ollama address (default: $OLLAMA_HOST, else http://127.0.0.1:11434).")
    system: str | None = Field(None, description="System prompt baked into the Modelfile.")
    template: str = Field(
        "auto",
        description="'auto' writes an Ollama TEMPLATE for the model's own chat template, or refuses when Ollama "
        "cannot render it (differences it can name are printed as caveats); a family name, for a model without a "
        "template (refused when the model's own template renders differently); 'embedded' writes no TEMPLATE.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Extra Modelfile PARAMETERs (temperature, top_p, num_ctx, ...)."
    )
    quant: str | None = Field(None, description="Which exported GGUF to deploy (default: the smallest).")
    messages: list[dict[str, str]] = Field(
        default_factory=list,
        description="Few-shot MESSAGEs baked into the model: a list of {role: user|assistant|system, content: text}.",
    )
    license: str | None = Field(None, description="LICENSE text for the Modelfile, or the path of a license file.")
    check: bool = Field(
        True, description="After registering, chat once and fail unless the answer stops cleanly with no leaked tokens."
    )
