"""Merging PEFT adapters into the base, exporting adapter runs, and LoRA adapters as GGUF, on tiny real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmforge.config.export import ExportConfig
from llmforge.config.model import ModelConfig
from llmforge.errors import InputError, LlmforgeError
from llmforge.export import export_gguf, export_lora_gguf, gguf_convert, gguf_export, merge
from llmforge.workspace import Workspace

peft = pytest.importorskip("peft")
needs_llama_cpp = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")


def make_run(ws: Workspace, run: str, base: Path, *, seed: int, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
             on_top_of: Path | None = None, scale: float = 0.5) -> Path:
    """A finished LoRA run as the train stage leaves it: runs/<run>/adapter (PEFT) + manifest with base_model.
    B is non-zero (PEFT starts it at zero, which would make every adapter a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(on_top_of or base), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, scale)
    adapter = ws.adapter_dir(run)
    peft_model.save_pretrained(str(adapter))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(base / f, adapter / f)
    (ws.run_dir(run) / "manifest.json").write_text(json.dumps({"base_model": str(base), "finished_at": run}))
    return adapter


def hf_logits(model_dir: Path, adapters=(), text="The quick brown fox jumps"):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    for a in adapters:
        model = peft.PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    with torch.no_grad():
        return model(torch.tensor([tok(text)["input_ids"]])).logits


def test_merge_writes_a_model_equal_to_base_plus_adapter(tiny_llama_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    adapter = make_run(ws, "lora-1", tiny_llama_dir, seed=1)
    result = merge(ModelConfig(), ExportConfig(), ws, ["lora-1"])
    merged = ws.merged_dir("lora-1")
    assert result.merge_max_abs_diff < 1e-4 and result.adapter_types == ["LORA"]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "manifest.json"):
        assert (merged / f).is_file(), f
    assert (merged / "chat_template.jinja").read_text() == (tiny_llama_dir / "chat_template.jinja").read_text()
    expected = hf_logits(tiny_llama_dir, [adapter])
    assert (hf_logits(merged) - expected).abs().max() < 1e-4
    assert (hf_logits(tiny_llama_dir) - expected).abs().max() > 1e-2  # the adapter really changed the model
    with pytest.raises(LlmforgeError, match="already exists"):
        merge(ModelConfig(), ExportConfig(), ws, ["lora-1"])


def test_several_adapters_merge_in_sequence_and_dtype_applies(tiny_llama_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    first = make_run(ws, "sft", tiny_llama_dir, seed=1)
    second = make_run(ws, "dpo", tiny_llama_dir, seed=2, targets=("gate_proj", "up_proj"))
    merge(ModelConfig(), ExportConfig(), ws, ["sft", "dpo"])
    merged = ws.merged_dir("dpo")
    expected = hf_logits(tiny_llama_dir, [first, second])
    assert (hf_logits(merged) - expected).abs().max() < 1e-4
    assert (hf_logits(tiny_llama_dir, [first]) - expected).abs().max() > 1e-2  # the second one counted

    result = merge(ModelConfig(), ExportConfig(), ws, ["sft", "dpo"], dtype="bfloat16", force=True)
    assert result.dtype == "bfloat16"
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    from llmforge.export.safetensors_stream import model_tensors

    assert {e.dtype for e in model_tensors(merged).values()} == {"BF16"}


def test_merge_with_a_broken_adapter_is_a_clear_error(tiny_llama_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    adapter = make_run(ws, "lora-1", tiny_llama_dir, seed=1)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError, match="adapter_model"):
        merge(ModelConfig(), ExportConfig(), ws, ["lora-1"])
    assert not ws.merged_dir("lora-1").exists()


@needs_llama_cpp
def test_export_gguf_of_an_adapter_run_merges_then_converts_and_verifies(tiny_qwen2_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-q", tiny_qwen2_dir, seed=3)
    result = export_gguf(ModelConfig(), ExportConfig(quant=["f16", "q8_0"]), ws, "lora-q")
    assert result.verified and result.merged
    assert (ws.merged_dir("lora-q") / "model.safetensors").is_file()
    manifest = json.loads(ws.export_manifest("lora-q").read_text())
    assert [f["path"] for f in manifest["files"]] == ["lora-q-f16.gguf", "lora-q-q8_0.gguf"]
    assert all(len(f["sha256"]) == 64 and f["verified"] for f in manifest["files"])
    assert manifest["versions"]["gguf"] and manifest["inputs"]["model"]["sha256"]
    assert ws.exports() == ["lora-q"]
    from llmforge import registry

    ids = {e["id"]: e for e in registry.read(ws.registry_file)}
    assert ids["lora-q/f16"]["parent"] == "lora-q" and "lora-q/merged" in ids
    assert ids["lora-q/f16"]["status"] == "complete" and ids["lora-q/f16"]["metrics"]["top1_agreement_decisive"] >= 0.99
    assert Path(ids["lora-q/q8_0"]["path"]).is_file()
    assert manifest["source"] == str(ws.merged_dir("lora-q"))


@needs_llama_cpp
@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_lora_gguf_on_the_base_gguf_matches_hf_base_plus_adapter(fixture, request, tmp_path):
    import gguf

    base = request.getfixturevalue(fixture)
    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-1", base, seed=4)
    result = export_lora_gguf(ModelConfig(), ExportConfig(), ws, "lora-1")
    entry = result.lora_adapters[-1]
    assert entry["kind"] == "lora_adapter" and entry["verified"], entry
    assert entry["logits"]["top1_agreement"] >= 0.99 and entry["logits"]["max_abs_diff"] < 1e-3
    assert not list(ws.export_dir("lora-1").glob("*.gguf"))  # kept apart from full models (deploy picks those)
    reader = gguf.GGUFReader(str(ws.export_dir("lora-1") / "lora" / "lora-1-lora-f32.gguf"))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}  # numpy order
    assert shapes["blk.0.attn_q.weight.lora_a"] == (4, 64) and shapes["blk.0.attn_q.weight.lora_b"][1] == 4


@needs_llama_cpp
def test_lora_gguf_without_the_qk_permutation_disagrees(tiny_llama_dir, tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-1", tiny_llama_dir, seed=5, targets=("q_proj", "k_proj"), scale=2.0)
    monkeypatch.setattr(gguf_convert, "SEAMS", gguf_convert.Seams(permute=False))
    with pytest.raises(LlmforgeError, match="agreement"):
        export_lora_gguf(ModelConfig(), ExportConfig(), ws, "lora-1")
    assert json.loads(ws.export_manifest("lora-1").read_text())["lora_adapters"][0]["verified"] is False


@needs_llama_cpp
def test_lora_gguf_checked_on_a_given_quantized_base(tiny_llama_dir, tmp_path):
    from llmforge.export.quant_types import parse_quants

    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-1", tiny_llama_dir, seed=6)
    base = gguf_export.produce(tiny_llama_dir, tmp_path / "base", "base", parse_quants("q8_0"), verify_files=False)
    base_gguf = tmp_path / "base" / base["files"][0]["path"]
    entry = export_lora_gguf(ModelConfig(), ExportConfig(), ws, "lora-1", base_gguf=base_gguf).lora_adapters[-1]
    assert entry["verified_on"] == str(base_gguf) and entry["verified"]
    assert 0 < entry["logits"]["max_abs_diff"] < 1.0  # q8_0 rounding of the base, not a broken adapter
