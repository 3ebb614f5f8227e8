"""`export:` GGUF conversion, quantization and verification."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmforge.config.base import Section


class ExportConfig(Section):
    quant: list[str] = Field(
        default_factory=lambda: ["q8_0"],
        description="GGUF types to write: f16, bf16, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, q4_0, q3_k_m, q2_k.",
    )
    verify: bool = Field(True, description="Check each GGUF against the original model (tokenization and logits).")
    converter: Literal["auto", "native", "llama.cpp"] = Field(
        "auto", description="'native' is llmforge's own converter; 'llama.cpp' runs llama.cpp's converter (fetching "
        "llama-cpp-python's source once when no llama_cpp_dir is set); 'auto': native where it covers the "
        "architecture, else llama.cpp's converter if cached or llama_cpp_dir is set."
    )
    llama_cpp_dir: str | None = Field(None, description="A llama.cpp checkout, for architectures we don't convert.")

    @field_validator("quant", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [str(v).strip().lower() for v in value]
        return value
