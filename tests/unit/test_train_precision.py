"""Decided before any model loads: the precision each device trains in, the dtype weights load in, and where
4-bit weights load.

The GPU cases are decided from torch.cuda's answers, which these tests set (no GPU here); that the chosen
precision then really trains on a GPU is tests/gpu's job."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llmforge.config import load_config  # noqa: E402
from llmforge.errors import ConfigError  # noqa: E402
from llmforge.training import stage  # noqa: E402


def decide(monkeypatch, *, cuda: bool, bf16: bool = True, method: str = "lora", **dotted):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    cfg = load_config(None, [], {"model.name": "m", "train.method": method, **dotted}).config
    return stage._precision(cfg.train, cfg.model, method)


def test_auto_is_bf16_on_recent_gpus_fp16_on_older_ones_fp32_on_cpu(monkeypatch):
    assert decide(monkeypatch, cuda=True)["_name"] == "bf16"
    assert decide(monkeypatch, cuda=True, bf16=False)["_name"] == "fp16"  # e.g. T4, V100
    cpu = decide(monkeypatch, cuda=False)
    assert cpu["_name"] == "fp32" and cpu["use_cpu"] and not cpu["bf16"] and not cpu["fp16"]


def test_fp16_on_cpu_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        decide(monkeypatch, cuda=False, **{"train.precision": "fp16"})


@pytest.mark.parametrize("method,extra", [("sft", {}), ("dpo", {"train.dpo.lora": False})])
def test_full_fp16_training_loads_fp32_master_weights(monkeypatch, method, extra):
    assert decide(monkeypatch, cuda=True, bf16=False, method=method, **extra)["weights"] == "float32"
    with pytest.raises(ConfigError, match="cannot train every weight of a model loaded as model.dtype bfloat16"):
        decide(monkeypatch, cuda=True, bf16=False, method=method, **{"model.dtype": "bfloat16", **extra})


def test_adapters_and_bf16_keep_the_configured_weight_dtype(monkeypatch):
    assert decide(monkeypatch, cuda=True, bf16=False, method="lora")["weights"] == "auto"  # adapters train in fp32
    assert decide(monkeypatch, cuda=True, method="sft")["weights"] == "auto"
    assert decide(monkeypatch, cuda=True, method="sft", **{"model.dtype": "bfloat16"})["weights"] == "bfloat16"


def test_4bit_weights_load_onto_this_ranks_gpu(monkeypatch):
    from llmforge.training import trainers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of `--nproc 2` on one machine
    assert trainers.quantized_device_map() == {"": 1}
    monkeypatch.delenv("LOCAL_RANK")
    assert trainers.quantized_device_map() == {"": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainers.quantized_device_map() == {"": "cpu"}
