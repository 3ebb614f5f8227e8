"""`llmforge export ...` through Typer's CliRunner: flags reach the config, errors become exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmforge.cli import export as export_cli
from llmforge.cli.app import LlmforgeGroup
from llmforge.export import gguf_export

needs_llama_cpp = pytest.mark.skipif(not gguf_export.has_llama_cpp(), reason="llama-cpp-python not installed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """No llama.cpp converter cached by an earlier real run may change what 'auto' does here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def cli():
    # the same wiring as cli/app.py: app.add_typer(export.app, name="export")
    root = typer.Typer(cls=LlmforgeGroup)
    root.callback()(lambda: None)
    root.add_typer(export_cli.app, name="export")
    return root


def run(*args: str):
    return CliRunner().invoke(cli(), list(args))


def test_help_pages_run():
    for sub in ([], ["merge"], ["gguf"], ["lora-gguf"]):
        r = run("export", *sub, "--help")
        assert r.exit_code == 0 and "Example" in r.output


@needs_llama_cpp
def test_export_gguf_json_writes_verified_files_in_the_workspace(tiny_llama_dir, tmp_path):
    r = run("export", "gguf", str(tiny_llama_dir), "--quant", "F16,q8_0", "--json",
            "--set", f"project.workdir={tmp_path / 'ws'}")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["verified"] and [f["quant"] for f in result["files"]] == ["f16", "q8_0"]
    run_name = tiny_llama_dir.name
    assert (tmp_path / "ws" / "export" / run_name / f"{run_name}-q8_0.gguf").is_file()
    assert result["config"]["quant"] == ["f16", "q8_0"]
    r = run("export", "gguf", str(tiny_llama_dir), "--quant", "f16", "--set", f"project.workdir={tmp_path / 'ws'}")
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output


def test_no_verify_and_bad_input_exit_codes(tiny_llama_dir, tmp_path):
    ws = f"project.workdir={tmp_path / 'ws'}"
    r = run("export", "gguf", str(tiny_llama_dir), "--quant", "f16", "--no-verify", "--json", "--set", ws)
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.stdout)
    assert manifest["verified"] is False and manifest["config"]["verify"] is False
    assert manifest["files"][0]["verification"] == "skipped (--no-verify)"
    r = run("export", "gguf", str(tmp_path / "nowhere"), "--quant", "f16", "--set", ws)
    assert r.exit_code == 2 and "nowhere" in r.output
    r = run("export", "gguf", str(tiny_llama_dir), "--quant", "q9_9", "--set", ws)
    assert r.exit_code == 2 and "unknown quant type" in r.output


def test_unsupported_architecture_runs_llama_cpp_converter_when_a_checkout_is_given(tiny_llama_dir, tmp_path):
    """The subprocess boundary is what is tested: a stand-in convert_hf_to_gguf.py with llama.cpp's command line
    (model dir, --outfile, --outtype) that writes a GGUF with our own converter."""
    import shutil

    other = tmp_path / "phi"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["PhiForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    repo = Path(__file__).resolve().parents[2]
    (checkout / "convert_hf_to_gguf.py").write_text(
        "import argparse, json, shutil, sys, tempfile, pathlib\n"
        f"sys.path.insert(0, {str(repo)!r})\n"
        "p = argparse.ArgumentParser(); p.add_argument('model'); p.add_argument('--outfile'); p.add_argument('--outtype')\n"
        "a = p.parse_args()\n"
        "from llmforge.export import gguf_convert\nfrom llmforge.export.quant_types import QUANT_TYPES\n"
        "tmp = pathlib.Path(tempfile.mkdtemp()) / 'm'; shutil.copytree(a.model, tmp)\n"
        "c = json.loads((tmp / 'config.json').read_text()); c['architectures'] = ['LlamaForCausalLM']\n"
        "(tmp / 'config.json').write_text(json.dumps(c))\n"
        "gguf_convert.convert(tmp, pathlib.Path(a.outfile), QUANT_TYPES[a.outtype])\n"
    )
    ws = f"project.workdir={tmp_path / 'ws'}"
    r = run("export", "gguf", str(other), "--quant", "f16", "--no-verify", "--set", ws)
    assert r.exit_code == 2 and "PhiForCausalLM" in r.output and "LlamaForCausalLM" in r.output
    r = run("export", "gguf", str(other), "--quant", "f16", "--no-verify", "--json", "--set", ws,
            "--set", f"export.llama_cpp_dir={checkout}")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["converter"] == "llama.cpp"
    assert (tmp_path / "ws" / "export" / "phi" / "phi-f16.gguf").stat().st_size > 10_000
    (checkout / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('boom: unknown model')\n")
    r = run("export", "gguf", str(other), "--quant", "f16", "--no-verify", "--force", "--set", ws,
            "--set", f"export.llama_cpp_dir={checkout}")
    assert r.exit_code == 1 and "boom: unknown model" in r.output


def test_llama_cpp_converter_is_unpacked_from_the_source_package(tmp_path):
    """Only convert_hf_to_gguf.py, conversion/ and gguf-py/ of the sdist's vendor/llama.cpp are kept."""
    import io
    import tarfile

    from llmforge.export import llama_cpp_converter

    archive = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/llama.py",
                     "vendor/llama.cpp/gguf-py/gguf/__init__.py", "vendor/llama.cpp/ggml/src/big.c", "llama_cpp/x.py"):
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    target = llama_cpp_converter.extract_converter(archive, tmp_path / "cache" / "9.9.9")
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["conversion/llama.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert llama_cpp_converter.converter_script(target) == target / "convert_hf_to_gguf.py"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["9.9.9"]  # no staging folder left


@needs_llama_cpp
def test_merge_and_lora_gguf_commands_print_their_results(tiny_llama_dir, tmp_path):
    from test_export_merge import make_run

    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-1", tiny_llama_dir, seed=7)
    setting = f"project.workdir={ws.root}"
    r = run("export", "merge", "lora-1", "--set", setting)
    assert r.exit_code == 0, r.output
    assert "merged 1 adapter(s)" in r.output and (ws.merged_dir("lora-1") / "model.safetensors").is_file()
    r = run("export", "lora-gguf", "--set", setting)  # default: the latest run
    assert r.exit_code == 0, r.output
    assert "GGUF export of lora-1" in r.output and "manifest" in r.output
    r = run("export", "gguf", "lora-1", "-q", "f16", "--set", setting)  # reuses merged/
    assert r.exit_code == 0, r.output
    assert "verified" in r.output
    manifest = json.loads(ws.export_manifest("lora-1").read_text())
    assert [f["quant"] for f in manifest["files"]] == ["f16"] and manifest["verified"]
    assert manifest["lora_adapters"][0]["verified"] and manifest["lora_adapters"][0]["path"] == "lora/lora-1-lora-f32.gguf"
    assert (ws.export_dir("lora-1") / "lora" / "lora-1-lora-f32.gguf").is_file()
    assert next(f for f in manifest["files"] if f["quant"] == "f16")["tokenization"]["ok"]


def test_export_name_that_leaves_the_export_folder_writes_nothing(tiny_llama_dir, tmp_path):
    # On main, --name ../../../../escape wrote the GGUF outside export/<run>/ and listed it in the manifest.
    ws = tmp_path / "a" / "b" / "ws"
    r = run("export", "gguf", str(tiny_llama_dir), "--quant", "f16", "--no-verify", "--name", "../../../../escape",
            "--set", f"project.workdir={ws}")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "--name" in r.output and "'../../../../escape'" in r.output
    assert not list(tmp_path.rglob("*.gguf")) and not ws.exists()
