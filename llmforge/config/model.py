"""`model:` the base model every stage starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmforge.config.base import Section


class ModelConfig(Section):
    name: str | None = Field(
        None, description="Base model: a Hugging Face hub id or a local folder with safetensors weights."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint. Off unless you trust its author."
    )
    chat_template: str = Field(
        "auto",
        description="Chat template: 'auto' uses the tokenizer's own; or a family name "
        "(chatml, llama3, mistral, gemma, phi3, alpaca) when the base model has none.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype when loading the model."
    )
