"""Stopping and resuming: SIGKILL mid-run then --resume ends with the same weights as an uninterrupted run;
SIGTERM saves a checkpoint and exits 143 with a hint; a resume after the config or data changed is refused; a
checkpoint cut off mid-save is skipped (and named), and a run with no complete checkpoint is refused."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with, write_jsonl  # noqa: E402

from llmforge.config import load_config  # noqa: E402
from llmforge.training import train  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def settings(model_dir: Path, run: str, steps: int) -> dict:
    return {
        "model.name": str(model_dir), "train.method": "lora", "train.run_name": run, "train.max_steps": steps,
        "train.save_every": 10, "train.logging_steps": 5, "train.learning_rate": 5e-3, "train.seed": 7,
    }


def cli(ws: Path, values: dict) -> list[str]:
    args = [sys.executable, "-m", "llmforge", "train", "-s", f"project.workdir={ws}"]
    for key, value in values.items():
        args += ["-s", f"{key}={value}"]
    return args


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {path} appeared: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    import torch

    steps = 120
    reference = Workspace(workspace_with(tmp_path / "a", chat_rows(), chat_rows(4)))
    cfg = load_config(None, [], settings(tiny_llama_dir, "ref", steps)).config
    train(cfg.model, cfg.train, reference)

    killed = Workspace(workspace_with(tmp_path / "b", chat_rows(), chat_rows(4)))
    proc = subprocess.Popen(cli(killed.root, settings(tiny_llama_dir, "run", steps)), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(killed.checkpoints_dir("run") / "checkpoint-10" / "trainer_state.json", proc)
    time.sleep(0.3)  # let it get further, so the resume has a partial stretch to redo
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not killed.run_manifest("run").exists()  # it really was cut off mid-way

    cfg = load_config(None, [], settings(tiny_llama_dir, "run", steps)).config
    result = train(cfg.model, cfg.train, killed, resume=True)
    assert result.steps == steps
    assert "checkpoint-" in Path(result.run_dir).joinpath("manifest.json").read_text()
    got, want = adapter_tensors(killed.adapter_dir("run")), adapter_tensors(reference.adapter_dir("ref"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    steps_logged = [int(line.split('"step": ')[1].split(",")[0])
                    for line in killed.metrics_file("run").read_text().splitlines() if '"loss"' in line]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps  # no duplicated rows


def test_sigterm_saves_a_checkpoint_and_exits_143_with_a_resume_hint(tiny_llama_dir, tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    values = {**settings(tiny_llama_dir, "t", 100000), "train.save_every": 100000}
    proc = subprocess.Popen(cli(ws.root, values), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(ws.metrics_file("t"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "--resume" in err and "train.run_name=t" in err and "Traceback" not in err
    checkpoints = list(ws.checkpoints_dir("t").glob("checkpoint-*/trainer_state.json"))
    assert len(checkpoints) == 1  # saved on the signal, not by save_every
    assert not ws.run_manifest("t").exists()


def test_resume_refuses_changed_config_or_data_unless_forced(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    cfg = load_config(None, [], settings(tiny_llama_dir, "c", 10)).config
    train(cfg.model, cfg.train, ws)
    (ws.run_manifest("c")).unlink()  # as if it had been interrupted after its last checkpoint
    base = ["train", "--resume", "-s", f"project.workdir={ws.root}"]
    for key, value in settings(tiny_llama_dir, "c", 10).items():
        base += ["-s", f"{key}={value}"]

    out = CliRunner().invoke(app, base + ["-s", "train.learning_rate=0.001"])
    assert out.exit_code == 2
    assert "train.learning_rate" in out.output and "--force" in out.output

    write_jsonl(ws.split_file("train"), chat_rows(30))
    out = CliRunner().invoke(app, base)
    assert out.exit_code == 2 and "data" in out.output

    out = CliRunner().invoke(app, base + ["--force", "--json"])
    assert out.exit_code == 0, out.output


@pytest.mark.parametrize("flag", ["--resume"])
def test_resume_without_a_checkpoint_says_so(flag, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    out = CliRunner().invoke(app, ["train", flag, "-s", f"project.workdir={ws.root}", "-s", "model.name=x"])
    assert out.exit_code == 2 and "no unfinished run" in out.output


# Run the CLI in a child that kills itself (SIGKILL, nothing cleans up) half-way through writing the trainer state of
# one checkpoint: the Trainer's last file of a save, so everything else of that checkpoint is already on disk.
KILL_MID_SAVE = """
import os, signal, sys
from transformers.trainer_callback import TrainerState

