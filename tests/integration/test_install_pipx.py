"""The README's install line, for real: build the wheel, `pipx install` it into a fresh environment (core only), and
run the commands a core install promises. The distribution is `llmforge-cli` (the index's `llmforge` is someone
else's placeholder); the command stays `llmforge`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds a wheel and a fresh environment; tests/unit/test_core_install simulates a core install fast
def test_pipx_install_of_the_wheel_gives_a_working_core_cli(tmp_path):
    if shutil.which("pipx", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("pipx is not installed (it is in the dev extra)")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip(f"the package index is unreachable: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.startswith("llmforge_cli-"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        assert "Name: llmforge-cli" in zf.read(metadata).decode()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPX_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"), PIPX_MAN_DIR=str(tmp_path / "man"))
    pipx = str(Path(sys.executable).parent / "pipx")
    installed = subprocess.run(
        [pipx, "install", "--python", sys.executable, str(wheel)], capture_output=True, text=True, env=env, timeout=600
    )
    if installed.returncode != 0 and "No matching distribution" in installed.stderr:
        pytest.skip(f"the package index is unreachable: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stdout[-1000:] + installed.stderr[-2000:]
    llmforge = tmp_path / "bin" / "llmforge"
    assert llmforge.exists(), installed.stdout

    # The fresh environment holds the core dependencies only: no torch, no extras.
    venv_python = tmp_path / "pipx" / "venvs" / "llmforge-cli" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert probe.stdout.strip() == "True", probe.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(llmforge), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    assert run("--help").returncode == 0
    version = run("-V")
    assert version.returncode == 0 and version.stdout.startswith("llmforge "), version.stderr
    doctor = run("doctor", "--json")
    assert doctor.returncode in (0, 1), doctor.stderr[-2000:]
    assert "torch" in doctor.stdout and "Traceback" not in doctor.stderr
    init = run("config", "init", "my.yaml")
    assert init.returncode == 0, init.stderr[-2000:]
    assert run("config", "validate", "my.yaml").returncode == 0
    missing = run("train", "-c", "my.yaml")
    assert missing.returncode == 2 and "llmforge-cli[train]" in missing.stderr, missing.stderr[-2000:]
