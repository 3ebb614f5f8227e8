"""Workspace paths, atomic outputs, manifests and the run registry."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmforge import atomic, manifest, registry
from llmforge.errors import UsageError
from llmforge.workspace import Workspace


def test_paths_follow_conventions(tmp_path):
    ws = Workspace(tmp_path / "w")
    assert ws.split_file("train") == tmp_path / "w/data/train.jsonl"
    assert ws.rejected_file.name == "rejected.jsonl" and ws.duplicates_file.name == "duplicates.jsonl"
    assert ws.adapter_dir("r1") == tmp_path / "w/runs/r1/adapter"
    assert ws.metrics_file("r1") == tmp_path / "w/runs/r1/metrics.jsonl"
    assert ws.gguf_file("r1", "demo", "Q4_K_M") == tmp_path / "w/export/r1/demo-q4_k_m.gguf"
    assert ws.modelfile("bot") == tmp_path / "w/deploy/bot/Modelfile"
    with pytest.raises(ValueError):
        ws.split_file("dev")


def test_default_workdir_uses_project_name():
    from llmforge.config import load_config

    assert load_config(sets=["project.name=acme"], env={}).config.project.workspace_root == Path("llmforge-work/acme")


def test_latest_run_is_newest_finished(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(UsageError, match="no finished training run"):
        ws.latest_run()
    for name, finished in [("b", "2026-01-02T00:00:00"), ("a", "2026-01-03T00:00:00")]:
        ws.run_dir(name).mkdir(parents=True)
        atomic.write_json(ws.run_manifest(name), {"finished_at": finished})
    ws.run_dir("unfinished").mkdir()
    assert ws.runs() == ["b", "a"] and ws.latest_run() == "a"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    atomic.write_text(target, "whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_only_with_force(tmp_path):
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(UsageError, match="already exists") as err:
        with atomic.atomic_dir(target):
            pass
    assert "--force" in err.value.hint
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target, force=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic.atomic_dir(target, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture
def umask():
    """Set the process umask for one test (the default one comes back after)."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_published_outputs_get_the_umask_permissions(tmp_path, umask, mask, file_mode, dir_mode):
    # mkstemp/mkdtemp make 0600/0700 and the rename keeps it: Ollama or a llama.cpp server running as another user
    # could not read an export
    umask(mask)
    written = [atomic.write_text(tmp_path / "a.txt", "x"), atomic.write_json(tmp_path / "m.json", {}),
               atomic.write_bytes(tmp_path / "b.bin", b"x")]
    with atomic.atomic_path(tmp_path / "model.gguf") as tmp:
        with open(tmp, "wb") as fh:  # as GGUFWriter and llama.cpp open the path they are given
            fh.write(b"GGUF")
    written.append(tmp_path / "model.gguf")
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path.name
    for force in (False, True):  # a new folder, then one replacing it
        with atomic.atomic_dir(tmp_path / "merged", force=force) as tmp:
            (tmp / "config.json").write_text("{}")
            # as safetensors saves weights: a private temp file of its own, renamed into place
            fd, own = tempfile.mkstemp(dir=tmp)
            os.close(fd)
            os.replace(own, tmp / "model.safetensors")
        assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == dir_mode
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "merged" / name).stat().st_mode) == file_mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "m.json", "merged", "model.gguf"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    left = [tmp_path / f".m-f16.gguf.{dead}.0a1b2c3d.tmp", tmp_path / ".m-q8_0.gguf.k3j_x9ab.tmp"]  # killed; pre-pid
    for path in left:
        path.write_bytes(b"GGUF half")
    (tmp_path / ".merged.x1y2z3ab.tmp").mkdir()  # a merge folder cut off mid-way
    (tmp_path / ".merged.x1y2z3ab.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".m-f16.for-quantize.gguf").write_bytes(b"old fixed-name temporary")
    busy = tmp_path / f".m-f32.gguf.{live}.4e5f6a7b.tmp"  # another process is writing this one right now
    busy.write_bytes(b"in progress")
    kept = [tmp_path / "m-f16.gguf", tmp_path / ".hidden-user-file", busy]
    for path in kept[:2]:
        path.write_bytes(b"keep")
    removed = atomic.remove_stale(tmp_path, (".*.for-quantize.gguf",))
    assert sorted(p.name for p in removed) == sorted([p.name for p in left] + [".merged.x1y2z3ab.tmp",
                                                                               ".m-f16.for-quantize.gguf"])
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert atomic.remove_stale(tmp_path / "absent") == []


def test_manifest_hashes_inputs(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text('{"text": "x"}\n')
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a").write_text("1")
    m = manifest.build("test", {"data": f, "folder": d, "absent": tmp_path / "nope"}, manifest.Timer(), extra=1)
    assert m["inputs"]["data"]["sha256"] == manifest.sha256_file(f)
    assert len(m["inputs"]["folder"]["sha256"]) == 64 and m["inputs"]["absent"]["sha256"] is None
    assert m["versions"]["llmforge"] and m["extra"] == 1 and m["wall_seconds"] >= 0
    (d / "a").write_text("2")
    assert manifest.sha256_path(d) != m["inputs"]["folder"]["sha256"]


def test_registry_records_lineage(tmp_path):
    path = tmp_path / "registry.json"
    registry.record(path, "dataset", "data-abc", sha256="abc")
    registry.record(path, "run", "lora-1", parent="data-abc", method="lora")
    registry.record(path, "export", "lora-1/q8_0", parent="lora-1")
    registry.record(path, "deployment", "bot", parent="lora-1/q8_0")
    registry.record(path, "run", "lora-1", parent="data-abc", method="lora", status="complete")
    chain = registry.lineage(path, "bot")
    assert [e["id"] for e in chain] == ["data-abc", "lora-1", "lora-1/q8_0", "bot"]
    assert registry.find(path, "lora-1")["status"] == "complete"
    assert len(registry.read(path)) == 4
    assert json.loads(path.read_text())["version"] == 1


def test_corrupt_registry_is_a_clear_error(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="registry is corrupt"):
        registry.read(path)
