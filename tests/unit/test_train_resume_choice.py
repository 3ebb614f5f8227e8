"""Which checkpoint `train --resume` starts from, on checkpoint folders laid out as the Trainer saves them (no torch:
the files are written by hand, in the Trainer's formats)."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from llmforge.training import resume


def safetensors(path: Path, n_floats: int = 16) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4 * n_floats)


def torch_file(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:  # torch.save writes a zip archive
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


def checkpoint(folder: Path, step: int, *, marker: bool = True) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text("{}")
    safetensors(ckpt / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        torch_file(ckpt / name)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}, indent=2))
    if marker:
        resume.write_marker(ckpt, step)
    return ckpt


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_newest_complete_checkpoint_wins_and_torn_newer_ones_are_named(tmp_path):
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 20)
    cut(checkpoint(tmp_path, 30, marker=False) / "trainer_state.json")  # killed while writing its last file
    chosen, skipped = resume.newest_complete(tmp_path)
    assert chosen == tmp_path / "checkpoint-20"
    assert [s["checkpoint"] for s in skipped] == ["checkpoint-30"]
    assert "trainer_state.json" in skipped[0]["reason"] and "cut short" in skipped[0]["reason"]


def test_each_torn_file_is_a_reason_to_skip(tmp_path):
    (tmp_path / "a").mkdir()
    checkpoint(tmp_path / "a", 1)
    assert resume.problem(tmp_path / "a" / "checkpoint-1") is None

    no_state = checkpoint(tmp_path / "b", 1, marker=False)
    (no_state / "trainer_state.json").unlink()  # killed before the Trainer wrote it
    assert "no trainer_state.json" in resume.problem(no_state)

    weights = checkpoint(tmp_path / "c", 1)
    cut(weights / "adapter_model.safetensors", 0.8)
    assert "adapter_model.safetensors is cut short" in resume.problem(weights)

    header = checkpoint(tmp_path / "d", 1)
    cut(header / "adapter_model.safetensors", 0.05)  # not even the header is whole
    assert "adapter_model.safetensors" in resume.problem(header)

    gone = checkpoint(tmp_path / "e", 1)
    (gone / "adapter_model.safetensors").unlink()
    assert "no weights file" in resume.problem(gone)

    # no marker (an older llmforge saved it): the torch.save files are checked for their zip end record
    optimizer = checkpoint(tmp_path / "f", 1, marker=False)
    assert resume.problem(optimizer) is None
    cut(optimizer / "optimizer.pt")
    assert "optimizer.pt is cut short" in resume.problem(optimizer)

    # with a marker: every file it lists must still have the size it had when the save completed
    changed = checkpoint(tmp_path / "g", 1)
    (changed / "scheduler.pt").write_bytes(b"x")
    assert "scheduler.pt has 1 bytes" in resume.problem(changed)
    (changed / "scheduler.pt").unlink()
    assert "scheduler.pt is missing" in resume.problem(changed)


def test_no_complete_checkpoint_gives_none_and_every_reason(tmp_path):
    cut(checkpoint(tmp_path, 10, marker=False) / "trainer_state.json")
    (tmp_path / "checkpoint-20").mkdir()  # created, then killed before anything was written
    (tmp_path / "checkpoint-x").mkdir()  # not a Trainer checkpoint name: ignored
    chosen, skipped = resume.newest_complete(tmp_path)
    assert chosen is None and [s["checkpoint"] for s in skipped] == ["checkpoint-20", "checkpoint-10"]
    assert resume.newest_complete(tmp_path / "missing") == (None, [])
