"""`data select`: a diverse subset of a prepared train split, by greedy farthest-point (k-center) selection over
hashed TF-IDF vectors of word uni- and bigrams. Val and test are copied unchanged, so no selection leaks across splits.

What to select (the source, how many, where to) is decided by llmforge/data/stage.py's plan_select; select() does it.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmforge import atomic, manifest, registry
from llmforge.data.dedupe import words
from llmforge.errors import UsageError
from llmforge.workspace import Workspace

if TYPE_CHECKING:
    from llmforge.data.stage import SelectPlan, SelectResult

# 1024 float32 columns: 4 KiB a record, so 100k records fit in 400 MiB; collisions only blur rare n-grams.
DIMENSIONS = 1024
# Coverage is judged against this many k-means clusters of the full train split (fewer when fewer are kept): 20
# could not tell k-center from random on 200 topics, 50 could (50 vs 44 covered at 200 kept of 20k).
COVERAGE_CLUSTERS = 50
CHUNK = 4096  # rows per block of distance products: bounds the n x k temporaries


def _text(obj: Any) -> str:
    """Every string value of a record (message contents, prompt, chosen, text), joined: what the content is."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return " ".join(_text(v) for k, v in obj.items() if k != "role")
    if isinstance(obj, list):
        return " ".join(_text(v) for v in obj)
    return ""


