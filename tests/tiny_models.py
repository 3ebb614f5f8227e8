"""Build tiny models locally for tests: a byte-level BPE tokenizer trained on tests/fixtures/corpus.txt with ChatML
special tokens and a chat template with {% generation %} markers, and tiny Llama / Qwen2 models saved as safetensors.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.training.scratch import CHATML_TEMPLATE, SPECIAL_TOKENS  # noqa: F401 (re-exported for tests)

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = FIXTURES / "corpus.txt"


def build_tokenizer(out_dir: Path, vocab_size: int = 512, corpus: Path = CORPUS) -> Path:
    from llmforge import checkpoints
    from llmforge.training.scratch import train_tokenizer

    fast = train_tokenizer(corpus.read_text(encoding="utf-8").splitlines(), vocab_size)
    checkpoints.save_tokenizer(fast, out_dir)
    return out_dir


def load_tokenizer(path: Path):
    """Load a test tokenizer exactly as saved (AutoTokenizer may swap in a model-specific class)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def build_model(
    out_dir: Path,
    tokenizer_dir: Path,
    architecture: str = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    rope_theta: float = 50000.0,
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
) -> Path:
    from llmforge.training.scratch import build_model as build
    from llmforge.training.scratch import save_base_model

    tok = load_tokenizer(tokenizer_dir)
    model = build(
        tok,
        architecture,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size or hidden_size * 2,
        max_position_embeddings=512,
        rope_theta=rope_theta,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
    )
    return save_base_model(model, tok, Path(out_dir))


def reference_perplexity(model_dir: Path, texts: list[str]) -> float:
    """Perplexity over plain texts computed independently of llmforge: transformers' own loss, on the CPU, in fp32,
    weighted by the number of predicted tokens of each text."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(total / count)
