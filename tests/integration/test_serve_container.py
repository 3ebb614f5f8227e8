"""Build examples/serve-deploy's image and serve a tiny GGUF from it: health, auth, a chat answer, a non-root user,
and a refusal to start without a key. Needs a reachable Docker daemon (skips otherwise) and takes minutes (slow).

LLMFORGE_TEST_DOCKER_BUILD_ARGS passes build arguments ("PYTHON_IMAGE=my-python:3.11 PIP_NO_INDEX=1": a base image
imported locally where Docker Hub is out of reach, an offline build from wheels/); LLMFORGE_TEST_DOCKER_NETWORK=host
builds and runs with the host's network (a daemon without a bridge).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tiny_gguf import REPLY, build_gguf

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "llmforge-serve:test"
KEY = "container-test-key"
# read at import: every test runs with the LLMFORGE_* variables removed (tests/conftest.py)
NETWORK = os.environ.get("LLMFORGE_TEST_DOCKER_NETWORK")
BUILD_ARGS = os.environ.get("LLMFORGE_TEST_DOCKER_BUILD_ARGS", "").split()


def _daemon_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else f"no Docker daemon reachable ({proc.stderr.strip()[:120]})"


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_daemon_problem() is not None, reason=f"needs a container runtime: {_daemon_problem()}"),
]


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:2])} failed: {proc.stderr[-2000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image():
    args = ["build", "-f", "examples/serve-deploy/Dockerfile", "-t", IMAGE]
    if NETWORK:
        args += ["--network", NETWORK]
    for build_arg in BUILD_ARGS:
        args += ["--build-arg", build_arg]
    docker(*args, str(ROOT), timeout=1800)  # compiles llama-cpp-python unless wheels/ holds a wheel
    return IMAGE


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_gguf(folder / "model.gguf", tiny_tokenizer_dir)
    folder.chmod(0o755)
    (folder / "model.gguf").chmod(0o644)  # the container's user is not this one
    return folder


def run_container(image: str, models: Path, env: dict[str, str]) -> tuple[str, str]:
    """Start the image detached; returns (container id, base URL)."""
    name = f"llmforge-test-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges:true", "-v", f"{models}:/models:ro"]  # fmt: skip
    if NETWORK == "host":
        port = free_port()
        args += ["--network", "host", "-e", f"LLMFORGE_SERVE__PORT={port}"]
        url = f"http://127.0.0.1:{port}"
    else:
        args += ["-p", "127.0.0.1::8000"]
        url = None
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    docker(*args, image)
    if url is None:
        try:
            mapped = docker("port", name, "8000/tcp").stdout.strip().splitlines()[0]
        except AssertionError:  # no port published (a daemon without a bridge): leave no container behind
            docker("rm", "-f", name, check=False)
            raise
        url = f"http://127.0.0.1:{mapped.rsplit(':', 1)[1]}"
    return name, url


def test_image_serves_the_mounted_gguf_behind_the_key(image, models):
    name, url = run_container(image, models, {"LLMFORGE_SERVE__API_KEY": KEY})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", docker("logs", name, check=False).stderr[-2000:]
            assert time.monotonic() < deadline, "the server did not answer /health in 120 s"
            time.sleep(1)
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16, "temperature": 0}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 401
        answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == REPLY
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        # the image's own HEALTHCHECK command passes against the running server
        check = docker("inspect", "--format", "{{json .Config.Healthcheck.Test}}", name).stdout
        assert "/health" in check
        test = json.loads(check)
        assert test[0] == "CMD"
        assert docker("exec", name, *test[1:], check=False).returncode == 0
    finally:
        docker("rm", "-f", name, check=False)


def test_image_refuses_to_start_without_a_key(image, models):
    name, _ = run_container(image, models, {})
    try:
        deadline = time.monotonic() + 60
        while docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip() != "exited":
            assert time.monotonic() < deadline, "the container kept running without a key"
            time.sleep(0.5)
        assert docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "2"
        assert "no API key is set" in docker("logs", name).stderr + docker("logs", name).stdout
    finally:
        docker("rm", "-f", name, check=False)
