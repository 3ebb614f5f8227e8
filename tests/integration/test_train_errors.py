"""Refusals a user can act on, each before any model loads: exit 2, one line, a hint, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from llmforge.cli.app import app  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MISSING_MODEL = "no/such-model-anywhere"  # loading it would fail with a different message


def invoke(ws: Path, *args: str):
    return CliRunner().invoke(app, ["train", "-s", f"project.workdir={ws}", *args])


def test_unsloth_without_cuda_is_refused_before_loading(tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    out = invoke(ws, "--method", "lora", "-s", "train.backend=unsloth", "-s", f"model.name={MISSING_MODEL}")
    assert out.exit_code == 2
    assert "unsloth needs a CUDA GPU" in out.output and "train.backend: trl" in out.output
    assert "cannot load" not in out.output and "Traceback" not in out.output


def test_a_process_started_by_a_launcher_that_ignored_nproc_refuses(tmp_path, monkeypatch):
    # what `accelerate launch` does on CPU with some configs: one process, where --nproc asked for two
    monkeypatch.setenv("LLMFORGE_NPROC", "2")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    out = invoke(ws, "--method", "lora", "-s", f"model.name={MISSING_MODEL}")
    assert out.exit_code == 2
    assert "--nproc 2: the launcher started 1 process(es), not 2" in out.output and "torchrun" in out.output
    assert not (ws / "runs").exists()


def test_qlora_where_bitsandbytes_cannot_quantize_is_refused_before_loading(tmp_path):
    # A process-edge stand-in: a bitsandbytes whose import fails, as on a build without this device's kernels.
    shadow = tmp_path / "shadow" / "bitsandbytes"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('bitsandbytes has no kernels for this device')\n")
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    env = {**os.environ, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "llmforge", "train", "--method", "qlora", "-s", f"project.workdir={ws}",
         "-s", f"model.name={MISSING_MODEL}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "bitsandbytes cannot run 4-bit layers on this device" in out.stderr
    assert "no kernels for this device" in out.stderr and "--method lora" in out.stderr
    assert "Traceback" not in out.stderr and "cannot load" not in out.stderr


def test_missing_data_names_the_file_and_the_fix(tmp_path):
    out = invoke(tmp_path / "empty", "--method", "lora", "-s", "model.name=x")
    assert out.exit_code == 2
    assert "train.jsonl does not exist" in out.output and "llmforge data prepare" in out.output

    out = invoke(tmp_path / "empty", "--method", "lora", "-s", "model.name=x", "-s", "train.data=nope.jsonl")
    assert out.exit_code == 2 and "train.data: nope.jsonl does not exist" in out.output


def test_bad_record_names_file_line_and_field(tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(2))
    with open(ws / "data" / "train.jsonl", "a") as fh:
        fh.write('{"messages": [{"role": "user", "content": 3}]}\n')
    out = invoke(ws, "--method", "lora", "-s", "model.name=x")
    assert out.exit_code == 2
    assert "train.jsonl:3: messages[0]: needs string fields role and content" in out.output


def test_wrong_data_kind_for_the_method(tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(2))
    out = invoke(ws, "--method", "dpo", "-s", "model.name=x")
    assert out.exit_code == 2 and "dpo needs preference records" in out.output


def test_run_folder_is_not_overwritten_without_force(tiny_llama_dir, tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    (ws / "runs" / "mine").mkdir(parents=True)
    (ws / "runs" / "mine" / "notes.txt").write_text("keep me")
    out = invoke(ws, "--method", "lora", "-s", f"model.name={tiny_llama_dir}", "-s", "train.run_name=mine")
    assert out.exit_code == 2 and "--force" in out.output
    assert (ws / "runs" / "mine" / "notes.txt").read_text() == "keep me"


def test_model_name_required_and_unknown_method(tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(2))
    out = invoke(ws, "--method", "lora")
    assert out.exit_code == 2 and "model.name is required" in out.output
    out = invoke(ws, "--method", "rlhf")
    assert out.exit_code == 2 and "rlhf" in out.output


def test_a_run_name_that_leaves_the_workspace_deletes_and_trains_nothing(tiny_llama_dir, tmp_path):
    # Before names were checked, --force rmtree'd <workspace>/runs/../../victim (= tmp_path/victim) and trained there.
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    for name in ("../../victim", str(victim)):
        out = invoke(ws, "--method", "lora", "--force", "-s", f"model.name={tiny_llama_dir}",
                     "-s", f"train.run_name={name}", "-s", "train.max_steps=1")  # fmt: skip
        assert out.exit_code == 2, out.output
        assert "train.run_name" in out.output and repr(name) in out.output
        assert (victim / "precious.txt").read_text() == "keep me" and sorted(victim.iterdir()) == [victim / "precious.txt"]
    assert not (ws / "runs").exists()
