"""The real upstream chat templates in tests/fixtures/chat_templates (MIT, collected by llama.cpp from the models'
own repositories), with the BOS/EOS tokens their tokenizers declare."""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).parent / "fixtures" / "chat_templates"

TOKENS = {
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "ibm-granite-granite-3.3-2B-Instruct": (None, "<|end_of_text|>"),
}

# What llmforge makes of each: the family it reproduces exactly, or None for a clear refusal. Qwen3 rewrites
# assistant turns (an empty <think></think> block on the last one, text split at </think>) and Granite 3.3 writes a
# default system prompt with today's date: no Ollama template reproduces either exactly.
FAMILY = {
    "google-gemma-2-2b-it": "gemma",
    "microsoft-Phi-3.5-mini-instruct": "phi3",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3.1",
    "Qwen-Qwen3-0.6B": None,
    "ibm-granite-granite-3.3-2B-Instruct": None,
}


def expectations() -> dict[str, tuple[str | None, str | None, str | None]]:
    """name -> (bos, eos, family or None)."""
    return {name: (*TOKENS[name], family) for name, family in FAMILY.items()}


def read(name: str) -> str:
    return (DIR / f"{name}.jinja").read_text(encoding="utf-8")
