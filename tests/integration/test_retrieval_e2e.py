"""Retrieval end to end on the tiny model: serve.retrieval answers with sources (JSON and stream, OpenAI clients
unharmed), `llmforge chat --docs` puts the passages into what the model receives and prints the sources, and an
embedding model reranks (or fails clearly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_helpers import serving
from test_serve import client, llamacpp_engine, tiny_gguf  # noqa: F401  (fixtures)
from test_serve_cli import cli_env

from llmforge import retrieval
from llmforge.config.retrieval import RetrievalConfig
from llmforge.errors import UsageError

pytest.importorskip("llama_cpp")

OLLAMA = "Deploy to Ollama with llmforge deploy ollama.\nIt writes the Modelfile."
DOCS = {
    "ollama.md": "# Ollama\n\n" + OLLAMA + "\n",
    "lora.txt": "LoRA rank eight is a fine start.\n\nAlpha is twice the rank.\n",
    "quant.rst": "Quantization q4_k_m makes the GGUF file small.\n",
}
QUESTION = "how do I deploy to ollama"


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def retrieval_sets(docs: Path, *more: str) -> tuple[str, ...]:
    # small passages: the tiny model's context is 512 tokens
    return ("serve.retrieval.enabled=true", f"serve.retrieval.docs={docs}", "serve.retrieval.top_k=1",
            "serve.retrieval.chunk_chars=200", "serve.retrieval.overlap_chars=0", *more)  # fmt: skip


def logged(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "serve" / "conversations" / "conversations.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_serve_retrieval_answers_with_sources(llamacpp_engine, docs, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, *retrieval_sets(docs, "serve.log_conversations=true")) as url:
        ask = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "temperature": 0}
        body = httpx.post(url + "/v1/chat/completions", json=ask, timeout=60).json()
        assert [(s["index"], s["source"], s["lines"]) for s in body["sources"]] == [(1, "ollama.md", [1, 4])]
        assert body["sources"][0]["text"] == "# Ollama\n\n" + OLLAMA
        plain = httpx.post(url + "/v1/chat/completions", json={**ask, "messages": [{"role": "user",
                           "content": "zebra"}]}, timeout=60).json()  # fmt: skip
        assert "sources" not in plain  # nothing matched: no passages, no field

        with httpx.stream("POST", url + "/v1/chat/completions", json={**ask, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert chunks[0]["sources"] == body["sources"]  # on the first chunk, once
        assert all("sources" not in c for c in chunks[1:])

        # the official client still parses both shapes (the field is an extension it ignores)
        c = client(url)
        answer = c.chat.completions.create(model="tiny-gguf", max_tokens=4, temperature=0, messages=ask["messages"])
        assert answer.choices[0].message.content == body["choices"][0]["message"]["content"]
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="tiny-gguf", max_tokens=4, temperature=0, messages=ask["messages"], stream=True) if ch.choices)  # fmt: skip
        assert streamed == answer.choices[0].message.content
        usage_with = body["usage"]["prompt_tokens"]
        assert usage_with > plain["usage"]["prompt_tokens"] + 10  # the passage reached the prompt

    # the log holds what the model received: the passage and its source before the question
    user = logged(tmp_path)[0]["messages"][0]["content"]
    assert OLLAMA in user and "[1] ollama.md:1-4" in user and user.endswith("Question: " + QUESTION)
    assert (tmp_path / "retrieval").is_dir()  # the index lives under the workspace


def test_serve_refuses_retrieval_without_a_folder(llamacpp_engine, tmp_path):  # noqa: F811
    with pytest.raises(UsageError, match="needs a documents folder"):
        with serving(llamacpp_engine, tmp_path, "serve.retrieval.enabled=true"):
            pass


def llmforge_chat(url: str, *args: str, script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmforge", "chat", url, "--temperature", "0", "--max-tokens", "4",
                           *args], input=script, capture_output=True, text=True, env=cli_env(), timeout=120,
                          cwd=cwd)  # fmt: skip


def test_chat_docs_sends_the_passages_and_prints_the_sources(llamacpp_engine, docs, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path / "server", "serve.log_conversations=true") as url:
        r = llmforge_chat(url, "--docs", str(docs), "-s", "serve.retrieval.chunk_chars=200", "-s",
                          "serve.retrieval.overlap_chars=0", "-s", "serve.retrieval.top_k=1", "-s",
                          "project.workdir=work", script=f"{QUESTION}\n/save talk.json\n", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "documents: 3 files" in r.stdout
    assert "sources:\n  [1] ollama.md:1-4" in r.stdout
    # the model got the passage; the history (and /save) keeps the question as typed
    received = logged(tmp_path / "server")[0]["messages"][0]["content"]
    assert OLLAMA in received and received.endswith("Question: " + QUESTION)
    saved = json.loads((tmp_path / "talk.json").read_text())["messages"]
    assert saved[0] == {"role": "user", "content": QUESTION}
    assert list((tmp_path / "work" / "retrieval").glob("docs-*.sqlite"))


def test_chat_prints_the_sources_a_retrieving_server_sends(llamacpp_engine, docs, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, *retrieval_sets(docs)) as url:
        r = llmforge_chat(url, script=f"{QUESTION}\nzebra\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("sources:") == 1 and "[1] ollama.md:1-4" in r.stdout


def test_an_embedding_model_reranks_and_a_missing_one_fails_clearly(docs, tmp_path, tiny_llama_dir):
    pytest.importorskip("transformers")
    cfg = RetrievalConfig(top_k=2, chunk_chars=200, overlap_chars=0, embedding_model=str(tiny_llama_dir))
    index = tmp_path / "index.sqlite"
    retrieval.update_index(docs, index, cfg)
    reranked = retrieval.Retriever(index, cfg).search("ollama rank gguf")
    bm25 = retrieval.bm25_search(index, "ollama rank gguf", 2 * retrieval.CANDIDATES_PER_PASSAGE)
    assert len(reranked) == 2 and {p.text for p in reranked} <= {p.text for p in bm25}
    assert all(0 < p.score <= 2 / 60 for p in reranked)  # reciprocal-rank fusion scores
    missing = RetrievalConfig(embedding_model=str(tmp_path / "no-such-model"))
    with pytest.raises(UsageError, match="serve.retrieval.embedding_model: cannot load") as err:
        retrieval.Retriever(index, missing)
    assert "local model folder" in err.value.hint


def test_chat_docs_with_an_ollama_model(tiny_gguf, docs, tmp_path):  # noqa: F811
    """The passages travel in the messages of Ollama's /api/chat too (the retrieval happens in the terminal)."""
    ollama = pytest.importorskip("ollama")
    from fakes.ollama_server import StandIn

    with StandIn() as server:
        c = ollama.Client(host=server.host)
        c.create("tiny", files={"model.gguf": c.create_blob(tiny_gguf)}, stream=False)
        r = subprocess.run([sys.executable, "-m", "llmforge", "chat", "ollama:tiny", "--max-tokens", "4", "--docs",
                            str(docs), "-s", "serve.retrieval.top_k=1", "-s", "project.workdir=work"],
                           input=QUESTION + "\n", capture_output=True, text=True, env=cli_env(OLLAMA_HOST=server.host),
                           timeout=120, cwd=tmp_path)  # fmt: skip
        chats = [body for method, path, body in server.requests if path == "/api/chat"]
    assert r.returncode == 0, r.stderr
    assert "[1] ollama.md:1-4" in r.stdout
    sent = chats[0]["messages"][-1]
    assert sent["role"] == "user" and OLLAMA in sent["content"] and sent["content"].endswith(QUESTION)