KILL_AT = int(os.environ["KILL_AT_STEP"])
save = TrainerState.save_to_json

def torn_save(self, json_path):
    if self.global_step != KILL_AT:
        return save(self, json_path)
    save(self, json_path)
    with open(json_path, "r+", encoding="utf-8") as fh:
        fh.truncate(len(fh.read()) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

TrainerState.save_to_json = torn_save
from llmforge.cli.app import main
sys.argv[0] = "llmforge"
main()
"""


def test_kill_mid_save_then_resume_starts_from_the_newest_complete_checkpoint(tiny_llama_dir, tmp_path, request):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    values = {**settings(tiny_llama_dir, "torn", 15), "train.save_every": 5}
    args = cli(ws.root, values)[3:]  # without "python -m llmforge": the child script runs the CLI
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, *args], env={**env(), "KILL_AT_STEP": "10"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    torn = ws.checkpoints_dir("torn") / "checkpoint-10"
    with pytest.raises(ValueError):  # the state main's --resume died on ("unexpected internal error")
        json.loads((torn / "trainer_state.json").read_text())

    # the final save of an earlier attempt, killed half-way, left its adapter under a temporary name
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = ws.run_dir("torn") / f".adapter.{int(dead.stdout)}.0a1b2c3d.tmp"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")

    previous = os.umask(0o022)
    request.addfinalizer(lambda: os.umask(previous))
    base = ["train", "--resume", "-s", f"project.workdir={ws.root}"]
    for key, value in values.items():
        base += ["-s", f"{key}={value}"]
    out = CliRunner().invoke(app, base)
    assert out.exit_code == 0, out.output
    assert "skipped checkpoint-10" in out.output and "trainer_state.json is cut short" in out.output
    assert "resuming from" in out.output and "checkpoint-5" in out.output
    assert "removed 1 temporary file(s) left by an interrupted run" in out.output and not stale.exists()
    manifest = json.loads(ws.run_manifest("torn").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-5") and manifest["steps"] == 15
    assert [s["checkpoint"] for s in manifest["resume_skipped"]] == ["checkpoint-10"]
    assert "trainer_state.json" in manifest["resume_skipped"][0]["reason"]
    # the resumed run saved checkpoint-10 and -15 again, whole this time, and vouched for them
    for step in (10, 15):
        folder = ws.checkpoints_dir("torn") / f"checkpoint-{step}"
        json.loads((folder / "trainer_state.json").read_text())
        assert (folder / "llmforge-complete.json").is_file()
    # published outputs are readable by others under umask 022 (a service user), not 0600/0700
    assert stat.S_IMODE(ws.adapter_dir("torn").stat().st_mode) == 0o755
    for path in (ws.run_manifest("torn"), ws.adapter_dir("torn") / "adapter_model.safetensors",
                 ws.run_dir("torn") / "config.yaml", ws.metrics_file("torn")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_resume_refuses_when_no_checkpoint_is_complete(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    cfg = load_config(None, [], settings(tiny_llama_dir, "only", 10)).config
    train(cfg.model, cfg.train, ws)
    ws.run_manifest("only").unlink()  # as if killed while saving its one checkpoint (trainer_state.json is last)
    ckpt = ws.checkpoints_dir("only") / "checkpoint-10"
    (ckpt / "llmforge-complete.json").unlink(missing_ok=True)
    state = ckpt / "trainer_state.json"
    state.write_text(state.read_text()[:200])
    args = ["train", "--resume", "-s", f"project.workdir={ws.root}"]
    for key, value in settings(tiny_llama_dir, "only", 10).items():
        args += ["-s", f"{key}={value}"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert "no complete checkpoint" in out.output and "checkpoint-10: trainer_state.json is cut short" in out.output
    assert "--force" in out.output and "Traceback" not in out.output
    assert not ws.run_manifest("only").exists()  # refused: nothing was silently restarted
