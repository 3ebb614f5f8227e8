"""QLoRA on CPU: after a real Trainer evaluation, LoRA gradients through the 4-bit model match a float32 model built
from the same dequantized weights. bitsandbytes would otherwise repack the weights on AVX512-BF16 CPUs during eval
and later training forwards would run without autograd (facts.md); the run turns that repacking off."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402

from llmforge import checkpoints  # noqa: E402
from llmforge.config import load_config  # noqa: E402
from llmforge.training import data as data_mod  # noqa: E402
from llmforge.training import stage, trainers  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402


def build_qlora(model_dir: Path, tmp: Path, fix: bool = True):
    ws = Workspace(workspace_with(tmp / "ws", chat_rows(8), chat_rows(4)))
    cfg = load_config(None, [], {"model.name": str(model_dir), "train.method": "qlora",
                                 "train.lora.dropout": 0.0, "train.batch_size": 2}).config
    tok = checkpoints.load_tokenizer(model_dir)
    data = data_mod.load(None, ws, "qlora")
    prec = stage._precision(cfg.train, cfg.model, "qlora")  # fp32 on this CPU
    built = trainers.build(cfg.model, cfg.train, "qlora", "trl", data, tok, prec, 1e-3, output_dir=tmp / "ckpt",
                           world=1)
    if not fix:  # what bitsandbytes does by default on this CPU
        import bitsandbytes as bnb
        from bitsandbytes.functional import has_avx512bf16

        for module in built.trainer.model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = has_avx512bf16()
    return built.trainer, cfg


def reference_from(qmodel, model_dir: Path, lora_config):
    """float32 model whose linear weights are the 4-bit weights dequantized, with the same LoRA weights."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from peft import get_peft_model

    ref = get_peft_model(checkpoints.load_model(model_dir), lora_config)
    ref_modules = dict(ref.named_modules())
    for name, module in qmodel.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            with torch.no_grad():
                ref_modules[name].weight.copy_(weight)
    ref.load_state_dict({k: v for k, v in qmodel.state_dict().items() if "lora_" in k}, strict=False)
    return ref


def lora_grads(model, batch):
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def relative_error(got, want) -> float:
    return ((got - want).norm() / want.norm()).item()


def _batch_and_nonzero_b(trainer):
    import torch

    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():  # lora_B starts at zero: make A's gradient non-trivial
        if "lora_B" in name:
            with torch.no_grad():
                param.normal_(0, 0.05)
    return trainer.data_collator([trainer.train_dataset[i] for i in range(2)])


def test_qlora_gradients_after_an_eval_step_match_a_dequantized_fp32_reference(tiny_llama_dir, tmp_path):
    trainer, cfg = build_qlora(tiny_llama_dir, tmp_path)
    batch = _batch_and_nonzero_b(trainer)
    trainer.evaluate()  # the eval forward that triggers the repacking bug when it is not turned off
    got = lora_grads(trainer.model, batch)
    ref = reference_from(trainer.model, tiny_llama_dir, trainers.lora_config(cfg.train))
    want = lora_grads(ref, batch)
    assert len(got) == len(want) > 0
    # 4-bit matmuls on CPU differ from the fp32 reference by ~1% (measured 0.9%); the bug gives ~100%
    errors = {name: relative_error(got[name], grad) for name, grad in want.items() if grad.abs().sum() > 0}
    assert len(errors) == len(want)
    assert max(errors.values()) < 0.03, errors


def test_without_the_workaround_this_cpu_gets_wrong_gradients(tiny_llama_dir, tmp_path):
    """Proves the previous test can fail here: on an AVX512-BF16 CPU the default path loses the gradients."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack, the bug cannot show")
    trainer, cfg = build_qlora(tiny_llama_dir, tmp_path, fix=False)
    batch = _batch_and_nonzero_b(trainer)
    trainer.evaluate()
    got = lora_grads(trainer.model, batch)
    ref = reference_from(trainer.model, tiny_llama_dir, trainers.lora_config(cfg.train))
    want = lora_grads(ref, batch)
    wrong = [n for n in want if n not in got or relative_error(got[n], want[n]) > 0.3]
    assert wrong, "bitsandbytes no longer corrupts gradients after eval on this CPU: the workaround may be obsolete"
