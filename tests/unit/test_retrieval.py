"""Retrieval without a model: chunking, BM25 ranking (FTS5 and the pure-Python fallback), reindexing only what
changed, and how passages enter the messages."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from llmforge import retrieval
from llmforge.config.retrieval import RetrievalConfig
from llmforge.errors import UsageError
from llmforge.workspace import Workspace

DOCS = {
    "install.md": "# Installing\n\nInstall the tool with pipx: pipx install llmforge-cli.\nPython 3.10 or newer.\n",
    "guide/ollama.md": "# Ollama\n\nDeploy a fine-tuned model to Ollama with `llmforge deploy ollama`.\n"
    "It writes a Modelfile with the template and stop tokens.\n",
    "guide/quant.rst": "Quantization\n============\n\nq4_k_m shrinks the GGUF file to about a quarter of f16.\n",
    "notes.txt": "Training on a CPU works for tiny models.\n\nLoRA rank 8 is a good start.\n",
    "page.html": "<html><head><style>p {color: red}</style><script>var hidden = 1;</script></head>\n<body>\n"
    "<p>The chat page streams answers\nfrom the server &amp; keeps history.</p>\n</body></html>\n",
}


def write_docs(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture
def docs(tmp_path) -> Path:
    return write_docs(tmp_path / "docs")


def config(**kw) -> RetrievalConfig:
    return RetrievalConfig(**{"chunk_chars": 200, "overlap_chars": 50, "top_k": 2, **kw})


def test_chunks_keep_paragraphs_whole_and_line_ranges_true():
    lines = ["alpha one", "alpha two", "", "beta " * 10, "", "gamma", "", "x" * 250, "tail", "", "p" * 60, "", "q" * 60]
    chunks = retrieval.chunk_lines(lines, 100, 20)
    assert chunks == [
        (1, 6, "alpha one\nalpha two\n\n" + ("beta " * 10).rstrip() + "\n\ngamma"),
        (8, 8, "x" * 100),  # a line longer than a chunk splits by characters
        (8, 8, "x" * 100),
        (8, 9, "x" * 50 + "\ntail"),
        (9, 11, "tail\n\n" + "p" * 60),  # "tail" fits in the 20 characters of overlap; p*60 would not
        (13, 13, "q" * 60),  # the paragraph did not fit beside p*60: it starts the next chunk whole
    ]


def test_overlap_repeats_the_end_of_the_previous_chunk():
    lines = [f"line {i:02d} " + "w" * 20 for i in range(12)]  # one paragraph, 29 characters a line
    chunks = retrieval.chunk_lines(lines, 100, 35)
    assert len(chunks) > 2
    for (_, e1, t1), (s2, _, t2) in zip(chunks, chunks[1:]):
        assert s2 == e1  # the last line of one chunk opens the next
        assert t2.split("\n")[0] == t1.split("\n")[-1]
    assert {n for s, e, _ in chunks for n in range(s, e + 1)} == set(range(1, 13))  # nothing lost
    no_overlap = retrieval.chunk_lines(lines, 100, 0)
    assert [s for s, _, _ in no_overlap] == [1, 4, 7, 10]


@pytest.mark.parametrize("fts5", [True, False], ids=["fts5", "python-bm25"])
def test_a_question_finds_the_right_document(docs, tmp_path, monkeypatch, fts5):
    if fts5 and not retrieval.fts5_available():
        pytest.skip("this SQLite has no FTS5")
    if not fts5:
        monkeypatch.setattr(retrieval, "fts5_available", lambda: False)
    report = retrieval.update_index(docs, tmp_path / "index.sqlite", config())
    assert report.files == 5 and report.indexed == 5 and report.skipped == []
    r = retrieval.Retriever(report.path, config())
    expected = {
        "how do I deploy to ollama": "guide/ollama.md",
        "which quantization makes the gguf file small": "guide/quant.rst",
        "what python version do I need to install": "install.md",
        "lora rank": "notes.txt",
        "does the chat page stream answers": "page.html",
    }
    for question, source in expected.items():
        found = r.search(question)
        assert found and found[0].source == source, (question, found)
        assert found[0].score > 0
    assert r.search("zebra xylophone") == []
    assert r.search("!!! ???") == []
    # FTS5 syntax in a question is matched as words, not parsed
    assert r.search('ollama" OR NEAR(deploy*')[0].source == "guide/ollama.md"
    html = next(p for p in r.search("chat page history") if p.source == "page.html")
    assert "hidden" not in html.text and "color" not in html.text and "&amp;" not in html.text
    assert (html.start_line, html.end_line) == (3, 4)  # the <p> lines of the page


def test_binary_files_are_skipped(docs, tmp_path):
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02 ollama")
    (docs / "latin1.txt").write_bytes("caf\xe9 ollama".encode("latin-1"))
    (docs / "image.png").write_bytes(b"\x89PNG ollama")
    (docs / "gone.md").symlink_to(docs / "nowhere.md")
    report = retrieval.update_index(docs, tmp_path / "index.sqlite", config())
    assert report.skipped == ["blob.txt", "latin1.txt"]
    assert report.files == 7 and report.indexed == 5  # the .png is not a document at all, nor the broken link
    again = retrieval.update_index(docs, tmp_path / "index.sqlite", config())
    assert (again.skipped, again.indexed) == (["blob.txt", "latin1.txt"], 0)  # still reported, not read again


def test_only_changed_files_are_indexed_again_and_the_index_is_replaced_whole(docs, tmp_path):
    index = tmp_path / "ws" / "index.sqlite"
    first = retrieval.update_index(docs, index, config())
    assert first.indexed == 5
    inode = index.stat().st_ino
    again = retrieval.update_index(docs, index, config())
    assert (again.indexed, again.removed, again.chunks) == (0, 0, first.chunks)
    assert index.stat().st_ino == inode  # nothing changed: the file was not rewritten

    # touched with the same bytes: no chunk work, but the new mtime is remembered
    os.utime(docs / "notes.txt", ns=(1, 1))
    assert retrieval.update_index(docs, index, config()).indexed == 0
    files = dict(sqlite3.connect(index).execute("SELECT path, mtime_ns FROM files").fetchall())
    assert files["notes.txt"] == 1

    (docs / "notes.txt").write_text("Checkpoints are saved every 500 steps.\n")
    (docs / "install.md").unlink()
    with index.open("rb") as held:  # held open, the old file's inode cannot be reused by the new one
        inode = os.fstat(held.fileno()).st_ino
        changed = retrieval.update_index(docs, index, config())
        assert index.stat().st_ino != inode  # published by rename, not edited in place
    assert (changed.files, changed.indexed, changed.removed) == (4, 1, 1)
    assert not [p for p in index.parent.iterdir() if p != index]  # no temporaries left
    r = retrieval.Retriever(index, config())
    assert r.search("checkpoints saved steps")[0].source == "notes.txt"
    assert r.search("lora rank") == []  # the old text is gone from the full-text index too
    assert all(p.source != "install.md" for p in r.search("install python pipx"))

    # other chunk settings: everything is chunked again
    rebuilt = retrieval.update_index(docs, index, config(chunk_chars=120, overlap_chars=0))
    assert rebuilt.indexed == 4


def test_open_docs_keeps_the_index_under_the_workspace(docs, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    r = retrieval.open_docs(config(), workspace, docs)
    assert r.index.parent == workspace.retrieval_dir and r.index.name.startswith("docs-")
    assert r.report.chunks >= 5
    other = retrieval.open_docs(config(index=str(tmp_path / "mine.sqlite")), workspace, docs)
    assert other.index == tmp_path / "mine.sqlite" and other.index.is_file()
    with pytest.raises(UsageError, match="documents folder not found"):
        retrieval.open_docs(config(), workspace, tmp_path / "missing")
    with pytest.raises(UsageError, match="needs a documents folder"):
        retrieval.open_docs(config(), workspace)


def test_passages_go_into_the_last_user_message_with_numbered_sources(docs, tmp_path):
    r = retrieval.open_docs(config(top_k=2), Workspace(tmp_path / "ws"), docs)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is lora"},
        {"role": "assistant", "content": "An adapter."},
        {"role": "user", "content": "how do I deploy to ollama"},
    ]
    changed, passages = retrieval.augment(messages, r)
    assert changed[:3] == messages[:3] and messages[3]["content"] == "how do I deploy to ollama"  # not mutated
    text = changed[3]["content"]
    assert changed[3]["role"] == "user"
    assert passages[0].source == "guide/ollama.md"
    assert f"[1] {passages[0].where}\n{passages[0].text}" in text
    assert text.endswith("Question: how do I deploy to ollama")
    assert passages[0].to_dict(1) == {"index": 1, "source": "guide/ollama.md", "lines": [1, 4],
                                      "score": round(passages[0].score, 4), "text": passages[0].text}  # fmt: skip
    unchanged, none = retrieval.augment([{"role": "user", "content": "zebra"}], r)
    assert unchanged == [{"role": "user", "content": "zebra"}] and none == []


def test_the_passage_budget_caps_the_prompt(docs, tmp_path):
    big = write_docs(tmp_path / "big", {f"d{i}.txt": f"ollama {i} " + "word " * 30 for i in range(6)})
    r = retrieval.open_docs(config(top_k=6, max_context_chars=400), Workspace(tmp_path / "ws"), big)
    found = r.search("ollama")
    assert 1 < len(found) < 6 and sum(len(p.text) for p in found) <= 400
    one = retrieval.open_docs(config(top_k=6, max_context_chars=100), Workspace(tmp_path / "ws"), big)
    assert [len(p.text) for p in one.search("ollama")] == [100]


def test_retrieval_config_is_part_of_serve_and_checks_overlap():
    from llmforge.config import load_config

    cfg = load_config(None, ["serve.retrieval.enabled=true", "serve.retrieval.top_k=3"], {}).config
    assert cfg.serve.retrieval.enabled and cfg.serve.retrieval.top_k == 3
    with pytest.raises(ValueError, match="overlap_chars"):
        RetrievalConfig(chunk_chars=200, overlap_chars=200)
