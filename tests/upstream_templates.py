"""The real upstream chat templates in tests/fixtures/chat_templates (see its README: llama.cpp's models/templates and
TRL's chat_templates, both copies of the models' own), with the BOS/EOS tokens their tokenizers declare.

TOKENS/FAMILY: the first six, with what llmforge's families make of them. CORPUS: every file, with the model it
comes from and its source; the corpus tests and docs/templates.md go over all of it."""

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

# What chat_templates.identify (training's question: which fixed family is it?) makes of each: the family it
# reproduces exactly, or None. Qwen3 rewrites assistant turns (an empty <think></think> block on the last one, text
# split at </think>) and Granite 3.3 writes a default system prompt with today's date: no fixed family is either.
# Deploy asks more (chat_templates.deploy_verdict, tests/unit/test_chat_templates.py CORPUS_VERDICTS).
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


LLAMA_CPP = "llama.cpp models/templates"
TRL = "TRL trl/chat_templates"

# file name -> (Hugging Face model, BOS, EOS, source). BOS/EOS as the model's tokenizer_config.json declares them.
CORPUS: dict[str, tuple[str, str | None, str | None, str]] = {
    "Qwen-Qwen2.5-7B-Instruct": ("Qwen/Qwen2.5-7B-Instruct", None, "<|im_end|>", LLAMA_CPP),
    "Qwen-Qwen3-0.6B": ("Qwen/Qwen3-0.6B", None, "<|im_end|>", LLAMA_CPP),
    "Qwen-Qwen3-4B-Instruct-2507": ("Qwen/Qwen3-4B-Instruct-2507", None, "<|im_end|>", TRL),
    "Qwen-QwQ-32B": ("Qwen/QwQ-32B", None, "<|im_end|>", LLAMA_CPP),
    "meta-llama-Meta-Llama-3-8B-Instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", TRL),
    "meta-llama-Llama-3.1-8B-Instruct": ("meta-llama/Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", LLAMA_CPP),
    "meta-llama-Llama-3.2-3B-Instruct": ("meta-llama/Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>", LLAMA_CPP),
    "meta-llama-Llama-3.3-70B-Instruct": ("meta-llama/Llama-3.3-70B-Instruct", "<|begin_of_text|>", "<|eot_id|>", LLAMA_CPP),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("NousResearch/Hermes-3-Llama-3.1-8B", "<|begin_of_text|>", "<|im_end|>", LLAMA_CPP),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistralai/Mistral-Nemo-Instruct-2407", "<s>", "</s>", LLAMA_CPP),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", "<s>", "</s>", LLAMA_CPP),
    "unsloth-mistral-Devstral-Small-2507": ("mistralai/Devstral-Small-2507", "<s>", "</s>", LLAMA_CPP),
    "google-gemma-2-2b-it": ("google/gemma-2-2b-it", "<bos>", "<eos>", LLAMA_CPP),
    "google-gemma-3-it": ("google/gemma-3-1b-it", "<bos>", "<eos>", TRL),
    "microsoft-Phi-3-mini-4k-instruct": ("microsoft/Phi-3-mini-4k-instruct", "<s>", "<|endoftext|>", TRL),
    "microsoft-Phi-3.5-mini-instruct": ("microsoft/Phi-3.5-mini-instruct", "<s>", "<|endoftext|>", LLAMA_CPP),
    "HuggingFaceTB-SmolLM3-3B": ("HuggingFaceTB/SmolLM3-3B", None, "<|im_end|>", LLAMA_CPP),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", LLAMA_CPP),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", LLAMA_CPP),
    "ibm-granite-granite-3.3-2B-Instruct": ("ibm-granite/granite-3.3-2b-instruct", None, "<|end_of_text|>", LLAMA_CPP),
    "ibm-granite-granite-4.0": ("ibm-granite/granite-4.0-h-tiny", None, "<|end_of_text|>", LLAMA_CPP),
    "LiquidAI-LFM2": ("LiquidAI/LFM2-1.2B", "<|startoftext|>", "<|im_end|>", TRL),
    "LFM2.5-Instruct": ("LiquidAI/LFM2.5-1.2B-Instruct", "<|startoftext|>", "<|im_end|>", LLAMA_CPP),
    "CohereLabs-aya-expanse-8b": ("CohereLabs/aya-expanse-8b", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", TRL),
    "openai-gpt-oss-120b": ("openai/gpt-oss-120b", "<|startoftext|>", "<|return|>", LLAMA_CPP),
}  # fmt: skip


def corpus() -> dict[str, tuple[str, str | None, str | None, str]]:
    """Every corpus file, checked against the folder so that a file can be neither unlisted nor missing."""
    on_disk = {p.stem for p in DIR.glob("*.jinja")}
    if on_disk != set(CORPUS):
        raise AssertionError(f"corpus and folder differ: {sorted(on_disk ^ set(CORPUS))}")
    return dict(CORPUS)
