"""examples/serve-deploy: the Dockerfile, the compose file and the systemd unit start a valid `llmforge serve`.

No container runtime is needed: each file's command line and environment go through `llmforge serve --dry-run` in a
temporary folder standing in for the model volume (tests/integration/test_serve_container.py builds and runs the
image where a Docker daemon answers). The unit also goes through `systemd-analyze verify` where systemd is present.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "serve-deploy"
ROOT = FOLDER.parents[1]

needs_serve_extras = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "llama_cpp")),
    reason="serve --dry-run checks the 'serve' and 'llamacpp' extras; install them to run this test",
)


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined and comments dropped."""
    stages: list[list[tuple[str, str]]] = [[]]  # instructions before the first FROM (global ARGs)
    joined = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        joined += line.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        if joined.strip():
            instruction, _, args = joined.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), args.strip()))
        joined = ""
    return stages


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return dict(pairs)


def models_volume(tmp_path: Path) -> Path:
    """A folder standing in for the mounted model volume, holding the model.gguf every file names."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.gguf").write_bytes(b"GGUF")  # --dry-run resolves the file; it loads no weights
    return models


def dry_run(argv: list[str], env: dict[str, str]):
    """`llmforge <argv> --dry-run --json` in-process with exactly these LLMFORGE_* settings."""
    from llmforge.cli.app import app

    assert argv[0] == "serve", argv
    return CliRunner().invoke(app, [*argv, "--dry-run", "--json"], env=env)


def test_dockerfile_builds_in_two_stages_and_runs_unprivileged_with_a_healthcheck():
    stages = dockerfile_stages((FOLDER / "Dockerfile").read_text())
    builder, runtime = stages[1], stages[-1]
    assert len(stages) == 3 and builder[0][1].endswith("AS builder")
    installs = " ".join(args for instruction, args in builder if instruction == "RUN")
    assert '"/src[serve,llamacpp]"' in installs and "--find-links /wheels" in installs
    runtime_runs = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert "build-essential" not in runtime_runs and "cmake" not in runtime_runs  # no compiler in the image
    assert ("COPY", "--from=builder /opt/llmforge /opt/llmforge") in runtime
    users = [args for instruction, args in runtime if instruction == "USER"]
    assert users == ["llmforge"] and "--uid 10001" in runtime_runs
    health = [args for instruction, args in runtime if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    assert env_of(runtime)["LLMFORGE_SERVE__HOST"] == "0.0.0.0"
    assert "LLMFORGE_SERVE__API_KEY" not in env_of(runtime)  # the key comes at run time, never baked in
    # every path the build copies is in the build context and not excluded by .dockerignore
    for instruction, args in builder:
        if instruction == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!examples/serve-deploy" in ignored and ".venv" in ignored


@needs_serve_extras
def test_the_images_command_serves_the_mounted_model_and_refuses_without_a_key(tmp_path):
    runtime = dockerfile_stages((FOLDER / "Dockerfile").read_text())[-1]
    cmd = json.loads([args for instruction, args in runtime if instruction == "CMD"][-1])
    assert cmd[0] == "llmforge"
    models = models_volume(tmp_path)
    env = {k: v.replace("/models/", f"{models}/") for k, v in env_of(runtime).items() if k.startswith("LLMFORGE_")}
    key = env_file(FOLDER / "serve.env.example")["LLMFORGE_SERVE__API_KEY"]

    result = dry_run(cmd[1:], {**env, "LLMFORGE_SERVE__API_KEY": key})
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["engine"], plan["path"], plan["host"], plan["port"]) == (
        "llamacpp", str(models / "model.gguf"), "0.0.0.0", 8000)  # fmt: skip
    assert plan["api_key_required"] and plan["warning"] is None

    refused = dry_run(cmd[1:], env)  # no key: a container reachable from the network must not start
    assert refused.exit_code == 2 and "no API key is set" in refused.output


@needs_serve_extras
def test_compose_publishes_on_loopback_with_the_key_from_an_env_file(tmp_path):
    compose = yaml.safe_load((FOLDER / "compose.yaml").read_text())
    service = compose["services"]["serve"]
    assert (FOLDER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == FOLDER / "Dockerfile"
    assert service["ports"] and all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert service["env_file"] == "serve.env" and (FOLDER / "serve.env.example").is_file()
    assert any(v.endswith(":/models:ro") for v in service["volumes"]) and "workspace:/workspace" in service["volumes"]
    assert "workspace" in compose["volumes"]
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert "command" not in service  # the image's CMD runs: checked by the test above

    # the env file's settings, on top of the image's, serve the model at the path the volume mounts
    runtime = dockerfile_stages((FOLDER / "Dockerfile").read_text())[-1]
    models = models_volume(tmp_path)
    env = {**env_of(runtime), **env_file(FOLDER / "serve.env.example")}
    env = {k: v.replace("/models/", f"{models}/") for k, v in env.items() if k.startswith("LLMFORGE_")}
    result = dry_run(["serve"], env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["api_key_required"] is True


def unit_file() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(FOLDER / "llmforge-serve.service")
    return unit


def test_systemd_unit_is_hardened_and_restarts_on_failure():
    service = unit_file()["Service"]
    assert service["User"] not in ("", "root") or service.get("DynamicUser") == "yes"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "Restart": "on-failure", "CapabilityBoundingSet": ""}.items():  # fmt: skip
        assert service[key] == value, key
    workspace = f"/var/lib/{service['StateDirectory']}"
    assert service["ReadWritePaths"] == service["WorkingDirectory"] == workspace
    assert service["EnvironmentFile"].startswith("/etc/")
    assert service["RestartPreventExitStatus"] == "2"  # llmforge's exit code for a usage error


@needs_serve_extras
def test_systemd_unit_execstart_is_a_valid_serve_that_needs_the_key(tmp_path):
    service = unit_file()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "llmforge"
    models = models_volume(tmp_path)
    args = [a.replace("/srv/llmforge/models/", f"{models}/") for a in argv[1:]]
    assert str(models / "model.gguf") in args
    key = env_file(FOLDER / "serve.env.example")["LLMFORGE_SERVE__API_KEY"]
    result = dry_run(args, {"LLMFORGE_SERVE__API_KEY": key})
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["host"] == "0.0.0.0" and plan["api_key_required"]
    assert dry_run(args, {}).exit_code == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify checks that ExecStart's program exists: point it at this environment's llmforge
    llmforge = Path(sys.executable).parent / "llmforge"
    if not llmforge.exists():
        pytest.skip(f"no llmforge script beside {sys.executable}")
    text = (FOLDER / "llmforge-serve.service").read_text().replace("/opt/llmforge/bin/llmforge", str(llmforge))
    unit = tmp_path / "llmforge-serve.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "llmforge-serve.service:" not in out, out
