"""`data:` where the training data comes from and how it is cleaned, split, and generated from documents."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmforge.config.base import CHARS_MAX, COUNT_MAX, SEED_MAX, TOKENS_MAX, FolderName, Section
from llmforge.extensions import is_entry
from llmforge.secrets import Secret

# The ISO 639-1 codes the language detector (py3langid's bundled model) can answer with; kept here so the config
# stays light. tests/unit/test_data_languages.py checks the list against the model.
LANGUAGE_CODES = frozenset(
    "af am an ar as az ba be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr fy ga gd gl gu ha he hi hr "
    "ht hu hy id ig is it ja jv ka kk km kn ko ku ky la lb lg ln lo lt lv mg mk ml mn mr ms mt my ne nl nn no oc om "
    "or pa pl ps pt qu ro ru rw sa se si sk sl sn so sq sr st sv sw ta te tg th tk tl tr tt ug uk ur uz vi vo wa xh "
    "yo zh zu".split()
)

DataFormat = Literal["auto", "alpaca", "prompt_response", "sharegpt", "messages", "preference", "kto", "text"]


class SplitConfig(Section):
    train: float = Field(0.9, ge=0, le=1, description="Share of records for training.")
    val: float = Field(0.05, ge=0, le=1, description="Share of records for validation (eval during training).")
    test: float = Field(0.05, ge=0, le=1, description="Share of records held out for `llmforge eval`.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for the deterministic split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must add up to 1 (they add up to {total:g})")
        return self


class DedupeConfig(Section):
    exact: bool = Field(True, description="Drop exact duplicates (after normalization).")
    near: bool = Field(True, description="Find near duplicates (MinHash over word shingles).")
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity above which records are near duplicates.")
    near_action: Literal["drop", "group"] = Field(
        "drop",
        description="'drop' keeps the first record of each near-duplicate cluster; 'group' keeps them all but puts "
        "each cluster in a single split. Either way clusters never straddle splits.",
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: finer similarity, slower).")
    shingle: int = Field(3, ge=1, le=16, description="Words per shingle for near-duplicate detection.")


class PiiConfig(Section):
    email: bool = Field(True, description="Replace e-mail addresses with <EMAIL>.")
    url: bool = Field(True, description="Replace URLs with <URL>.")
    phone: bool = Field(True, description="Replace phone numbers with <PHONE>.")
    ip: bool = Field(True, description="Replace IPv4 addresses with <IP>.")
    card: bool = Field(True, description="Replace Luhn-valid card numbers with <CARD>.")


class FilterConfig(Section):
    min_tokens: int = Field(
        1, ge=0, le=TOKENS_MAX, description="Drop records shorter than this (tokens, or characters without a tokenizer)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=TOKENS_MAX,
        description="Drop records longer than this (tokens of the rendered chat template when model.name is a "
        "local model folder, else characters); unset: no limit.",
    )
    min_answer_chars: int = Field(
        1, ge=0, le=CHARS_MAX, description="Drop records whose answer (shortest assistant turn) is shorter than this many characters."
    )
    blocklist: list[str] = Field(default_factory=list, description="Regular expressions; a matching record is dropped.")


class GenerateConfig(Section):
    endpoint: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1 (Ollama) or llmforge serve's."
    )
    model: str | None = Field(None, description="Model name the endpoint serves.")
    api_key: Secret | None = Field(
        None, description="Bearer key for the endpoint (masked in every output); prefer the env var LLMFORGE_DATA__GENERATE__API_KEY."
    )
    output: str | None = Field(
        None, description="Where to write the pairs (default: <workspace>/data/generated.jsonl)."
    )
    pairs_per_chunk: int = Field(3, ge=1, le=50, description="Question/answer pairs asked for per chunk.")
    chunk_chars: int = Field(
        2000, ge=200, le=CHARS_MAX, description="Target chunk size in characters (split on headings, paragraphs)."
    )
    chunk_overlap: int = Field(
        200, ge=0, le=CHARS_MAX, description="Characters of the previous chunk repeated at the start of the next."
    )
    temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature for generation.")
    max_tokens: int = Field(1024, ge=16, le=TOKENS_MAX, description="Most tokens the endpoint may answer with per chunk.")
    timeout: float = Field(120.0, gt=0, description="Seconds to wait for one answer.")
    retries: int = Field(3, ge=0, le=20, description="Retries of a failed request (timeouts, 429, 5xx), with backoff.")
    backoff: float = Field(1.0, ge=0, description="First retry delay in seconds; doubles each retry.")
    min_grounding: float = Field(
        0.5, ge=0, le=1, description="Share of an answer's content words that must appear in its chunk; below: dropped."
    )


class AugmentConfig(Section):
    """`data augment`: talks to the endpoint, model and key of data.generate (with its timeout and retries)."""

    paraphrases: int = Field(0, ge=0, le=20, description="Paraphrases asked for per train record's user question.")
    refusals: int = Field(0, ge=0, le=100_000, description="Out-of-scope questions with a refusal answer to add.")
    scope: str | None = Field(
        None, description="What the assistant is for, e.g. 'questions about the Acme router'; needed for refusals."
    )
    refusal_style: str = Field(
        "a short, polite refusal that says what you can help with instead",
        description="How the refusal answers should sound (put in the prompt).",
    )
    output: str | None = Field(
        None, description="Dataset folder to write (default: <workspace>/data/augmented); train.data can point at it."
    )
    batch: int = Field(10, ge=1, le=50, description="Refusal examples asked for per request.")
    progress_every: int = Field(10, ge=1, le=COUNT_MAX, description="A progress line every this many requests (plain output).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature: some variety helps here.")
    max_tokens: int = Field(1024, ge=16, le=TOKENS_MAX, description="Most tokens the endpoint may answer with.")


class HubConfig(Section):
    split: FolderName = Field("train", description="Split of a Hugging Face dataset input, e.g. train_sft.")
    subset: FolderName | None = Field(None, description="Configuration (subset) of a Hugging Face dataset input.")
    revision: str | None = Field(None, description="Revision (branch, tag or commit) of a Hugging Face dataset input.")


class DataConfig(Section):
    inputs: list[str] = Field(
        default_factory=list,
        description="Input files, folders or globs, or Hugging Face dataset ids (owner/name, or hf:owner/name).",
    )
    format: DataFormat = Field("auto", description="Record format; 'auto' detects it per record.")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="'fail' stops at invalid records and writes nothing; 'skip' writes the good ones."
    )
    max_record_chars: int = Field(
        1_000_000,
        ge=100,
        le=CHARS_MAX,
        description="A record longer than this is invalid (absurd length); a .txt/.md document longer than this "
        "becomes several records, cut at paragraph breaks.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Processes that parse, validate, clean and hash JSONL records in `data prepare` (default: one "
        "per CPU this process may use, for inputs over 8 MiB; 1 runs in-process). Outputs are the same either way.",
    )
    transforms: list[str] = Field(
        default_factory=list,
        description="Your own functions, as 'mypkg.module:function', applied in order to each normalized record in "
        "`data prepare`: each takes the record dict and returns a record dict (validated again) or None to drop it.",
    )
    languages: list[str] = Field(
        default_factory=list,
        description="Keep only records in these languages (ISO 639-1 codes, e.g. [en, de]), detected on the user "
        "and assistant text; empty: no language detection or filtering.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="Train/val/test split.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Duplicate removal.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="Personal data scrubbing.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Length and content filters.")
    generate: GenerateConfig = Field(
        default_factory=GenerateConfig, description="Question/answer generation from documents (`data generate`)."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="Paraphrases and out-of-scope refusals added to the train split (`data augment`).",
    )
    hub: HubConfig = Field(
        default_factory=HubConfig,
        description="Hugging Face dataset inputs: read with the `datasets` library, from its local cache when "
        "HF_HUB_OFFLINE=1.",
    )

    @field_validator("transforms")
    @classmethod
    def _import_paths(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not is_entry(t)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: expected an import path like 'mypkg.module:function'")
        return value

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, codes: list[str]) -> list[str]:
        for code in codes:
            if code not in LANGUAGE_CODES:
                # 'EN', 'eng', 'english' all start with the code they mean; then the codes that look alike
                lower = code.lower()
                close = [lower[:2]] if lower[:2] in LANGUAGE_CODES else []
                close += difflib.get_close_matches(lower, sorted(LANGUAGE_CODES), n=5, cutoff=0.5)
                close = list(dict.fromkeys(close))[:5]
                hint = f"; close valid codes: {', '.join(close)}" if close else ""
                raise ValueError(f"unknown language code {code!r} (ISO 639-1, lower case, e.g. en, de){hint}")
        return list(dict.fromkeys(codes))
