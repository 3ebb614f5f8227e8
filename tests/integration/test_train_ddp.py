"""Two processes on CPU (gloo) for real: `--nproc 2` relaunches under torchrun, both ranks train, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_nproc_2_runs_ddp_and_only_rank_0_writes(tiny_llama_dir, tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "llmforge", "train", "--nproc", "2", "--method", "lora", "--json",
         "-s", f"project.workdir={ws}", "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=4",
         "-s", "train.logging_steps=2", "-s", "train.batch_size=2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [p for p in (ws / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1  # both processes agreed on one run folder
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["steps"] == 4
    # the global batch is 2 processes x 2 examples: 4 steps see 16 examples
    assert manifest["epochs"] == 1.0
    assert out.stdout.count('"run":') == 1  # one result printed (rank 0)
    assert (runs[0] / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow  # a signal-saved checkpoint is also tested on one process (test_train_resume); ~15 s
def test_sigterm_to_a_2_process_run_saves_one_checkpoint_and_exits_143(tiny_llama_dir, tmp_path):
    import signal
    import time

    ws = workspace_with(tmp_path / "ws", chat_rows(16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "train", "--nproc", "2", "--method", "lora", "-s", f"project.workdir={ws}",
         "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=100000", "-s", "train.save_every=100000",
         "-s", "train.run_name=d", "-s", "train.logging_steps=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    metrics = ws / "runs" / "d" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    hints = [line for line in err.splitlines() if "continue with: llmforge train --resume" in line]
    assert len(hints) == 1, err[-3000:]  # rank 0 only
    assert "--nproc 2" in hints[0] and "train.run_name=d" in hints[0] and "--method lora" in hints[0], hints[0]
    saved = list((ws / "runs" / "d" / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    assert len(saved) == 1  # both ranks stopped at the same step and saved it once
    # rank 0 vouched for it after both ranks had written their parts (each its own rng_state_<rank>.pth)
    from llmforge.training import resume

    assert resume.newest_complete(saved[0].parent.parent) == (saved[0].parent, [])
    marker = json.loads((saved[0].parent / resume.COMPLETE_MARKER).read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])


ACCELERATE_FSDP = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
use_cpu: false
rdzv_backend: static
same_network: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: SHARDED_STATE_DICT
"""


@pytest.mark.slow  # the same 2-process training as test_nproc_2_runs_ddp_and_only_rank_0_writes, another launcher
def test_nproc_with_an_accelerate_config_launches_through_accelerate(tiny_llama_dir, tmp_path):
    # On CPU the Trainer keeps FSDP off (use_cpu) and trains data-parallel; what this checks is llmforge's part:
    # the config reaches `accelerate launch`, it starts both processes, and they share one run folder.
    ws = workspace_with(tmp_path / "ws", chat_rows(16))
    config = tmp_path / "fsdp.yaml"
    config.write_text(ACCELERATE_FSDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "llmforge", "train", "--nproc", "2", "--method", "lora", "--json",
         "-s", f"project.workdir={ws}", "-s", f"model.name={tiny_llama_dir}", "-s", "train.max_steps=4",
         "-s", "train.batch_size=2", "-s", f"train.accelerate_config={config}", "-s", "train.run_name=acc"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((ws / "runs" / "acc" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["epochs"] == 1.0  # 4 steps x 2 processes x 2 examples = 16
    assert out.stdout.count('"run":') == 1


def test_an_accelerate_config_that_would_start_one_process_is_refused_before_launching(tmp_path):
    ws = workspace_with(tmp_path / "ws", chat_rows(4))
    config = tmp_path / "cpu.yaml"
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "llmforge", "train", "--nproc", "2", "--method", "lora", "-s", f"project.workdir={ws}",
            "-s", "model.name=no/such-model"]
    out = subprocess.run([*base, "-s", f"train.accelerate_config={config}"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert "accelerate would start one process" in out.stderr and "distributed_type MULTI_CPU, use_cpu" in out.stderr
    assert "leave train.accelerate_config unset" in out.stderr and "Traceback" not in out.stderr
    assert not (ws / "runs").exists()

    out = subprocess.run([*base, "-s", f"train.accelerate_config={tmp_path / 'nope.yaml'}"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 2 and "cannot read" in out.stderr and "nope.yaml" in out.stderr
