"""Output a CI log can read (stdout not a terminal, as under CliRunner): no wrapping at 80 columns, tables whole,
known library noise dropped at its logger or warning filter while real warnings stay."""

from __future__ import annotations

import logging
import warnings

from typer.testing import CliRunner

from llmforge import registry
from llmforge.cli.app import app, quiet_known_noise
from llmforge.workspace import Workspace

runner = CliRunner()

LONG_RUN = "lora-20261129-194500-a-run-name-long-enough-to-be-cut-at-eighty-columns"


def test_runs_list_in_a_log_keeps_every_id_and_path_whole(tmp_path):
    root = tmp_path / "a-workspace-folder-whose-path-alone-is-longer-than-a-narrow-table-would-be"
    ws = Workspace(root)
    registry.record(ws.registry_file, "dataset", "data-51db68c5bcaa", status="complete")
    registry.record(ws.registry_file, "run", LONG_RUN, parent="data-51db68c5bcaa", status="complete",
                    metrics={"loss": 6.1046, "eval_loss": 6.1013, "steps": 30})
    registry.record(ws.registry_file, "export", f"{LONG_RUN}/q4_k_m", parent=LONG_RUN, status="complete",
                    metrics={"top1_agreement": 0.9375, "max_abs_diff": 0.00037})
    out = runner.invoke(app, ["runs", "list", "-s", f"project.workdir={root}"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "…" not in out.output and "\r" not in out.output
    assert any(f"workspace {root}" == line.strip() for line in lines)  # the title is not wrapped either
    row = next(line for line in lines if f" {LONG_RUN}/q4_k_m " in line)
    assert f" {LONG_RUN} " in row and "top1_agreement=0.9375" in row and "max_abs_diff=0.00037" in row
    run_row = next(line for line in lines if line.split("│")[1:3] and line.split("│")[2].strip() == LONG_RUN)
    assert "eval_loss=6.101" in run_row and "steps=30" in run_row


def test_plain_lines_are_not_wrapped_at_80_columns(tmp_path):
    # a long one-line message (config validate prints the path): one line, however long
    path = tmp_path / ("x" * 120 + ".yaml")
    path.write_text("project:\n  name: p\n")
    out = runner.invoke(app, ["config", "validate", str(path)])
    assert out.exit_code == 0, out.output
    assert f"ok {path}" in out.output.splitlines()


def _collect(name: str, monkeypatch) -> list[str]:
    source = logging.getLogger(name)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    monkeypatch.setattr(source, "disabled", False)
    monkeypatch.setattr(source, "level", logging.DEBUG)
    handler = Collect()
    source.addHandler(handler)
    monkeypatch.setattr(source, "handlers", [handler])
    return seen


def test_llama_cpp_false_n_ctx_train_line_is_dropped_and_a_real_one_kept(monkeypatch):
    quiet_known_noise()
    seen = _collect("llama-cpp-python", monkeypatch)
    source = logging.getLogger("llama-cpp-python")
    source.warning("llama_context: n_ctx_seq (512) > n_ctx_train (0) -- possible training context overflow\n")
    source.warning("llama_context: n_ctx_seq (4096) > n_ctx_train (2048) -- possible training context overflow\n")
    source.warning("llama_model_load: error loading model\n")
    assert seen == ["llama_context: n_ctx_seq (4096) > n_ctx_train (2048) -- possible training context overflow\n",
                    "llama_model_load: error loading model\n"]


def test_the_known_future_warning_is_filtered_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                      "`is_activation_checkpointing` instead.", FutureWarning, stacklevel=1)
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]


def test_library_progress_bars_are_off_in_a_log(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    quiet_known_noise()
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # a user's own choice wins
    quiet_known_noise()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_data_prepare_in_a_log_prints_a_line_per_10000_records_and_its_table_whole(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    rows = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                          {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(10_001)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    workdir = tmp_path / "a-workspace-folder-whose-path-alone-is-longer-than-a-narrow-table-would-be"
    out = runner.invoke(app, ["data", "prepare", "in.jsonl", "-s", f"project.workdir={workdir}"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "\r" not in out.output and "…" not in out.output
    assert "data prepare: read 10,000 records" in lines
    assert f"messages dataset -> {workdir / 'data'}" in lines  # the title, unwrapped, on its own line
    assert f"report: {workdir / 'data' / 'report.md'}" in lines


def test_data_stats_in_a_log_keeps_file_names_whole(tmp_path):
    import json

    folder = tmp_path / "a-dataset-folder-whose-path-alone-is-longer-than-a-narrow-table-would-be"
    folder.mkdir()
    row = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    (folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    out = runner.invoke(app, ["data", "stats", str(folder / "train.jsonl"), "-s", f"project.workdir={tmp_path}"])
    assert out.exit_code == 0, out.output
    assert "…" not in out.output
    assert any(f" {folder / 'train.jsonl'} " in line and line.rstrip().endswith("│") for line in out.output.splitlines())


def test_train_log_lines_and_eta_of_a_resumed_run(monkeypatch, capsys):
    from llmforge.cli import train as train_cli

    clock = iter([100.0, 112.0])  # first trained step at t=100, the log at step 15 at t=112: 3 s a step
    monkeypatch.setattr(train_cli.time, "monotonic", lambda: next(clock))
    log = train_cli._PlainLog().__enter__()
    # the trainer's "start" comes before it restores the checkpoint's step count
    log.update({"event": "start", "step": 0, "total_steps": 40})
    log.update({"event": "step", "step": 11, "total_steps": 40, "loss": None})
    log.update({"event": "log", "step": 15, "total_steps": 40, "loss": 6.1234, "learning_rate": 1.5e-4,
                "tokens_per_second": 2345.6})
    log.update({"event": "eval", "step": 20, "total_steps": 40, "eval_loss": 6.0037})
    assert capsys.readouterr().out.splitlines() == [
        "train: step 15/40, loss 6.1234, lr 1.50e-04, 2346 tok/s, ETA 0:01:15",
        "train: step 20/40, eval loss 6.0037",
    ]


def test_resume_command_repeats_the_config_file_sets_and_typed_flags_quoted():
    import shlex

    from llmforge.cli.train import _resume_command

    command = _resume_command(
        "my run", "configs/ci run.yaml", ["train.lora.rank=8", "train.run_name=old", "data.inputs=[a b.jsonl]"],
        {"--method": "lora", "--model": "./base model", "--data": None, "--max-steps": 200}, json_=True,
    )
    assert shlex.split(command) == [
        "llmforge", "train", "--resume", "-c", "configs/ci run.yaml", "--method", "lora", "--model", "./base model",
        "--max-steps", "200", "-s", "train.lora.rank=8", "-s", "data.inputs=[a b.jsonl]", "-s", "train.run_name=my run",
        "--json",
    ]
