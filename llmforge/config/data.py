"""`data:` where the training data comes from and how it is cleaned and split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmforge.config.base import Section

DataFormat = Literal["auto", "alpaca", "prompt_response", "sharegpt", "messages", "preference", "text"]


class SplitConfig(Section):
    train: float = Field(0.9, ge=0, le=1, description="Share of records for training.")
    val: float = Field(0.05, ge=0, le=1, description="Share of records for validation (eval during training).")
    test: float = Field(0.05, ge=0, le=1, description="Share of records held out for `llmforge eval`.")
    seed: int = Field(42, description="Seed for the deterministic split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must add up to 1 (they add up to {total:g})")
        return self


class DedupeConfig(Section):
    exact: bool = Field(True, description="Drop exact duplicates (after normalization).")
    near: bool = Field(True, description="Drop near duplicates (MinHash over word shingles).")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity above which records are near duplicates.")


class PiiConfig(Section):
    email: bool = Field(True, description="Replace e-mail addresses with <EMAIL>.")
    url: bool = Field(True, description="Replace URLs with <URL>.")
    phone: bool = Field(True, description="Replace phone numbers with <PHONE>.")
    ip: bool = Field(True, description="Replace IPv4 addresses with <IP>.")
    card: bool = Field(True, description="Replace Luhn-valid card numbers with <CARD>.")


class FilterConfig(Section):
    min_tokens: int = Field(
        1, ge=0, description="Drop records shorter than this (tokens, or characters without a tokenizer)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Drop records longer than this (default: train.max_length when a tokenizer is known)."
    )
    min_answer_chars: int = Field(
        1, ge=0, description="Drop records whose answer is shorter than this many characters."
    )
    blocklist: list[str] = Field(default_factory=list, description="Regular expressions; a matching record is dropped.")


class DataConfig(Section):
    inputs: list[str] = Field(default_factory=list, description="Input files, folders or globs.")
    format: DataFormat = Field("auto", description="Record format; 'auto' detects it per record.")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="'fail' stops at invalid records and writes nothing; 'skip' writes the good ones."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/val/test split.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Duplicate removal.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="Personal data scrubbing.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Length and content filters.")
