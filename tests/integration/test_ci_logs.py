"""What a CI log shows (stdout piped): a plain line per logging step and evaluation, the backend and why, no
carriage returns or library noise, and on an interruption a resume command that, run as printed, continues the run
from its checkpoint. Export and eval likewise: a line per phase and nothing from the libraries on stderr."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_serve import tiny_gguf  # noqa: E402, F401  (fixture)
from train_data import chat_rows, workspace_with  # noqa: E402

import llmforge  # noqa: E402
from llmforge.config import load_config  # noqa: E402
from llmforge.training import train  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402

CODE = Path(llmforge.__file__).resolve().parents[1]  # the llmforge under test, for the subprocesses too
NOISE = ("Loading weights", "Writing model shards", "FutureWarning", "n_ctx_train (0)", "it/s]", "Traceback")


def env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CODE), "HF_HUB_OFFLINE": "1"}


def llmforge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmforge", *args]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {path} appeared"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def assert_clean(log: str) -> None:
    assert "\r" not in log
    for noise in NOISE:
        assert noise not in log, f"{noise!r} in:\n{log}"


def test_piped_training_logs_plain_lines_and_its_resume_hint_resumes(tiny_llama_dir, tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(), chat_rows(4)))
    # Part of the run's setup lives in a config file, part in -s values and a typed flag: a resume command that
    # drops any of them is refused (config changed) or cannot find the model.
    config = tmp_path / "ci.yaml"
    config.write_text(f"project:\n  workdir: {ws.root}\nmodel:\n  name: {tiny_llama_dir}\n"
                      "train:\n  learning_rate: 0.005\n  logging_steps: 5\n", encoding="utf-8")
    args = ["train", "-c", str(config), "--method", "lora", "-s", "train.max_steps=40", "-s", "train.save_every=10",
            "-s", "train.eval_every=20", "-s", "train.seed=7", "-s", "train.run_name=ci"]
    proc = subprocess.Popen(llmforge_cmd(*args), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(ws.checkpoints_dir("ci") / "checkpoint-10" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert_clean(out + err)
    assert re.search(r"^run ci: lora with the trl backend \(auto: .+\), 40 steps$", out, re.M), out
    assert re.search(r"^train: step 5/40, loss \d+\.\d{4}, lr \S+, \d+ tok/s, ETA \d+:\d\d:\d\d$", out, re.M), out

    hint = re.search(r"^hint: continue with: (.+)$", err, re.M)
    assert hint, err
    command = shlex.split(hint.group(1))
    assert command[:3] == ["llmforge", "train", "--resume"] and "train.learning_rate=0.005" not in command
    stopped_at = max(int(p.name.split("-")[1]) for p in ws.checkpoints_dir("ci").glob("checkpoint-*"))

    resumed = subprocess.run(llmforge_cmd(*command[1:]), env=env(), cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_clean(resumed.stdout + resumed.stderr)
    assert f"resuming from {ws.checkpoints_dir('ci') / f'checkpoint-{stopped_at}'}" in resumed.stdout
    steps = [int(s) for s in re.findall(r"^train: step (\d+)/40, loss", resumed.stdout, re.M)]
    assert re.search(r"^train: step 40/40, loss .+, ETA 0:00:00$", resumed.stdout, re.M), resumed.stdout
    assert steps and steps[0] > stopped_at and steps[-1] == 40  # continued, not restarted from step 0
    assert re.search(r"^train: step 40/40, eval loss \d+\.\d{4}$", resumed.stdout, re.M), resumed.stdout
    manifest = json.loads(ws.run_manifest("ci").read_text())
    assert manifest["resumed_from"].endswith(f"checkpoint-{stopped_at}") and manifest["steps"] == 40
    summary = next(line for line in resumed.stdout.splitlines() if line.startswith("trained ci: "))
    assert re.search(r", eval loss \d+\.\d{4}, ", summary)  # the summary line is not wrapped mid-value


def test_piped_export_prints_its_phases_and_no_library_noise(tiny_llama_dir, tmp_path):
    # an adapter run: the merge loads it with peft (the FutureWarning), verification loads HF weights (their bar)
    # and opens the GGUF vocab-only in llama.cpp (the false n_ctx_train (0) line)
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    run = "lora-20261129-194500-a-run-name-long-enough-to-be-cut-at-eighty-columns"
    cfg = load_config(None, [], {"model.name": str(tiny_llama_dir), "train.method": "lora", "train.run_name": run,
                                 "train.max_steps": 2}).config
    train(cfg.model, cfg.train, ws)
    export = subprocess.run(llmforge_cmd("export", "gguf", run, "-q", "f16", "-s", f"project.workdir={ws.root}",
                                         "-s", f"model.name={tiny_llama_dir}"),
                            env=env(), capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    assert_clean(export.stdout + export.stderr)
    assert export.stderr == ""
    for phase in ("merging 1 adapter(s)", f"writing {run}-f16.gguf", f"verifying {run}-f16.gguf"):
        assert re.search(rf"^export gguf: {re.escape(phase)}", export.stdout, re.M), export.stdout
    assert f"GGUF export of {run}" in export.stdout.splitlines()
    assert f"files: {run}-f16.gguf" in export.stdout.splitlines()


def test_piped_eval_prints_its_progress_and_no_library_noise(tiny_llama_dir, tiny_gguf, tmp_path):  # noqa: F811
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    (ws.root / "data" / "test.jsonl").write_text((ws.root / "data" / "train.jsonl").read_text())
    folder = tmp_path / "a-model-folder-whose-name-alone-is-longer-than-a-table-column-would-be"
    folder.symlink_to(tiny_llama_dir)
    evaluated = subprocess.run(llmforge_cmd("eval", "--compare", f"{folder},{tiny_gguf}", "--limit", "2",
                                            "--max-new-tokens", "2", "-s", f"project.workdir={ws.root}"),
                               env=env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    assert_clean(evaluated.stdout + evaluated.stderr)
    # the tiny model was made with 512 positions and eval asks llama.cpp for more: a true warning, and kept
    assert [line for line in evaluated.stderr.splitlines() if "> n_ctx_train (512)" not in line] == []
    lines = evaluated.stdout.splitlines()
    labels = re.findall(r"^eval: (.+): loading$", evaluated.stdout, re.M)
    assert len(labels) == 2, evaluated.stdout
    for label in labels:
        for line in (f"eval: {label}: generate 1/2", f"eval: {label}: generate 2/2", f"eval: {label}: done"):
            assert line in lines, evaluated.stdout
    assert f"eval: {labels[0]}: loss 2/2" in lines  # the HF folder also gets perplexity
    header = next(line for line in lines if "┃ metric" in line)
    assert all(f" {label} " in header for label in labels), header  # the summary's columns are not folded


def test_piped_serve_says_what_it_loads_before_the_address(tiny_gguf, tmp_path):  # noqa: F811
    proc = subprocess.Popen(llmforge_cmd("serve", "--model", str(tiny_gguf), "--port", "0",
                                         "-s", "project.workdir=work"),
                            env=env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("Ctrl-C stops")):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "\n".join(lines) + out + err
    assert_clean(log)
    assert lines[0] == f"serve: loading {tiny_gguf} with the llamacpp engine", lines
    assert lines[1].startswith("serving ") and f"from {tiny_gguf}" in lines[1], lines
