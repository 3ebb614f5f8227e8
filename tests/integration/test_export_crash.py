"""An export killed mid-way (kill -9: no cleanup runs) and the run after it: a final-named GGUF is always listed in
the manifest, the next run removes the temporaries it left and needs no --force for files no manifest lists, and a
listed file still needs --force. Published files get the umask's permissions."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmforge.cli import export as export_cli
from llmforge.cli.app import LlmforgeGroup
from llmforge.workspace import Workspace

pytest.importorskip("gguf")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def run(*args: str):
    root = typer.Typer(cls=LlmforgeGroup)
    root.callback()(lambda: None)
    root.add_typer(export_cli.app, name="export")
    return CliRunner().invoke(root, list(args))


def listed(ws: Workspace, run_name: str) -> set[str]:
    manifest = ws.export_manifest(run_name)
    if not manifest.is_file():
        return set()
    body = json.loads(manifest.read_text())
    return {f["path"] for f in body.get("files", []) + body.get("lora_adapters", [])}


def final_ggufs(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.gguf") if not p.name.startswith(".")}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# The child exports f16 then f32 and SIGKILLs itself at one point: a few tensors into the second file, or right
# after the manifest is written (the last moment before files get their final names).
KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from llmforge import atomic
from llmforge.config.export import ExportConfig
from llmforge.config.model import ModelConfig
from llmforge.export import export_gguf, gguf_convert
from llmforge.workspace import Workspace

where = sys.argv[3]
files_started = []

def after_tensor(i):
    if i == 0:
        files_started.append(i)
    if where == "second file" and len(files_started) == 2 and i == 3:
        os.kill(os.getpid(), signal.SIGKILL)

gguf_convert.SEAMS = gguf_convert.Seams(after_tensor=after_tensor)
write_json = atomic.write_json

def write_then_die(path, obj):
    write_json(path, obj)
    if where == "manifest written" and Path(path).name == "manifest.json":
        os.kill(os.getpid(), signal.SIGKILL)

atomic.write_json = write_then_die
export_gguf(ModelConfig(), ExportConfig(quant=["f16", "f32"], verify=False), Workspace(Path(sys.argv[1])),
            sys.argv[2])
"""


@pytest.mark.parametrize("where", ["second file", "manifest written"])
def test_an_export_killed_mid_way_leaves_no_unlisted_gguf_and_the_rerun_cleans_up(where, tiny_llama_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    name = tiny_llama_dir.name
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(ws.root), str(tiny_llama_dir), where],
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = ws.export_dir(name)
    assert final_ggufs(folder) <= listed(ws, name)  # every file with a final name is in a manifest
    left = [n for n in hidden(folder) if n.endswith(".tmp")]
    assert left  # what the killed process was writing is still there, under temporary names

    r = run("export", "gguf", str(tiny_llama_dir), "-q", "f16,f32", "--no-verify", "--set",
            f"project.workdir={ws.root}")
    assert r.exit_code == 0, r.output  # no --force: nothing a manifest listed was there to replace
    assert f"removed {len(left)} temporary file(s) left by an interrupted export" in r.output
    assert hidden(folder) == [] and final_ggufs(folder) == listed(ws, name) == {f"{name}-f16.gguf",
                                                                                 f"{name}-f32.gguf"}
    for path in [ws.export_manifest(name), *folder.glob("*.gguf")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # readable by an Ollama or llama.cpp service user


def test_leftovers_of_a_crashed_export_need_no_force_but_listed_files_do(tiny_llama_dir, tmp_path):
    ws = Workspace(tmp_path / "ws")
    name = tiny_llama_dir.name
    setting = f"project.workdir={ws.root}"
    r = run("export", "gguf", str(tiny_llama_dir), "-q", "f16", "--no-verify", "--set", setting)
    assert r.exit_code == 0, r.output
    folder = ws.export_dir(name)
    f16 = folder / f"{name}-f16.gguf"
    # What a q8_0 export killed before its manifest left (as llmforge wrote exports until now): a whole, final-named,
    # unverified GGUF no manifest lists, and temporaries named by mkstemp/mkdtemp or fixed names.
    (folder / f"{name}-q8_0.gguf").write_bytes(f16.read_bytes())
    (folder / f".{name}-q8_0.gguf.k3j_x9ab.tmp").write_bytes(b"GGUF half")
    (folder / ".merged.x1y2z3ab.tmp").mkdir()
    (folder / ".merged.x1y2z3ab.tmp" / "model.safetensors").write_bytes(b"half")
    (folder / f".{name}-f16.for-quantize.gguf").write_bytes(b"GGUF")

    r = run("export", "gguf", str(tiny_llama_dir), "-q", "q8_0", "--no-verify", "--set", setting)
    assert r.exit_code == 0, r.output
    assert "removed 3 temporary file(s)" in r.output
    assert "replaced 1 GGUF file(s) no manifest listed" in r.output and f"{name}-q8_0.gguf" in r.output
    assert hidden(folder) == []
    assert listed(ws, name) == final_ggufs(folder) == {f"{name}-f16.gguf", f"{name}-q8_0.gguf"}
    assert (folder / f"{name}-q8_0.gguf").read_bytes() != f16.read_bytes()  # really replaced by a q8_0

    before = f16.read_bytes()
    r = run("export", "gguf", str(tiny_llama_dir), "-q", "f16", "--no-verify", "--set", setting)
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output  # listed: the user's work
    assert f16.read_bytes() == before
    r = run("export", "gguf", str(tiny_llama_dir), "-q", "f16", "--no-verify", "--force", "--set", setting)
    assert r.exit_code == 0, r.output


def test_lora_gguf_and_merge_clean_up_after_a_crash_too(tiny_llama_dir, tmp_path):
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_export_merge import make_run

    ws = Workspace(tmp_path / "ws")
    make_run(ws, "lora-1", tiny_llama_dir, seed=7)
    setting = f"project.workdir={ws.root}"
    folder = ws.export_dir("lora-1")
    (folder / "lora").mkdir(parents=True)
    (folder / "lora" / "lora-1-lora-f32.gguf").write_bytes(b"GGUF whole but never listed")
    (folder / "lora" / ".lora-1-lora-f32.gguf.k3j_x9ab.tmp").write_bytes(b"GGUF half")
    (folder / ".lora-1-base-f32.for-lora-check.gguf").write_bytes(b"GGUF")
    r = run("export", "lora-gguf", "lora-1", "--no-verify", "--set", setting)
    assert r.exit_code == 0, r.output
    assert "removed 2 temporary file(s)" in r.output and "lora/lora-1-lora-f32.gguf" in r.output
    assert hidden(folder) == [] and listed(ws, "lora-1") == final_ggufs(folder) == {"lora/lora-1-lora-f32.gguf"}
    assert stat.S_IMODE((folder / "lora" / "lora-1-lora-f32.gguf").stat().st_mode) == 0o644
    r = run("export", "lora-gguf", "lora-1", "--no-verify", "--set", setting)
    assert r.exit_code == 2 and "already exists" in r.output  # now it is listed

    (folder / ".merged.x1y2z3ab.tmp").mkdir()  # a merge killed mid-way
    r = run("export", "merge", "lora-1", "--set", setting)
    assert r.exit_code == 0, r.output
    assert "removed 1 temporary file(s)" in r.output and hidden(folder) == []
    merged = ws.merged_dir("lora-1")
    assert stat.S_IMODE(merged.stat().st_mode) == 0o755  # was 0700 (mkdtemp), 0600 weights (safetensors' writer)
    assert stat.S_IMODE((merged / "model.safetensors").stat().st_mode) == 0o644
