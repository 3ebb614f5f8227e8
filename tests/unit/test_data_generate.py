"""`data generate` against a stand-in OpenAI-compatible server: chunking, JSON repair, grounding, retries, resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llmforge.config.data import GenerateConfig
from llmforge.data import generate
from llmforge.data.generation import chunk_document, grounding, parse_pairs
from llmforge.errors import LlmforgeError, UsageError
from llmforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.openai_server import FakeOpenAI  # noqa: E402

DOC = """# Lighthouses

The Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth.
Its first tower was built of wood by Henry Winstanley and finished in the year 1698.

## Keepers

Keepers trimmed the lamp wicks every four hours through the night to keep the light bright.
A keeper's family often lived in a cottage on the shore and brought supplies by boat.

## Today

Most lighthouses now run automatically and are watched remotely from a control centre in Harwich.
"""


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def cfg(server: FakeOpenAI, **kw) -> GenerateConfig:
    return GenerateConfig(
        endpoint=server.url, model="fake-model", backoff=0.01, chunk_chars=200, chunk_overlap=40, **kw
    )


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chunks_follow_headings_with_overlap():
    chunks = chunk_document(DOC, size=200, overlap=40)
    assert len(chunks) >= 3
    assert chunks[0].startswith("# Lighthouses")
    assert all(len(c) <= 260 for c in chunks)
    assert any(c.lstrip().startswith(("## Keepers", "## Today")) or "## Keepers" in c for c in chunks[1:])
    # every chunk after the first repeats the end of the one before it
    for before, after in zip(chunks, chunks[1:]):
        assert after.split()[0] in before.split()[-12:]
    joined = " ".join(chunks)
    for sentence in ("Henry Winstanley", "four hours", "Harwich"):
        assert sentence in joined


def test_long_paragraph_is_cut_at_sentences():
    text = " ".join(f"Sentence number {i} says something useful." for i in range(40))
    chunks = chunk_document(text, size=300, overlap=0)
    assert len(chunks) > 3 and all(len(c) <= 300 for c in chunks)
    assert all(c.endswith(".") for c in chunks)


@pytest.mark.parametrize(
    "reply, n, repaired",
    [
        ('{"pairs": [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]}', 2, False),
        ('[{"question": "Q1?", "answer": "A1"}]', 1, False),
        ('Sure!\n```json\n{"pairs": [{"question": "Q1?", "answer": "A1"}]}\n```', 1, False),
        ('{"pairs": [{"question": "Q1?", "answer": "A1"},]}', 1, True),
        (
            '{"pairs": [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}, {"question": "Q3',
            2,
            True,
        ),
        ("I cannot do that.", 0, False),
        ('{"pairs": [{"question": "", "answer": "A1"}, {"q": "Q2?", "a": "A2"}]}', 1, False),
    ],
)
def test_parse_pairs_repairs_or_drops(reply, n, repaired):
    pairs, was_repaired = parse_pairs(reply)
    assert len(pairs) == n and was_repaired == repaired


def test_grounding():
    chunk = "The Eddystone lighthouse stands on dangerous rocks south of Plymouth."
    assert grounding("It stands on dangerous rocks south of Plymouth.", chunk) == 1.0
    assert grounding("Bananas orbit purple mountains.", chunk) == 0.0


def test_generate_writes_grounded_pairs_with_metadata(server, tmp_path):
    Path("docs").mkdir()
    Path("docs/lights.md").write_text(DOC)
    calls = []
    result = generate(["docs"], cfg(server, pairs_per_chunk=2), Workspace(Path("work")),
                      progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    out = Path("work/data/generated.jsonl")
    rows = read(out)
    assert result.pairs == len(rows) > 0 and result.chunks_failed == 0
    assert calls[-1] == (result.chunks, result.chunks)
    first = rows[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert first["metadata"]["source"] == "docs/lights.md" and first["metadata"]["chunk"] == 0
    assert first["metadata"]["model"] == "fake-model"
    assert server.requests[0]["model"] == "fake-model"
    assert "<document>" in server.requests[0]["messages"][-1]["content"]
    # the generated file is itself valid input for `data prepare`
    from llmforge.config.data import DataConfig
    from llmforge.data import validate

    assert validate(DataConfig(inputs=[str(out)])).ok


def test_retries_with_backoff_then_succeeds(server, tmp_path):
    Path("doc.txt").write_text(
        "The Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth."
    )
    server.fail_next = 2
    result = generate(["doc.txt"], cfg(server, retries=3), Workspace(Path("work")))
    assert result.retries == 2 and result.requests == 3 and result.pairs == 1


def test_every_request_failing_is_an_error(server, tmp_path):
    Path("doc.txt").write_text(
        "The Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth."
    )
    server.fail_next = 10
    with pytest.raises(LlmforgeError, match="every request failed"):
        generate(["doc.txt"], cfg(server, retries=1), Workspace(Path("work")))


def test_client_errors_are_not_retried(server, tmp_path):
    Path("doc.txt").write_text("Some text that is long enough to be a chunk of its own here.")
    bad = GenerateConfig(endpoint=server.url + "/wrong", model="m", backoff=0.01)
    with pytest.raises(LlmforgeError, match="HTTP 404"):
        generate(["doc.txt"], bad, Workspace(Path("work")))
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode, dropped", [("garbage", "bad_json"), ("ungrounded", "ungrounded")])
def test_bad_replies_are_dropped(server, tmp_path, mode, dropped):
    Path("doc.md").write_text(DOC)
    server.mode = mode
    result = generate(["doc.md"], cfg(server), Workspace(Path("work")))
    assert result.pairs == 0 and result.dropped[dropped] > 0


@pytest.mark.parametrize("mode", ["trailing_comma", "truncated", "fenced"])
def test_broken_json_is_repaired(server, tmp_path, mode):
    Path("doc.md").write_text(DOC)
    server.mode = mode
    result = generate(["doc.md"], cfg(server, pairs_per_chunk=2), Workspace(Path("work")))
    assert result.pairs > 0
    assert result.repaired_json > 0 or mode == "fenced"


def test_rerun_resumes_and_skips_done_chunks(server, tmp_path):
    Path("doc.md").write_text(DOC)
    config = cfg(server, retries=0)
    server.fail_next = 1  # the first chunk fails in the first run
    first = generate(["doc.md"], config, Workspace(Path("work")))
    assert first.chunks_failed == 1 and first.errors
    requests_before = len(server.requests)
    second = generate(["doc.md"], config, Workspace(Path("work")))
    assert second.chunks_skipped == first.chunks - 1 and second.chunks_failed == 0
    assert len(server.requests) - requests_before == 1  # only the failed chunk was asked again
    third = generate(["doc.md"], config, Workspace(Path("work")))
    assert third.chunks_skipped == third.chunks and third.pairs == second.pairs
    forced = generate(["doc.md"], config, Workspace(Path("work")), force=True)
    assert forced.chunks_skipped == 0


def test_questions_are_deduplicated(server, tmp_path):
    Path("a.md").write_text(DOC)
    Path("b.md").write_text(DOC)  # the same text twice: the same questions
    result = generate(["a.md", "b.md"], cfg(server), Workspace(Path("work")))
    assert result.dropped["duplicate"] == result.pairs
    questions = [r["messages"][0]["content"] for r in read(Path("work/data/generated.jsonl"))]
    assert len(questions) == len(set(questions))


def test_endpoint_and_model_are_required(tmp_path):
    Path("doc.md").write_text(DOC)
    with pytest.raises(UsageError, match="endpoint"):
        generate(["doc.md"], GenerateConfig(model="m"), Workspace(Path("work")))
    with pytest.raises(UsageError, match="model"):
        generate(["doc.md"], GenerateConfig(endpoint="http://127.0.0.1:9/v1"), Workspace(Path("work")))


def test_a_slow_answer_times_out_and_is_retried(server, tmp_path):
    Path("doc.txt").write_text("The Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth.")
    server.slow_next, server.delay = 1, 1.5
    result = generate(["doc.txt"], cfg(server, timeout=0.3, retries=2), Workspace(Path("work")))
    assert result.retries == 1 and result.pairs == 1
