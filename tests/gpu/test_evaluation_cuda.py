"""On a CUDA device, eval's perplexity (computed on the GPU) equals transformers' own loss computed on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_perplexity_matches_cpu(tmp_path):
    from tiny_models import build_model, build_tokenizer, reference_perplexity

    from llmforge.config.eval import EvalConfig
    from llmforge.config.model import ModelConfig
    from llmforge.evaluation import evaluate
    from llmforge.workspace import Workspace

    model_dir = build_model(tmp_path / "model", build_tokenizer(tmp_path / "tok"), "llama")
    texts = ["The keeper wrote three lines every evening.", "Ships called on Mondays and Thursdays."]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = evaluate(ModelConfig(name=str(model_dir), dtype="float32"), EvalConfig(data=str(data)),
                      Workspace(tmp_path / "ws"), targets="base")
    assert result.report["metrics"]["base"]["perplexity"] == pytest.approx(reference_perplexity(model_dir, texts),
                                                                           rel=1e-3)
