"""On a CUDA machine: `auto` picks Unsloth when installed, and LoRA / QLoRA train on the GPU (skips without CUDA)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import build_model, build_tokenizer  # noqa: E402
from train_data import chat_rows, workspace_with  # noqa: E402

from llmforge.config import load_config  # noqa: E402
from llmforge.training import train  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402


@pytest.mark.parametrize("method,backend", [("lora", "auto"), ("qlora", "auto"), ("qlora", "trl"), ("sft", "auto")])
def test_trains_on_the_gpu(method, backend, tmp_path):
    model = build_model(tmp_path / "m", build_tokenizer(tmp_path / "t"), "llama", hidden_size=256, heads=4,
                        kv_heads=4, intermediate_size=512)
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    cfg = load_config(None, [], {"model.name": str(model), "train.method": method, "train.max_steps": 10,
                                 "train.backend": backend, "train.run_name": f"{method}-{backend}", "train.logging_steps": 2,
                                 "train.learning_rate": 1e-3 if method != "sft" else 1e-4}).config
    result = train(cfg.model, cfg.train, ws)
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    expected = "unsloth" if backend == "auto" and has_unsloth else "trl"
    assert result.backend == expected and result.steps == 10
    assert result.final_loss < result.first_loss
    assert Path(result.output).is_dir()
