"""`llmforge data select`: a content-diverse subset of the train split, val/test untouched, registered with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from llmforge import registry
from llmforge.cli.app import app
from llmforge.data import selection

runner = CliRunner()
TOPICS = {
    "cooking": "bake bread flour yeast oven dough knead loaf crust butter",
    "astronomy": "telescope galaxy nebula orbit planet comet stars light year",
    "football": "goal striker penalty referee match league keeper pitch offside",
    "finance": "stock bond dividend interest inflation market portfolio yield",
    "gardening": "soil compost seeds prune roses weeds watering mulch bulbs",
}


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def clustered(variants: int = 40) -> list[dict]:
    """5 topics, `variants` near-duplicates each (one word differs), interleaved so no topic sits in a block."""
    rows = []
    for i in range(variants):
        for topic, vocab in TOPICS.items():
            rows.append(chat(f"Tell me about {topic} {vocab} variant{i}?", f"{vocab} {vocab} note{i}."))
    return rows


def prepared(folder: Path, train: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "val.jsonl").write_text(json.dumps(chat("held out val?", "yes")) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(chat("held out test?", "yes")) + "\n")
    return folder


def topic_of(line: str) -> str:
    return json.loads(line)["messages"][0]["content"].split()[3]


def test_select_5_of_5_clusters_picks_one_per_topic_and_beats_random(tmp_path):
    source = prepared(tmp_path / "data", clustered())
    result = runner.invoke(app, ["data", "select", str(source), "--size", "5", "--json", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 5 and sorted(topic_of(line) for line in lines) == sorted(TOPICS)
    coverage = report["coverage"]
    assert coverage["clusters"] == 5 and coverage["selected"]["clusters_covered"] == 5
    assert coverage["selected"]["mean_distance_to_nearest"] <= coverage["random"]["mean_distance_to_nearest"]
    # a random subset of the same size misses topics in most draws; the selection never does
    texts = [selection._text(r) for r in clustered()]
    labels = [topic_of(json.dumps(r)) for r in clustered()]
    vectors = selection.features(texts)
    random_topics = [
        len({labels[i] for i in np.random.default_rng(s).choice(len(texts), 5, replace=False)}) for s in range(20)
    ]
    assert sum(n < 5 for n in random_topics) > 10
    for seed in range(5):
        assert len({labels[i] for i in selection.farthest_points(vectors, 5, seed)}) == 5


def test_select_is_deterministic_with_a_seed_and_keeps_val_test_untouched(tmp_path):
    source = prepared(tmp_path / "data", clustered(8))
    outs = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["data", "select", str(source), "--fraction", "0.25", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "kept 10 of 40" in result.output
        outs.append((tmp_path / name / "train.jsonl").read_bytes())
    assert outs[0] == outs[1]
    original = set((source / "train.jsonl").read_bytes().splitlines())
    assert set(outs[0].splitlines()) <= original
    for split in ("val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (source / f"{split}.jsonl").read_bytes()


def test_size_and_fraction_errors_have_hints(tmp_path):
    source = str(prepared(tmp_path / "data", clustered(2)))
    too_many = runner.invoke(app, ["data", "select", source, "--size", "11"])
    assert too_many.exit_code == 2 and "larger than the 10 records" in too_many.output
    assert "hint: pass --size 10 or less" in too_many.output
    both = runner.invoke(app, ["data", "select", source, "--size", "2", "--fraction", "0.5"])
    assert both.exit_code == 2 and "not both" in both.output
    neither = runner.invoke(app, ["data", "select", source])
    assert neither.exit_code == 2 and "--size N or --fraction F" in neither.output
    out_of_range = runner.invoke(app, ["data", "select", source, "--fraction", "1.5"])
    assert out_of_range.exit_code == 2 and "outside (0, 1]" in out_of_range.output
    missing = runner.invoke(app, ["data", "select", "--size", "2"])
    assert missing.exit_code == 2 and "llmforge data prepare" in missing.output
    assert "Traceback" not in too_many.output + both.output + neither.output + missing.output


def test_default_source_is_the_workspace_and_the_registry_links_to_it(tmp_path):
    root = Path("llmforge-work/llmforge-project")
    source = prepared(root / "data", clustered(4))
    result = runner.invoke(app, ["data", "select", "--size", "6", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    out = root / "data-select-6"
    assert Path(report["output"]).resolve() == out.resolve() and (out / "manifest.json").is_file()
    from llmforge.manifest import sha256_file

    assert report["parent"] == "data-" + sha256_file(source / "train.jsonl")[:12]
    assert report["dataset_id"] == "data-" + sha256_file(out / "train.jsonl")[:12]
    entry = registry.find(root / "registry.json", report["dataset_id"])
    assert entry is not None and entry["kind"] == "dataset" and entry["parent"] == report["parent"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parent"] == report["parent"] and manifest["selection"]["selected"] == 6
    # what `llmforge train -s train.data=<folder>` reads, and the parent id its run would record
    from llmforge.training.data import load
    from llmforge.workspace import Workspace

    data = load(str(out), Workspace(root), "sft")
    assert data.dataset_id == report["dataset_id"] and data.val is not None
    again = runner.invoke(app, ["data", "select", "--size", "6"])
    assert again.exit_code == 2 and "--force" in again.output


def test_identical_records_are_never_picked_twice():
    vectors = selection.features(["same words here"] * 4 + ["other text entirely"])
    picked = selection.farthest_points(vectors, 4, seed=0)
    assert len(set(picked.tolist())) == 4 and 4 in picked.tolist()
