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
