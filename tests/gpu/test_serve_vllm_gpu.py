"""The serve API tests the llama.cpp and transformers engines pass, run again on the vLLM engine (CUDA + vLLM only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "integration"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'llmforge-cli[vllm]')")

# Imported here, these run once more with this module's `engine` fixture: the same requests and assertions.
import test_serve  # noqa: E402
from test_serve import (  # noqa: E402, F401
    test_chat_and_completions_with_openai_client,
    test_max_tokens_is_enforced_and_seed_repeats,
    test_stop_string_across_token_boundaries,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tiny_models import build_model, build_tokenizer

    from llmforge.serving.target import Target
    from llmforge.serving.vllm_engine import VllmEngine

    # head size 64: vLLM's attention kernels take only common head sizes (the integration tests' tiny model has 16)
    root = tmp_path_factory.mktemp("vllm")
    model_dir = build_model(
        root / "model", build_tokenizer(root / "tok"), "llama", hidden_size=128, heads=2, kv_heads=1
    )
    engine = VllmEngine(Target("vllm", model_dir, "tiny-vllm"), context_length=512, dtype="float32", parallel=2,
                        gpu_memory_utilization=0.2)  # fmt: skip
    yield engine
    engine.close()


@pytest.fixture
def vllm_engine(engine):
    return engine


def test_concurrent_requests_take_turns_on_vllm(request):
    test_serve.test_concurrent_requests_take_turns("vllm", request)
