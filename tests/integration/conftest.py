"""Session fixtures: tiny models built locally (no downloads) that every integration test can use read-only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import build_model, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Llama, hidden 64, 2 layers, 4 heads / 2 kv heads, rope theta 50000, untied embeddings."""
    return build_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Qwen2, hidden 64, 2 layers, tied embeddings, rope theta 1e6."""
    return build_model(tmp_path_factory.mktemp("tiny-qwen2"), tiny_tokenizer_dir, "qwen2", rope_theta=1_000_000.0)


@pytest.fixture(scope="session")
def wide_llama_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """Llama 256 wide (rows divisible by 256), so K-quants really apply."""
    return build_model(
        tmp_path_factory.mktemp("wide-llama"),
        tiny_tokenizer_dir,
        "llama",
        hidden_size=256,
        heads=4,
        kv_heads=4,
        intermediate_size=512,
    )
