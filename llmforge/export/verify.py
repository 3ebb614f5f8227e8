"""Prove a GGUF right: llama.cpp must tokenize probe texts exactly like the HF tokenizer and its next-token logits
must agree with HF transformers (fp32) on probe prompts. Figures are returned for the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # top-1 agreement (near-ties excluded) a strict (f32/f16) file must reach
TIE_FRACTION = 0.01

# Digits, unicode, whitespace runs, code, contractions in both cases, CRLF: where pre-tokenizers disagree.
PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "1234567890 3.14159 -42 1,000,000 2026-11-22",
    "café naïve résumé Ünïcödé 日本語 中文 한국어 😀 👍🏽",
    "  two spaces,   three,\n\nnewlines\n\n\n and\ttabs\t\t end   ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "if (a != b && c <= 0) { x[i] += 1; } // done",
    "Don't, I'll, we've, they're; DON'T SHOUT, I'LL",
    "line one\r\nline two\r\n",
    "",
]
PROBE_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Question: what is 12 + 30?\nAnswer:",
]
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello! What's 2+2?"},
    {"role": "assistant", "content": "2+2 is 4."},
]


@dataclass
class Reference:
    """The HF side, loaded once per export and reused for every quant type."""

    tokenizer: object
    model: object | None  # None when only tokenization is checked


def load_reference(model_dir: Path, adapter_dirs: list[Path] | None = None, with_model: bool = True) -> Reference:
    from llmforge import checkpoints

    tokenizer = checkpoints.load_tokenizer(model_dir)
    model = None
    if with_model:

        model = checkpoints.load_model(model_dir, dtype="float32")
        for adapter in adapter_dirs or []:
            model = checkpoints.load_adapter(model, adapter)
        model.eval()
    return Reference(tokenizer, model)


def probe_texts(tokenizer) -> list[str]:
    texts = list(PROBE_TEXTS)
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    if specials:
        texts.append("".join(f"{s}text {i} " for i, s in enumerate(specials)))
    if getattr(tokenizer, "chat_template", None):
        with contextlib.suppress(Exception):  # a template that needs other fields: the plain probes still run
            texts.append(tokenizer.apply_chat_template(PROBE_CONVERSATION, tokenize=False))
    return texts


def _n_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, min(4, os.cpu_count() or 1))


def open_gguf(path: Path, *, vocab_only: bool = False, n_ctx: int = 512, lora_path: Path | None = None):
    import llama_cpp.llama_cpp as lib

    from llmforge.llamacpp import open_llama

    # Verification checks the file, not the kernels: plain CPU buffers always (see llmforge/llamacpp.py).
    return open_llama(
        path, extra_buffers=False, vocab_only=vocab_only, logits_all=not vocab_only, n_ctx=n_ctx, n_batch=n_ctx,
        n_threads=_n_threads(), verbose=False, lora_path=str(lora_path) if lora_path else None,
        type_k=lib.GGML_TYPE_F32, type_v=lib.GGML_TYPE_F32,  # an f16 KV cache would add its own error
    )


def check_tokenization(gguf_path: Path, ref: Reference) -> dict:
    """Encode every probe with special tokens on both sides; any difference is a failure."""
    llm = open_gguf(gguf_path, vocab_only=True)
    mismatches = []
    texts = probe_texts(ref.tokenizer)
    for text in texts:
        hf_ids = list(ref.tokenizer(text, add_special_tokens=True)["input_ids"])
        gg_ids = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        if hf_ids != gg_ids:
            mismatches.append({"text": text, "hf": hf_ids, "gguf": gg_ids})
    llm.close()
    return {"ok": not mismatches, "texts": len(texts), "mismatches": mismatches}


def prompt_ids(ref: Reference, max_len: int = 64) -> list[list[int]]:
    out = []
    prompts = list(PROBE_PROMPTS)
    if getattr(ref.tokenizer, "chat_template", None):
        with contextlib.suppress(Exception):
            prompts.append(ref.tokenizer.apply_chat_template(PROBE_CONVERSATION[:2], tokenize=False,
                                                             add_generation_prompt=True))
    for p in prompts:
        ids = list(ref.tokenizer(p, add_special_tokens=True)["input_ids"])[:max_len]
        if ids:
            out.append(ids)
    return out


def hf_logits(ref: Reference, prompts: list[list[int]]) -> list:
    import torch

    out = []
    with torch.no_grad():
        for ids in prompts:
            out.append(ref.model(torch.tensor([ids])).logits[0].float().numpy())
    return out


def compare_logits(gguf_path: Path, prompts: list[list[int]], reference_logits: list,
                   lora_path: Path | None = None) -> dict:
    """Top-1 agreement and absolute differences of next-token logits at every position of every prompt."""
    import numpy as np

    n_ctx = max(len(p) for p in prompts) + 8
    llm = open_gguf(gguf_path, n_ctx=n_ctx, lora_path=lora_path)
    agree = total = decisive = decisive_agree = 0
    max_diff = 0.0
    sum_diff = 0.0
    n_values = 0
    for ids, ref in zip(prompts, reference_logits):
        llm.reset()
        llm.eval(ids)
        ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)[:, : ref.shape[-1]]
        diff = np.abs(ours - ref)
        same = ours.argmax(-1) == ref.argmax(-1)
        agree += int(same.sum())
        # Near-ties: HF's own top two within 1% of its logit range. f16 rounding alone can flip those, so they
        # say nothing about whether the file is right; the strict check counts the other positions only.
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) >= TIE_FRACTION * (ref.max(-1) - ref.min(-1))
        decisive += int(clear.sum())
        decisive_agree += int((same & clear).sum())
        total += len(ids)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        n_values += diff.size
    llm.close()
    return {
        "positions": total,
        "top1_agreement": round(agree / total, 4),
        "decisive_positions": decisive,
        "top1_agreement_decisive": round(decisive_agree / decisive, 4) if decisive else 1.0,
        "max_abs_diff": round(max_diff, 5),
        "mean_abs_diff": round(sum_diff / n_values, 6),
    }
