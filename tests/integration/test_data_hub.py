"""Hugging Face dataset ids as `data prepare` inputs, offline: the split comes from the local datasets cache that an
earlier online `load_dataset` left (built here the way the library lays it out), with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} times 3?"},
                      {"role": "assistant", "content": f"{i} times 3 is {3 * i}."}]} for i in range(40)]  # fmt: skip


def cache_dataset(hf_home: Path, repo: str, split: str, rows: list[dict]) -> None:
    """Lay out `repo`'s `split` in the datasets cache as `load_dataset(repo)` leaves it after a download."""
    staging = hf_home.parent / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    parquet = staging / f"{split}.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    builder = datasets.load_dataset_builder("parquet", data_files={split: str(parquet)}, cache_dir=str(staging / "c"))
    builder.download_and_prepare()
    owner, name = repo.split("/")
    target = hf_home / "datasets" / f"{owner}___{name}" / "default" / "0.0.0" / ("0" * 40)
    shutil.copytree(builder.cache_dir, target)
    for p in target.iterdir():
        if p.name.startswith("parquet-"):
            p.rename(target / p.name.replace("parquet-", f"{name}-", 1))


def run(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_DATASETS_CACHE", None)
    return subprocess.run([sys.executable, "-m", "llmforge", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)  # fmt: skip


def test_prepare_reads_a_hub_dataset_split_from_the_local_cache(tmp_path):
    hf_home = tmp_path / "hf"
    cache_dataset(hf_home, "acme/math-chats", "train_sft", ROWS)
    out = run(["data", "prepare", "acme/math-chats", "--split", "train_sft", "-s", "project.name=p",
               "-s", "data.dedupe.near=false", "--json"], hf_home, tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["counts"]["read"] == 40 and report["dataset_kind"] == "messages"
    data = tmp_path / "llmforge-work" / "p" / "data"
    written = [json.loads(line) for s in ("train", "val", "test") for line in (data / f"{s}.jsonl").open()]
    assert sorted(r["messages"][0]["content"] for r in written) == sorted(r["messages"][0]["content"] for r in ROWS)

    # hf:owner/name means the same; an unknown split names the ones there are; an uncached id says why, exit 2
    again = run(["data", "validate", "hf:acme/math-chats", "--split", "train_sft"], hf_home, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    wrong = run(["data", "validate", "acme/math-chats", "--split", "nope"], hf_home, tmp_path)
    assert wrong.returncode == 2 and "train_sft" in wrong.stderr, wrong.stderr[-2000:]
    missing = run(["data", "validate", "acme/not-cached"], hf_home, tmp_path)
    assert missing.returncode == 2 and "HF_HUB_OFFLINE" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr + wrong.stderr
