"""The prepare pipeline: outputs and their schema, on_error, filters, exact and near dedupe, seeded splits without
leakage, and atomic output."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.config.data import DataConfig
from llmforge.config.model import ModelConfig
from llmforge.data import prepare
from llmforge.errors import InputError, UsageError
from llmforge.workspace import Workspace

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu river mountain forest ocean desert valley "
         "planet comet galaxy nebula orbit").split()  # fmt: skip


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def sentence(rng: random.Random, n: int = 24) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write(path: str, rows: list) -> str:
    Path(path).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(inputs, ws=None, force=False, **cfg) -> tuple[dict, Workspace]:
    ws = ws or Workspace(Path("work"))
    return prepare(DataConfig(inputs=list(inputs), **cfg), ModelConfig(), ws, force=force), ws


def all_records(ws: Workspace) -> list[dict]:
    return [r for split in ("train", "val", "test") for r in read(ws.split_file(split))]


def test_outputs_schema_report_manifest_and_registry(tmp_path):
    rng = random.Random(0)
    rows = [chat(f"Question {i}: {sentence(rng, 8)}?", sentence(rng)) for i in range(40)]
    report, ws = run([write("in.jsonl", rows)])
    for split in ("train", "val", "test"):
        for record in read(ws.split_file(split)):
            assert list(record) == ["messages"]
            assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert report["counts"]["read"] == 40 and report["counts"]["written"] == 40
    assert (report["counts"]["train"], report["counts"]["val"], report["counts"]["test"]) == (36, 2, 2)
    on_disk = json.loads(ws.data_report_json.read_text())
    assert on_disk["counts"] == report["counts"]
    assert "# Data report" in ws.data_report_md.read_text()
    assert (ws.data_dir / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((ws.data_dir / "manifest.json").read_text())
    assert manifest["stage"] == "data" and manifest["finished_at"]
    assert manifest["outputs"]["train"]["records"] == 36 and len(manifest["outputs"]["train"]["sha256"]) == 64
    assert report["dataset_id"] == on_disk["dataset_id"] == "data-" + manifest["outputs"]["train"]["sha256"][:12]
    assert "api_key: null" in (ws.data_dir / "config.yaml").read_text()
    registry = json.loads(ws.registry_file.read_text())["entries"]
    assert registry[0]["kind"] == "dataset" and registry[0]["id"] == report["dataset_id"]
    # `llmforge runs list` shows the folder's size and the split counts from these keys.
    assert registry[0]["path"] == str(ws.data_dir) and registry[0]["status"] == "complete"
    assert registry[0]["metrics"] == {k: report["counts"][k] for k in ("train", "val", "test")}
    assert not ws.rejected_file.exists()
    assert [p.name for p in ws.data_dir.iterdir() if p.name.startswith(".")] == []


def test_text_and_preference_datasets_feed_train(tmp_path):
    Path("docs").mkdir()
    for i in range(5):
        Path(f"docs/{i}.md").write_text(f"# Doc {i}\n\n{sentence(random.Random(i), 40)}\n")
    report, ws = run(["docs"])
    assert report["dataset_kind"] == "text"
    assert all(list(r) == ["text"] for r in all_records(ws)) and len(all_records(ws)) == 5
    rows = [{"prompt": f"Q{i} {sentence(random.Random(i), 6)}", "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(6)]  # fmt: skip
    report, ws2 = run([write("pref.jsonl", rows)], ws=Workspace(Path("work2")))
    assert report["dataset_kind"] == "preference"
    record = all_records(ws2)[0]
    assert list(record) == ["prompt", "chosen", "rejected"]
    assert record["prompt"][-1]["role"] == "user" and record["chosen"][0]["role"] == "assistant"


def test_on_error_fail_writes_nothing_and_lists_every_problem(tmp_path):
    path = write("in.jsonl", [chat("Hi?", "Hello"), "{oops", chat("Again?", "Yes"), {"messages": []}])
    with pytest.raises(InputError) as info:
        run([path])
    assert info.value.exit_code == 2
    assert "in.jsonl:2: json: invalid JSON" in info.value.message
    assert "in.jsonl:4: messages: empty conversation" in info.value.message
    assert not Path("work/data/train.jsonl").exists()
    assert list(Path("work/data").iterdir()) == []


def test_on_error_skip_writes_good_records_and_rejected(tmp_path):
    path = write("in.jsonl", [chat("Hi?", "Hello"), "{oops", chat("Again?", "Yes"), {"messages": []}])
    report, ws = run([path], on_error="skip")
    assert report["counts"]["rejected"] == 2 and report["counts"]["written"] == 2
    rejected = read(ws.rejected_file)
    assert [(r["file"], r["line"], r["field"]) for r in rejected] == [
        ("in.jsonl", 2, "json"),
        ("in.jsonl", 4, "messages"),
    ]
    assert rejected[1]["reason"] == "empty conversation" and rejected[1]["record"] == {"messages": []}
    # a clean rerun removes the stale rejected.jsonl
    run([write("in.jsonl", [chat("Hi?", "Hello")])], force=True)
    assert not ws.rejected_file.exists()


def test_existing_output_needs_force(tmp_path):
    path = write("in.jsonl", [chat("Hi?", "Hello")])
    run([path])
    with pytest.raises(UsageError, match="already exists") as info:
        run([path])
    assert "--force" in info.value.hint
    run([path], force=True)


def test_filters_lengths_answer_and_blocklist(tmp_path):
    rows = [chat("Short?", "ok"), chat("Long " * 50, "x" * 10), chat("Fine question?", "A fine answer."),
            chat("Tell me a secret", "The password is hunter2."), chat("Hi", "Hey")]  # fmt: skip
    report, ws = run(
        [write("in.jsonl", rows)],
        filter={"min_tokens": 25, "max_tokens": 200, "min_answer_chars": 3, "blocklist": [r"password\s+is"]},
        split={"train": 1.0, "val": 0.0, "test": 0.0},
    )
    assert report["length"]["unit"] == "characters"
    assert report["filtered"] == {
        "too short": 1, "too long": 1, "answer shorter than 3 characters": 1, "matches the blocklist": 1
    }  # fmt: skip
    assert report["filtered_examples"][0] == "in.jsonl:1: answer shorter than 3 characters"
    assert [r["messages"][0]["content"] for r in all_records(ws)] == ["Fine question?"]


def test_bad_blocklist_regex_is_a_config_error(tmp_path):
    with pytest.raises(UsageError, match="blocklist"):
        run([write("in.jsonl", [chat("a", "b")])], filter={"blocklist": ["("]})


def test_pii_is_scrubbed_and_counted(tmp_path):
    report, ws = run([write("in.jsonl", [chat("My mail is bob@example.com", "Noted, I will call 555-123-4567.")])],
                     split={"train": 1.0, "val": 0.0, "test": 0.0})  # fmt: skip
    assert report["pii"]["email"] == 1 and report["pii"]["phone"] == 1
    assert all_records(ws)[0]["messages"][1]["content"] == "Noted, I will call <PHONE>."


def test_exact_duplicates_keep_the_first_and_point_to_it(tmp_path):
    rows = [chat("What is up?", "The sky."), chat("Other?", "Yes."), chat("what  is UP?", "the sky."),
            chat("What is up?", "The sky.")]  # fmt: skip
    report, ws = run([write("in.jsonl", rows)], dedupe={"near": False})
    assert report["counts"]["exact_duplicates"] == 2 and report["counts"]["written"] == 2
    dupes = read(ws.duplicates_file)
    assert [(d["line"], d["kind"], d["duplicate_of"]["line"]) for d in dupes] == [(3, "exact", 1), (4, "exact", 1)]
    assert report["clusters"]["exact"]["largest"][0] == {"first": "in.jsonl:1", "duplicates": 2}


def test_near_duplicates_are_clustered_and_dropped(tmp_path):
    rng = random.Random(1)
    base = [sentence(rng, 60) for _ in range(30)]
    rows = [chat(f"Q{i}", text) for i, text in enumerate(base)]
    words = base[3].split()
    words[30] = "zebra"  # one word changed in 60: Jaccard of 3-shingles about 0.9
    rows.append(chat("Q3", " ".join(words)))
    rows.append(chat("Q3", " ".join(words[:-1])))  # and one word shorter
    report, ws = run([write("in.jsonl", rows)], dedupe={"threshold": 0.8})
    assert report["counts"]["near_duplicates"] == 2
    assert report["counts"]["written"] == 30
    dupes = read(ws.duplicates_file)
    assert sorted((d["line"], d["kind"], d["duplicate_of"]["line"]) for d in dupes) == [
        (31, "near", 4),
        (32, "near", 4),
    ]
    cluster = report["clusters"]["near"]["largest"][0]
    assert cluster["first"] == "in.jsonl:4" and cluster["size"] == 3


def test_dissimilar_records_are_not_near_duplicates(tmp_path):
    rng = random.Random(2)
    rows = [chat(f"Q{i}", sentence(rng, 40)) for i in range(200)]
    report, _ = run([write("in.jsonl", rows)])
    assert report["counts"]["near_duplicates"] == 0 and report["counts"]["written"] == 200


def _split_of(ws: Workspace) -> dict[str, str]:
    return {json.dumps(r, sort_keys=True): s for s in ("train", "val", "test") for r in read(ws.split_file(s))}


def test_split_is_deterministic_and_seeded(tmp_path):
    rng = random.Random(3)
    path = write("in.jsonl", [chat(f"Q{i} {sentence(rng, 5)}", sentence(rng, 20)) for i in range(300)])
    split = {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 7}
    r1, ws1 = run([path], ws=Workspace(Path("a")), split=split)
    _, ws2 = run([path], ws=Workspace(Path("b")), split=split)
    _, ws3 = run([path], ws=Workspace(Path("c")), split={**split, "seed": 8})
    assert (r1["counts"]["train"], r1["counts"]["val"], r1["counts"]["test"]) == (240, 30, 30)
    for s in ("train", "val", "test"):
        assert ws1.split_file(s).read_bytes() == ws2.split_file(s).read_bytes()
    assert _split_of(ws1) != _split_of(ws3)
    # the split of a record does not depend on the order of the input
    lines = Path(path).read_text().splitlines()
    random.Random(0).shuffle(lines)
    Path("shuffled.jsonl").write_text("\n".join(lines) + "\n")
    _, ws4 = run(["shuffled.jsonl"], ws=Workspace(Path("d")), split=split)
    assert _split_of(ws4) == _split_of(ws1)


def test_near_duplicate_clusters_never_straddle_splits(tmp_path):
    rng = random.Random(4)
    rows, families = [], {}
    for family in range(60):
        text = sentence(rng, 200)
        for variant in range(3):
            words = text.split()
            words[10 + 40 * variant] = f"variant{variant}"  # pairwise Jaccard of 3-shingles about 0.94
            answer = " ".join(words)
            families[answer] = family
            rows.append(chat(f"Family {family}?", answer))
    rng.shuffle(rows)
    split = {"train": 0.6, "val": 0.2, "test": 0.2}
    report, ws = run([write("in.jsonl", rows)], dedupe={"near_action": "group"}, split=split)
    assert report["counts"]["written"] == 180 and report["clusters"]["near"]["count"] == 60
    where: dict[int, set[str]] = {}
    for s in ("train", "val", "test"):
        for r in read(ws.split_file(s)):
            where.setdefault(families[r["messages"][1]["content"]], set()).add(s)
    assert len(where) == 60 and all(len(splits) == 1 for splits in where.values())
    assert {s for splits in where.values() for s in splits} == {"train", "val", "test"}


def test_failure_mid_write_leaves_no_outputs(tmp_path):
    rng = random.Random(5)
    path = write("in.jsonl", [chat(f"Q{i}", sentence(rng, 10)) for i in range(120_000 // 1000)])

    def explode(phase: str, n: int) -> None:
        if phase == "near-dedupe":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        prepare(DataConfig(inputs=[path]), ModelConfig(), Workspace(Path("work")), progress=explode)
    assert list(Path("work/data").iterdir()) == []  # no train.jsonl, no temp folder left behind


def test_signatures_are_datasketch_minhashes(tmp_path):
    """The spilled signatures are exactly datasketch's MinHash of the record's word shingles."""
    import zlib

    import numpy as np
    from datasketch import MinHash

    from llmforge.data.dedupe import NearDuplicates, shingles

    texts = [sentence(random.Random(i), 30) for i in range(4)] + [sentence(random.Random(4), 20_000)]  # sliced
    near = NearDuplicates(tmp_path / "sig.bin", num_perm=64)
    for text in texts:
        near.add(text)
    near.close()
    stored = np.fromfile(tmp_path / "sig.bin", dtype=np.uint32).reshape(5, 64)
    for text, row in zip(texts, stored):
        reference = MinHash(num_perm=64, seed=1, hashfunc=zlib.crc32)
        reference.update_batch(shingles(text, 3))
        assert (reference.hashvalues == row).all()
        assert abs(MinHash(num_perm=64, hashvalues=row, scheme=reference.scheme).jaccard(reference) - 1.0) < 1e-9
    # shingles are runs of lower-cased words, whatever the size and the script (the fast path joins encoded words)
    for text in [*texts[:4], "Ünïcode CAFÉ 東京 数据 😀\tand  tabs\n", "one", ""]:
        lower = text.lower().split()
        for size in (1, 2, 3, 5):
            runs = [lower[i : i + size] for i in range(len(lower) - size + 1)] if len(lower) > size else [lower]
            assert shingles(text, size) == [" ".join(run).encode() for run in runs]


def test_signatures_of_a_batch_are_the_per_text_signatures():
    """MinHasher.signatures (numpy over a chunk's shingles) gives signature()'s bytes for every text, whatever the
    shingle size, the number of permutations, texts shorter than a shingle, and texts longer than a slice."""
    from llmforge.data.dedupe import MinHasher, encoded_words, exact_digests, exact_key, joined_words, words

    rng = random.Random(11)
    texts = [sentence(rng, rng.randint(0, 60)) for _ in range(300)] + ["", "one", "one two", "x " * 9000]
    texts += ["Ünïcode CAFÉ 東京 数据 😀\tand  tabs\n", "ΣΑΣ ΟΔΟΣ\u1680ogham", "user: Hi\n\nassistant: Hello"]
    for shingle, num_perm in ((1, 16), (3, 128), (5, 64)):
        hasher = MinHasher(num_perm, shingle)
        batch = hasher.signatures([encoded_words(t) for t in texts])
        assert batch == b"".join(hasher.signature(t) for t in texts)
    for text in texts:
        assert encoded_words(text) == [w.encode() for w in words(text)]
        assert int.from_bytes(exact_digests(joined_words([text]))[0], "little") == exact_key(text)


def test_exact_digests_of_a_chunk_are_the_exact_keys():
    """dedupe.exact_digests (one lower/encode over a chunk's texts, blank runs collapsed in numpy) gives each text's
    exact_key: sigmas at the ends of texts, blank runs at either end, tabs and newlines, texts of blanks only, empty
    texts, U+1680 and NUL (the slow way), and few texts."""
    from llmforge.data.clean import normalize_text
    from llmforge.data.dedupe import encoded_words, exact_digests, exact_key, joined_words

    rng = random.Random(5)
    pieces = ["a", "B", "Σ", "ΟΔΟΣ", "σ", "İ", "É", "東京", "😀", " ", "  ", "\t", "\n", "\n\n", " \t ", "x\u0301"]
    for count in (0, 1, 7, 8, 30, 300):
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 20))) for _ in range(count)]
        texts += [normalize_text(t) for t in texts]
        for extra in ([], ["ogham\u1680mark"], ["nul\x00inside"]):
            batch = texts + extra
            joined = joined_words(batch)
            assert [int.from_bytes(d, "little") for d in exact_digests(joined)] == [exact_key(t) for t in batch]
            # near dedupe splits these again into each text's words
            assert [p.split(b" ") if p else [] for p in joined] == [encoded_words(t) for t in batch]


def test_first_occurrences_and_clusters_of_some_rows():
    import numpy as np

    from llmforge.data.dedupe import NearDuplicates
    from llmforge.data.pipeline import _first_of

    keys = np.array([5, 3, 5, 9, 3, 5, 1], dtype=np.uint64)
    assert _first_of(keys).tolist() == [0, 1, 0, 3, 1, 0, 6]
    assert _first_of(np.zeros(0, dtype=np.uint64)).tolist() == []
    # clustering some rows of a signature file is clustering a file of only those rows
    rng = random.Random(2)
    base = [sentence(rng, 40) for _ in range(30)]
    texts = [t if rng.random() < 0.5 else t.replace(t.split()[5], "changed", 1) for t in base for _ in (0, 1)]
    whole = NearDuplicates(Path("all.bin"), threshold=0.5, num_perm=64)
    for text in texts:
        whole.add(text)
    whole.close()
    rows = np.array([i for i in range(len(texts)) if i % 3], dtype=np.int64)
    some = NearDuplicates(Path("some.bin"), threshold=0.5, num_perm=64)
    for i in rows:
        some.add(texts[i])
    expected = some.clusters()
    assert len(set(expected.tolist())) < len(rows)  # there are clusters to find
    spilled = NearDuplicates(Path("all.bin"), threshold=0.5, num_perm=64, spilled=True)
    assert spilled.clusters(rows=rows).tolist() == expected.tolist()


def test_prepare_dot_ignores_the_workspace_itself(tmp_path):
    write("in.jsonl", [chat("Hi?", "Hello"), chat("Bye?", "Goodbye")])
    report, ws = run(["."], ws=Workspace(Path("llmforge-work/p")))
    assert report["counts"]["read"] == 2
    report, _ = run(["."], ws=ws, force=True)  # the splits written above are not read back as inputs
    assert report["counts"]["read"] == 2
    with pytest.raises(UsageError, match="inside the workspace"):
        run([str(ws.data_dir)], ws=ws, force=True)


def test_nothing_left_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no records left to write: 2 read, 1 invalid, 1 filtered out"):
        run([write("in.jsonl", [chat("Hi?", "ok"), "{bad"])], on_error="skip", filter={"min_answer_chars": 5})
    assert not Path("work/data/train.jsonl").exists()


def test_the_serve_conversation_log_comes_back_as_training_data(tmp_path):
    """`llmforge serve` logs {"messages": [...], "metadata": {...}} under serve/conversations/ in the workspace."""
    ws = Workspace(Path("llmforge-work/p"))
    ws.conversations_dir.mkdir(parents=True)
    logged = [{**chat(f"Question {i}?", f"Answer {i}."),
               "metadata": {"model": "bot", "created": "2026-11-22T04:00:00Z", "latency_ms": 12, "usage": {"total": 9}}}
              for i in range(3)]  # fmt: skip
    write(str(ws.conversations_dir / "conversations.jsonl"), logged[:2])
    write(str(ws.conversations_dir / "conversations-20261122-040000-000000.jsonl"), logged[2:])
    report, _ = run([str(ws.conversations_dir)], ws=ws, split={"train": 1.0, "val": 0.0, "test": 0.0})
    assert report["counts"]["read"] == 3 and report["counts"]["rejected"] == 0
    assert all(list(r) == ["messages"] for r in read(ws.split_file("train")))


def test_empty_splits_are_not_written(tmp_path):
    path = write("in.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(4)])
    report, ws = run([path], split={"train": 0.5, "val": 0.5, "test": 0.0})
    assert (report["counts"]["train"], report["counts"]["val"], report["counts"]["test"]) == (2, 2, 0)
    assert ws.split_file("val").exists() and not ws.split_file("test").exists()
    run([path], force=True, split={"train": 1.0, "val": 0.0, "test": 0.0})
    assert not ws.split_file("val").exists()  # the earlier val.jsonl is gone, not left stale


def test_minhash_estimates_track_true_jaccard(tmp_path):
    """CRC32 shingle hashes still give unbiased estimates: mean error small over many pairs."""
    from datasketch import MinHash

    from llmforge.data.dedupe import MinHasher, shingles

    rng = random.Random(9)
    errors = []
    hasher = MinHasher()
    for _ in range(100):
        words = sentence(rng, 80).split()
        other = list(words)
        for _ in range(rng.randint(1, 12)):
            other[rng.randrange(len(other))] = rng.choice(WORDS)
        a, b = set(shingles(" ".join(words), 3)), set(shingles(" ".join(other), 3))
        ma, mb = hasher._minhash.copy(), hasher._minhash.copy()
        ma.clear(), mb.clear()
        ma.update_batch(list(a)), mb.update_batch(list(b))
        assert isinstance(ma, MinHash)
        errors.append(ma.jaccard(mb) - len(a & b) / len(a | b))
    assert abs(sum(errors) / len(errors)) < 0.02
    assert max(abs(e) for e in errors) < 0.2


# --- hostile and broken input ---------------------------------------------------------------------------------------


def test_an_unreadable_file_is_skipped_and_named_or_fails_the_run(tmp_path):
    Path("d").mkdir()
    rng = random.Random(3)
    write("d/good.jsonl", [chat(f"Question {i}: {sentence(rng, 8)}?", sentence(rng)) for i in range(10)])
    Path("d/broken.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
    report, ws = run(["d"], on_error="skip")
    assert report["counts"]["written"] == 10  # the folder's other file is still read
    [rejected] = read(ws.rejected_file)
    assert (rejected["file"], rejected["line"], rejected["field"]) == ("d/broken.parquet", 0, "file")
    assert rejected["reason"].startswith("cannot read: ") and "Parquet" in rejected["reason"]
    assert {"file": "d/broken.parquet", "records": 0, "error": rejected["reason"]} in report["inputs"]
    assert {"file": "d/good.jsonl", "records": 10} in report["inputs"]
    assert f"- `d/broken.parquet`: {rejected['reason']}" in ws.data_report_md.read_text()

    with pytest.raises(InputError) as info:
        run(["d"], ws=Workspace(Path("work2")))
    assert info.value.exit_code == 2
    assert info.value.message.startswith("1 unreadable file; nothing written:\nd/broken.parquet: file: cannot read: ")
    assert "remove the unreadable files" in info.value.hint and "data.on_error: skip" in info.value.hint


def test_rejected_records_are_scrubbed_like_the_written_ones(tmp_path):
    rows = [
        chat("Fine question?", "A fine answer."),
        {"messages": [{"role": "user", "content": "Mail bob@example.com or call 555-123-4567"}]},  # no answer
        {"messages": [{"role": "bob@example.com", "content": "hi"}]},  # the reason quotes the role
        {"contact": "see https://example.com/bob", "cards": [{"n": "4111 1111 1111 1111"}]},  # unknown format
    ]
    report, ws = run([write("in.jsonl", rows)], on_error="skip")
    text = ws.rejected_file.read_text()
    for secret in ("bob@example.com", "555-123-4567", "https://example.com/bob", "4111 1111 1111 1111"):
        assert secret not in text and secret not in ws.data_report_json.read_text(), secret
    rejected = read(ws.rejected_file)
    assert rejected[0]["record"]["messages"][0]["content"] == "Mail <EMAIL> or call <PHONE>"
    assert rejected[1]["reason"].startswith("unknown role '<EMAIL>'")
    assert rejected[2]["record"] == {"contact": "see <URL>", "cards": [{"n": "<CARD>"}]}
    assert report["pii"] == {"email": 0, "url": 0, "phone": 0, "ip": 0, "card": 0}  # the dataset's own count
    # scrubbing off: rejected.jsonl keeps the records as they were read
    _, ws2 = run(["in.jsonl"], ws=Workspace(Path("work2")), on_error="skip",
                 pii={"email": False, "url": False, "phone": False, "ip": False, "card": False})  # fmt: skip
    assert read(ws2.rejected_file)[0]["record"] == rows[1]


def test_a_record_nested_too_deeply_to_write_is_rejected_without_it(tmp_path):
    deep = '{"messages": ' + "[" * 300 + "]" * 300 + "}"
    report, ws = run([write("in.jsonl", [chat("Hi?", "Hello"), deep])], on_error="skip")
    assert report["counts"]["written"] == 1
    [rejected] = read(ws.rejected_file)
    assert (rejected["line"], rejected["field"], rejected["record"]) == (2, "messages[0]", None)


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 for the child's own peak memory")
def test_a_big_document_is_prepared_in_bounded_memory(tmp_path):
    """A 4 MB plain-text document: the old reader kept it whole as one record and near-dedupe hashed all its
    shingles at once (760 MB peak here, 8 GB for 50 MB); now it is read in blocks and cut into records (150 MB)."""
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
                  for _ in range(5000)]  # fmt: skip
    paragraphs, size = [], 0
    while size < 4_000_000:
        paragraphs.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(20, 120))) + ".")
        size += len(paragraphs[-1]) + 2
    Path("docs").mkdir()
    Path("docs/big.txt").write_text("\n\n".join(paragraphs) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    # The child reports its own high-water mark (VmHWM, reset at exec): ru_maxrss of a child forked from pytest
    # counts pytest's own pages, hundreds of MB late in a test session.
    code = ("import atexit, sys\n"
            "def hwm():\n"
            "    status = open('/proc/self/status').read()\n"
            "    open('hwm.txt', 'w').write(status.split('VmHWM:')[1].split()[0])\n"
            "atexit.register(hwm)\n"
            "sys.argv = ['llmforge', 'data', 'prepare', 'docs', '--json']\n"
            "from llmforge.cli.app import main\n"
            "main()\n")  # fmt: skip
    with open("out.txt", "wb") as out:
        child = subprocess.run([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)
    assert child.returncode == 0, Path("out.txt").read_text()[-2000:]
    peak_mb = int(Path("hwm.txt").read_text()) / 1024
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    report = json.loads(Path("out.txt").read_text())
    assert 4 <= report["counts"]["read"] <= 8 and report["length"]["max"] <= 1_000_000  # pieces of 0.5-1M chars
    written = [r["text"] for r in all_records(Workspace(Path("llmforge-work/llmforge-project")))]
    assert sorted(p for text in written for p in text.split("\n\n")) == sorted(paragraphs)  # nothing lost


def test_prepared_files_get_the_umask_permissions(tmp_path):
    # a service user (a training job, a colleague) reads the dataset; the temp files' 0600 must not reach it
    previous = os.umask(0o022)
    try:
        rng = random.Random(0)
        _, ws = run([write("in.jsonl", [chat(f"Question {i}?", sentence(rng)) for i in range(20)])])
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ws.data_dir.iterdir()}
    assert {"train.jsonl", "report.json", "manifest.json", "config.yaml"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644)
    assert stat.S_IMODE(ws.registry_file.stat().st_mode) == 0o644


# --- worker processes ------------------------------------------------------------------------------------------------


def _outputs(ws: Workspace) -> dict[str, object]:
    """Every data/*.jsonl byte for byte and report.json without its clock readings."""
    out: dict[str, object] = {p.name: p.read_bytes() for p in sorted(ws.data_dir.glob("*.jsonl"))}
    report = json.loads(ws.data_report_json.read_text())
    for key in ("timings", "records_per_second", "finished_at", "outputs", "plots"):
        report.pop(key)
    out["report.json"] = report
    return out


def one_chunk_a_file(monkeypatch) -> None:
    from llmforge.data import pipeline

    monkeypatch.setattr(pipeline, "CHUNK_RECORDS", 10**6)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 1 << 30)


def small_chunks(monkeypatch) -> None:
    """A few records a chunk (JSONL chunks are cut by bytes: ~100 a record here)."""
    from llmforge.data import pipeline

    monkeypatch.setattr(pipeline, "CHUNK_RECORDS", 7)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 700)


def test_worker_processes_write_exactly_what_one_process_writes(tmp_path, monkeypatch):
    """Chunks go through a process pool and come back in order: the same splits, duplicates, rejected records and
    report as in-process, with problems, a record of the wrong kind, PII, filters, exact and near duplicates spread
    over many small chunks, a CSV beside the JSONL, and a gzip file that breaks off."""
    import gzip

    from llmforge.data import sources

    rng = random.Random(5)
    rows: list = ["not json", "", '{"messages": [{"role": "user", "content": "only a question"}]}'] * 4
    kept: list[tuple[str, str]] = []
    for i in range(400):
        roll = rng.random()
        if kept and roll < 0.1:
            q, a = rng.choice(kept)
            rows.append(chat(q.upper(), a + "  "))  # an exact duplicate
        elif kept and roll < 0.2:
            q, a = rng.choice(kept)
            rows.append(chat(q, a.replace(a.split()[3], "changed", 1)))  # a near duplicate
        elif roll < 0.23:
            rows.append(chat(f"Question {i}?", "ok"))  # answer too short
        elif roll < 0.25:
            rows.append({"prompt": "Which?", "chosen": "This one.", "rejected": "That one."})  # the wrong kind
        elif roll < 0.27:
            rows.append(b"\xef\xbb\xbf" + json.dumps(chat("Hi?", "Hello there")).encode())  # a BOM inside the file
        elif roll < 0.29:
            rows.append(chat(f"Mail me at user{i}@example.com?", f"Call 555-123-{1000 + i} or see https://x.org/{i}"))
        else:
            q, a = f"Question {i}: {sentence(rng, 6)}?", sentence(rng, 30)
            kept.append((q, a))
            rows.append(chat(q, a))
    rows[7 * 20] = {"prompt": "Which?", "chosen": "This.", "rejected": "That."}  # first of a chunk: the wrong kind
    Path("in").mkdir()
    with open("in/a.jsonl", "wb") as fh:
        fh.writelines((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                      for r in rows)  # fmt: skip
    Path("in/b.csv").write_text("instruction,output\nName a colour.,Blue is a colour.\nSay hi.,Hi\n")
    whole = gzip.compress("".join(json.dumps(chat(f"Zip {i}?", sentence(rng))) + "\n\n" for i in range(60)).encode())
    Path("in/c.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    settings = {"on_error": "skip", "filter": {"min_answer_chars": 5, "blocklist": ["forbidden"]}}

    one_chunk_a_file(monkeypatch)  # in-process, no seams
    one, ws_one = run(["in"], ws=Workspace(Path("one")), workers=1, **settings)
    small_chunks(monkeypatch)
    two, ws_two = run(["in"], ws=Workspace(Path("two")), workers=2, **settings)
    assert one["counts"]["exact_duplicates"] and one["counts"]["near_duplicates"] and one["counts"]["rejected"]
    assert one["counts"]["filtered"] and sum(one["pii"].values()) and any("error" in f for f in one["inputs"])
    assert _outputs(ws_two) == _outputs(ws_one)
    # the inputs' sha256 (hashed after the pool's work, or beside the work in one process) the same
    inputs = [json.loads((ws.data_dir / "manifest.json").read_text())["inputs"] for ws in (ws_one, ws_two)]
    assert inputs[0] == inputs[1] and len(inputs[0]) == 3
    assert all(entry["sha256"] == hashlib.sha256(Path(name).read_bytes()).hexdigest() for name, entry in inputs[0].items())
    *_, broken = sources.read(Path("in/c.jsonl.gz"), 10**6, [])  # the break, as the record-by-record reader has it
    assert broken.reason.startswith("cannot read past the record at line ")
    assert [f.get("error") for f in two["inputs"] if f["file"] == "in/c.jsonl.gz"] == [broken.reason]

    # on_error: fail lists the same problems, in the same order
    one_chunk_a_file(monkeypatch)
    with pytest.raises(InputError) as in_process:
        run(["in"], ws=Workspace(Path("three")), workers=1)
    small_chunks(monkeypatch)
    with pytest.raises(InputError) as pooled:
        run(["in"], ws=Workspace(Path("four")), workers=2)
    assert pooled.value.message == in_process.value.message
