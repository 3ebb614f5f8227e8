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


def read(name: str) -> str:
    return (DIR / f"{name}.jinja").read_text(encoding="utf-8")
