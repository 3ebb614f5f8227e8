"""`serve.retrieval:` answer from local documents: index a folder, put the best passages into the prompt."""

from __future__ import annotations

from pydantic import Field, model_validator

from llmforge.config.base import CHARS_MAX, Section


class RetrievalConfig(Section):
    enabled: bool = Field(
        False, description="Put the passages of `docs` that best match each question into the prompt, with sources."
    )
    docs: str | None = Field(
        None, description="Folder of documents to index (.md, .txt, .rst, .html); `llmforge chat --docs` sets it."
    )
    index: str | None = Field(
        None,
        description="The index file (SQLite; default: <workdir>/retrieval/<folder name>-<hash of its path>.sqlite). "
        "Only files that changed are indexed again.",
    )
    top_k: int = Field(4, ge=1, le=100, description="Passages put into the prompt at most.")
    chunk_chars: int = Field(
        1000, ge=100, le=1_000_000, description="Largest passage in characters (documents split at blank lines)."
    )
    overlap_chars: int = Field(
        150, ge=0, le=1_000_000, description="Characters of the previous passage's end repeated at the next one's start."
    )
    max_context_chars: int = Field(
        6000, ge=100, le=CHARS_MAX, description="Characters of passages put into one prompt at most."
    )
    embedding_model: str | None = Field(
        None,
        description="A local Hugging Face or sentence-transformers model folder: rerank the BM25 candidates by "
        "embedding similarity as well (off when unset; needs the train extra).",
    )

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> RetrievalConfig:
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError(
                f"overlap_chars ({self.overlap_chars}) must be smaller than chunk_chars ({self.chunk_chars})"
            )
        return self
