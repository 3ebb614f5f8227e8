"""CLI wiring in-process: every --help, config show/init/validate, exit codes, error mapping, debug tracebacks."""

from __future__ import annotations

import json

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from llmforge.cli.app import app, command_paths
from llmforge.errors import LlmforgeError, UsageError

runner = CliRunner()


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "llmforge")
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_root_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    for name in ("config", "doctor"):
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("llmforge ")


def test_config_show_sources(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("project:\n  name: demo\ntrain:\n  lora:\n    rank: 4\n    alpha: 16\n")
    result = runner.invoke(app, ["config", "show", "-c", str(cfg), "--set", "train.lora.rank=8", "--sources", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["config"]["train.lora.rank"] == 8 and data["sources"]["train.lora.rank"] == "--set"
    assert data["config"]["train.lora.alpha"] == 16 and data["sources"]["train.lora.alpha"] == f"{cfg}:6"
    assert data["sources"]["train.epochs"] == "default"


def test_config_show_sources_table_and_yaml(tmp_path):
    result = runner.invoke(app, ["config", "show", "-s", "train.lora.rank=8", "--sources"])
    assert result.exit_code == 0
    assert "train.lora.rank" in result.output and "--set" in result.output
    result = runner.invoke(app, ["config", "show", "-s", "project.name=zeta"])
    assert "name: zeta" in result.output


def test_typo_exits_2_with_did_you_mean():
    result = runner.invoke(app, ["config", "show", "--set", "train.lora.rnak=8"])
    assert result.exit_code == 2
    assert "did you mean 'train.lora.rank'" in result.output


def test_config_init_writes_then_refuses_without_force(tmp_path):
    result = runner.invoke(app, ["config", "init", "--model", "m/x", "--name", "p"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "llmforge.yaml").exists()
    again = runner.invoke(app, ["config", "init"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["config", "init", "--force"])
    assert forced.exit_code == 0
    assert runner.invoke(app, ["config", "validate", "llmforge.yaml"]).exit_code == 0


def test_config_validate_reports_bad_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("serve:\n  prot: 80\n")
    result = runner.invoke(app, ["config", "validate", "bad.yaml"])
    assert result.exit_code == 2
    assert "serve.prot" in result.output and "did you mean 'serve.port'" in result.output


def _app_raising(exc: Exception) -> typer.Typer:
    from llmforge.cli.app import LlmforgeGroup

    test_app = typer.Typer(cls=LlmforgeGroup)

    @test_app.command()
    def boom() -> None:
        raise exc

    @test_app.command()
    def other() -> None:
        pass

    return test_app


def test_error_mapping_message_hint_and_exit_codes():
    result = runner.invoke(_app_raising(UsageError("bad input", hint="fix it")), ["boom"])
    assert result.exit_code == 2
    assert "error: bad input" in result.output and "hint: fix it" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(_app_raising(LlmforgeError("work failed")), ["boom"])
    assert result.exit_code == 1


def test_debug_env_shows_traceback(monkeypatch):
    monkeypatch.setenv("LLMFORGE_DEBUG", "1")
    result = runner.invoke(_app_raising(UsageError("bad input")), ["boom"])
    assert isinstance(result.exception, UsageError)


def test_known_library_noise_is_dropped_and_other_warnings_kept(monkeypatch):
    import logging

    from llmforge.cli.app import quiet_known_noise

    quiet_known_noise()
    source = logging.getLogger("bitsandbytes.backends.cpu.ops")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    # Other tests' libraries may reconfigure logging: observe this logger directly, whatever the global state.
    monkeypatch.setattr(source, "disabled", False)
    monkeypatch.setattr(source, "level", logging.WARNING)
    handler = Collect()
    source.addHandler(handler)
    try:
        source.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        source.warning("something else went wrong")
    finally:
        source.removeHandler(handler)
    assert seen == ["something else went wrong"]