def features(texts: list[str], dimensions: int = DIMENSIONS) -> np.ndarray:
    """Rows of L2-normalized TF-IDF over word unigrams and bigrams hashed (crc32, stable across runs) into columns."""
    counts = np.zeros((len(texts), dimensions), dtype=np.float32)
    for row, text in enumerate(texts):
        found = words(text)
        grams = found + [a + " " + b for a, b in zip(found, found[1:])]
        for gram in grams:
            counts[row, zlib.crc32(gram.encode()) % dimensions] += 1.0
    document_frequency = np.count_nonzero(counts, axis=0)
    idf = np.log((1 + len(texts)) / (1 + document_frequency)) + 1.0
    vectors = np.log1p(counts) * idf.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _distance_to(vectors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Cosine distance of every row to its nearest center, in blocks."""
    out = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK):
        block = vectors[start : start + CHUNK] @ centers.T
        out[start : start + CHUNK] = 1.0 - block.max(axis=1)
    return np.clip(out, 0.0, 2.0)


def farthest_points(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-center: start at a seeded record, then repeatedly take the record farthest from everything taken
    (lowest index on ties). Within a factor 2 of the best possible covering radius; one pass over the data per pick."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(vectors)))]
    nearest = np.clip(1.0 - vectors @ vectors[chosen[0]], 0.0, 2.0)
    nearest[chosen[0]] = -1.0  # taken: exact duplicates sit at distance 0 too, and must not be taken twice
    for _ in range(k - 1):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.clip(1.0 - vectors @ vectors[pick], 0.0, 2.0))
        nearest[chosen] = -1.0
    return np.array(chosen, dtype=np.int64)


def kmeans(vectors: np.ndarray, k: int, seed: int, iterations: int = 10) -> np.ndarray:
    """Cluster labels from spherical k-means with k-means++ starts (seeded): the yardstick for coverage."""
    rng = np.random.default_rng(seed)
    centers = [vectors[int(rng.integers(len(vectors)))]]
    nearest = _distance_to(vectors, np.array(centers)) ** 2
    for _ in range(k - 1):
        total = float(nearest.sum())
        index = int(rng.choice(len(vectors), p=nearest / total)) if total > 0 else int(rng.integers(len(vectors)))
        centers.append(vectors[index])
        nearest = np.minimum(nearest, _distance_to(vectors, vectors[index : index + 1]) ** 2)
    centers_array = np.array(centers)
    labels = np.zeros(len(vectors), dtype=np.int64)
    for _ in range(iterations):
        for start in range(0, len(vectors), CHUNK):
            labels[start : start + CHUNK] = np.argmax(vectors[start : start + CHUNK] @ centers_array.T, axis=1)
        for c in range(k):
            members = vectors[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                norm = np.linalg.norm(mean)
                centers_array[c] = mean / norm if norm else centers_array[c]
    return labels


def coverage(vectors: np.ndarray, selected: np.ndarray, seed: int) -> dict[str, Any]:
    """How well `selected` covers the full set, next to a seeded random subset of the same size as a baseline."""
    k = min(COVERAGE_CLUSTERS, len(selected), len(vectors))
    labels = kmeans(vectors, k, seed)
    baseline = np.random.default_rng(seed).choice(len(vectors), size=len(selected), replace=False)

    def measure(indices: np.ndarray) -> dict[str, Any]:
        distance = _distance_to(vectors, vectors[indices])
        return {
            "clusters_covered": int(len(np.unique(labels[indices]))),
            "mean_distance_to_nearest": round(float(distance.mean()), 4),
            "max_distance_to_nearest": round(float(distance.max()), 4),
        }

    return {"clusters": k, "selected": measure(selected), "random": measure(baseline)}


def _source_dir(dataset: str | None, workspace: Workspace) -> Path:
    if not dataset:
        folder = workspace.data_dir
    else:
        given = Path(dataset).expanduser()
        folder = given.parent if given.is_file() else given
    if not (folder / "train.jsonl").is_file():
        raise UsageError(
            f"no train.jsonl in {folder}",
            hint="run `llmforge data prepare INPUTS` first, or name a prepared data folder (one holding train.jsonl)",
        )
    return folder


def target_size(available: int, size: int | None, fraction: float | None) -> int:
    """The number of records to keep, from --size or --fraction (exactly one)."""
    if size is not None and fraction is not None:
        raise UsageError("give --size or --fraction, not both", hint="e.g. `llmforge data select --size 500`")
    if size is None and fraction is None:
        raise UsageError("say how many records to keep", hint="pass --size N or --fraction F (0 < F <= 1)")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UsageError(f"--fraction {fraction} is outside (0, 1]", hint="e.g. --fraction 0.25 keeps a quarter")
        size = max(1, round(available * fraction))
    assert size is not None
    if size < 1:
        raise UsageError(f"--size {size} must be at least 1", hint="e.g. --size 500")
    if size > available:
        raise UsageError(
            f"--size {size} is larger than the {available} records of the train split",
            hint=f"pass --size {available} or less, or --fraction",
        )
    return size


def texts(train_file: Path, lines: list[bytes]) -> list[str]:
    """Each train line's text, as the features see it; a line that is not JSON is refused."""
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(_text(json.loads(line)))
        except ValueError as exc:
            raise UsageError(
                f"{train_file}:{number}: not JSON ({exc})",
                hint="select from a folder written by `llmforge data prepare`",
            ) from None
    return out


def select(plan: SelectPlan) -> SelectResult:
    """The planned subset: k-center over the train lines, written with val/test copied and a manifest, as a dataset
    folder (atomically), and registered."""
    from llmforge.data.stage import SelectResult

    p = plan.prepared
    source, workspace, lines, seed, k = p.source, p.workspace, p.lines, plan.seed, plan.selected
    out_dir, train_file, timer, force = p.output, p.source / "train.jsonl", p.timer, plan.force
    vectors = features(p.texts)
    chosen = farthest_points(vectors, k, seed)
    report = coverage(vectors, chosen, seed)
    keep = np.sort(chosen)  # the source's order, so a selection reads like its source
    parent = "data-" + manifest.sha256_file(train_file)[:12]
    with atomic.atomic_dir(out_dir, force=force) as tmp:
        with open(tmp / "train.jsonl", "wb") as fh:
            for index in keep:
                line = lines[index]
                fh.write(line if line.endswith(b"\n") else line + b"\n")
        copied = []
        for split in ("val", "test"):  # unchanged: selecting in train only keeps the held-out splits leak-free
            if (source / f"{split}.jsonl").is_file():
                shutil.copyfile(source / f"{split}.jsonl", tmp / f"{split}.jsonl")
                copied.append(split)
        sha = manifest.sha256_file(tmp / "train.jsonl")
        dataset_id = "data-" + sha[:12]  # the id `llmforge train` records for a run made from this folder
        outputs = {"train": {"path": str(out_dir / "train.jsonl"), "records": k, "sha256": sha}}
        for split in copied:
            outputs[split] = {
                "path": str(out_dir / f"{split}.jsonl"),
                "sha256": manifest.sha256_file(tmp / f"{split}.jsonl"),
            }
        info = manifest.build(
            "data select",
            inputs={name: source / f"{name}.jsonl" for name in ["train", *copied]},
            timer=timer,
            outputs=outputs,
            dataset_id=dataset_id,
            parent=parent,
            selection={"method": "k-center", "features": f"tf-idf word 1-2 grams hashed to {DIMENSIONS}",
                       "seed": seed, "selected": k, "available": len(lines), "coverage": report},
        )  # fmt: skip
        atomic.write_json(tmp / "manifest.json", info)
    registry.record(
        workspace.registry_file, "dataset", dataset_id, parent=parent, path=str(out_dir), status="complete",
        metrics={"train": k, "clusters_covered": report["selected"]["clusters_covered"]},
    )  # fmt: skip
    return SelectResult(
        source=str(source), output=str(out_dir), dataset_id=dataset_id, parent=parent, selected=k,
        available=len(lines), seed=seed, coverage=report, copied=copied,
    )  # fmt: skip
