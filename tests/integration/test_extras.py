"""Each extra carries what its commands import: a command run where only the core and that extra's dependencies
can be imported either works or names the extra it lacks (exit 2), never an internal error."""

from __future__ import annotations

import pytest
from core_guard import run_cli
from tiny_gguf import build_gguf


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, tiny_tokenizer_dir):
    return build_gguf(tmp_path_factory.mktemp("extras") / "tiny.gguf", tiny_tokenizer_dir)


def test_deploy_dry_run_needs_only_the_deploy_extra(gguf_file):
    result = run_cli("deploy", "ollama", str(gguf_file), "--name", "tiny", "--dry-run", "--json", extras=("deploy",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "tiny"' in result.stdout or '"tiny"' in result.stdout


@pytest.mark.parametrize(
    ("extras", "missing"), [((), "serve"), (("serve",), "llamacpp")], ids=["core-only", "serve-only"]
)
def test_serve_dry_run_checks_the_extras_the_real_run_needs(gguf_file, extras, missing):
    result = run_cli("serve", "--model", str(gguf_file), "--dry-run", extras=extras)
    assert result.returncode == 2, (result.stdout[-1000:], result.stderr[-2000:])
    assert f"'{missing}' extra" in result.stderr and "llmforge-cli" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_serve_dry_run_passes_with_the_extras_it_needs(gguf_file):
    result = run_cli("serve", "--model", str(gguf_file), "--dry-run", extras=("serve", "llamacpp"))
    assert result.returncode == 0, result.stderr[-2000:]
