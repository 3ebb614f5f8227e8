"""What a core install (`pipx install llmforge-cli`, no extras) gives must work: --help, config and doctor, and every
other command must name the extra it lacks. Proven in a subprocess where importing anything outside the core dependencies (as the
installed package metadata declares them, transitively) fails, as it would in a core-only environment."""

from __future__ import annotations

import json

from core_guard import run_cli


def test_help_config_and_runs_work_with_core_dependencies_only(tmp_path):
    assert run_cli("--help").returncode == 0
    for command in ("data", "train", "tune", "eval", "export", "deploy", "serve", "chat", "runs", "config", "doctor"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, (command, result.stderr[-1500:])
    shown = run_cli("config", "show", "-s", "train.lora.rank=8", "--sources", "--json")
    assert shown.returncode == 0, shown.stderr[-1500:]
    assert json.loads(shown.stdout)["sources"]["train.lora.rank"] == "--set"
    assert run_cli("runs", "list").returncode == 0


def test_commands_that_need_an_extra_say_which():
    result = run_cli("train", "-s", "model.name=some/model", "-s", "train.data=x.jsonl")
    assert result.returncode == 2
    assert "extra" in result.stderr and "pipx inject llmforge" in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    tune = ("tune", "-s", "model.name=some/model", "-s", "tune.space={train.lora.rank: [4, 8]}")
    for args in (tune, ("serve", "--model", "x.gguf"), ("data", "stats", "x.jsonl")):
        result = run_cli(*args)
        assert result.returncode == 2 and "pipx inject llmforge" in result.stderr, (args, result.stderr[-1500:])


def test_chat_needs_no_extra():
    # llmforge.openai_client is standard library only: the core install can talk to any OpenAI-compatible endpoint
    result = run_cli("chat", "http://127.0.0.1:9")
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9" in result.stderr, result.stderr[-1500:]
    assert "pipx inject" not in result.stderr and "Traceback" not in result.stderr
