"""The Unsloth backend's wiring, trained through on CPU with the stand-in in tests/fakes/unsloth.

Unsloth runs on CUDA only, so these tests run `llmforge train` in a subprocess where `backend.cuda_available`
answers True and `unsloth` is the stand-in (same keyword names as the real FastLanguageModel, loading with
transformers and PEFT). They check what llmforge owns: unsloth is imported before trl/transformers/peft, it is
called with the arguments each method needs, the model it returns really trains, and the run's outputs are the
ones every later stage reads. What Unsloth itself does on a GPU is tests/gpu's job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402

from llmforge.training.unsloth_backend import ALL_LINEAR  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FAKES = REPO / "tests" / "fakes"
# the process pretends a CUDA device is visible, nothing else changes
PRELUDE = (
    "import sys; import llmforge.training.backend as b; b.cuda_available = lambda: True; "
    "from llmforge.cli.app import main; sys.argv[0] = 'llmforge'; main()"
)


def run_train(ws: Path, log: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}", "FAKE_UNSLOTH_LOG": str(log),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, "train", "--json", "-s", f"project.workdir={ws}", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


def events(log: Path) -> dict[str, dict]:
    return {e["event"]: e for e in map(json.loads, log.read_text().splitlines())}


def test_lora_through_unsloth_imports_it_first_and_trains_the_adapter(tiny_llama_dir, tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows())
    log = tmp_path / "unsloth.jsonl"
    out = run_train(ws, log, "--method", "lora", "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=20",
                    "-s", "train.learning_rate=1e-2", "-s", "train.logging_steps=5", "-s", "train.run_name=u",
                    "-s", "train.lora.rank=4", "-s", "train.lora.alpha=8", "-s", "train.max_length=256")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["backend"] == "unsloth" and result["backend_why"] == "auto: CUDA device present and unsloth installed"
    assert result["final_loss"] < result["first_loss"] * 0.95

    seen = events(log)
    assert seen["import"]["already_imported"] == []  # before trl, transformers and peft
    loaded = seen["from_pretrained"]
    assert loaded["model_name"] == str(Path(tiny_llama_dir).resolve())
    assert loaded["load_in_4bit"] is False and loaded["full_finetuning"] is False
    assert loaded["use_safetensors"] is True and loaded["trust_remote_code"] is False
    assert loaded["max_seq_length"] == 256 and loaded["dtype"] is None
    peft = seen["get_peft_model"]
    assert peft["r"] == 4 and peft["lora_alpha"] == 8 and peft["target_modules"] == ALL_LINEAR
    assert peft["use_dora"] is False and peft["random_state"] == 42

    run = ws / "runs" / "u"
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and sorted(adapter_config["target_modules"]) == sorted(ALL_LINEAR)
    assert adapter_config["base_model_name_or_path"] == str(Path(tiny_llama_dir).resolve())
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    # the tokenizer llmforge checked (end-of-turn trained) is the one saved, with the template trained with
    assert (run / "adapter" / "chat_template.jinja").read_text() == (run / "chat_template.jinja").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["backend"] == "unsloth" and manifest["end_of_turn"] == ["<|im_end|>"]


def test_qlora_and_sft_ask_unsloth_for_what_they_need(tiny_llama_dir, tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(8))
    log = tmp_path / "qlora.jsonl"
    out = run_train(ws, log, "--method", "qlora", "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=2",
                    "-s", "train.backend=unsloth", "-s", "train.qlora.compute_dtype=float32", "-s",
                    "train.lora.dora=true", "-s", "train.lora.target_modules=[q_proj, v_proj]", "-s",
                    "train.gradient_checkpointing=true", "-s", "train.run_name=q")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backend_why"] == "asked for in train.backend"
    seen = events(log)
    assert seen["from_pretrained"]["load_in_4bit"] is True and seen["from_pretrained"]["dtype"] == "torch.float32"
    assert seen["from_pretrained"]["use_gradient_checkpointing"] == "unsloth"
    assert seen["get_peft_model"]["target_modules"] == ["q_proj", "v_proj"]
    assert seen["get_peft_model"]["use_dora"] is True
    assert (ws / "runs" / "q" / "adapter" / "adapter_model.safetensors").is_file()

    log = tmp_path / "sft.jsonl"
    out = run_train(ws, log, "--method", "sft", "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=2",
                    "-s", "train.run_name=s")
    assert out.returncode == 0, out.stderr
    seen = events(log)
    assert seen["from_pretrained"]["full_finetuning"] is True and seen["from_pretrained"]["load_in_4bit"] is False
    assert "get_peft_model" not in seen  # a full fine-tune has no adapter
    assert (ws / "runs" / "s" / "model" / "model.safetensors").is_file()


def test_qlora_settings_unsloth_cannot_honour_go_to_trl_or_are_refused(tiny_llama_dir, tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(8))
    log = tmp_path / "u.jsonl"
    common = ("--method", "qlora", "-s", f"model.name={tiny_llama_dir}", "-s", "train.qlora.quant_type=fp4")
    out = run_train(ws, log, *common, "--dry-run")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["backend"] == "trl" and "unsloth always quantizes to nf4" in plan["backend_why"]
    assert "quant_type fp4" in plan["backend_why"]

    out = run_train(ws, log, *common, "-s", "train.backend=unsloth")
    assert out.returncode == 2
    assert "unsloth always quantizes to nf4" in out.stderr and "train.backend: trl" in out.stderr
    assert "Traceback" not in out.stderr
    assert not log.exists()  # refused before unsloth (or any model) was loaded
