"""The model as served: a GGUF evaluated through llama.cpp in-process and the same GGUF deployed to the stand-in
Ollama server (real HTTP, the official client, llama.cpp behind it) answer alike and score alike."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from llmforge.config.eval import EvalConfig
from llmforge.config.model import ModelConfig
from llmforge.evaluation import evaluate
from llmforge.workspace import Workspace

pytest.importorskip("llama_cpp")
ollama = pytest.importorskip("ollama")

from fakes.ollama_server import StandIn  # noqa: E402
from tiny_gguf import REPLY, build_gguf  # noqa: E402

QUESTIONS = ["Who wrote in the logbook?", "What did the keeper do each evening?", "Who kept the lamp?", "Why?"]


def test_gguf_and_its_ollama_deployment_answer_and_score_alike(tmp_path, tiny_tokenizer_dir, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    ws.data_dir.mkdir(parents=True)
    references = [REPLY, REPLY, REPLY, "because the sea was rough"]
    ws.split_file("test").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in zip(QUESTIONS, references)))
    gguf = build_gguf(ws.gguf_file("r", "tiny", "f32"), tiny_tokenizer_dir)
    shutil.copytree(tiny_tokenizer_dir, ws.merged_dir("r"))
    ws.export_manifest("r").write_text(json.dumps({"finished_at": "2026-11-22T05:00:00+00:00"}))

    with StandIn() as server:
        client = ollama.Client(host=server.host)
        client.create(model="tiny", files={"tiny.gguf": client.create_blob(gguf)}, stream=False)
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        result = evaluate(ModelConfig(), EvalConfig(max_new_tokens=16, bootstrap=100), ws,
                          compare="gguf:f32,ollama:tiny")
        chats = [body for method, path, body in server.requests if path == "/api/chat"]

    assert result.exit_code == 0, result.report["failed"]
    local, served = result.report["metrics"]["gguf:f32"], result.report["metrics"]["ollama:tiny"]
    assert local["exact_match"] == served["exact_match"] == pytest.approx(0.75)
    assert local["bleu"] == served["bleu"] and local["f1"] == served["f1"]
    assert math.isfinite(local["perplexity"]) and served["perplexity"] is None  # a server gives no logits
    assert result.report["deltas"]["ollama:tiny"]["exact_match"]["delta"] == 0
    rows = [json.loads(line) for line in (result.folder / "predictions.jsonl").read_text().splitlines()]
    assert {r["targets"]["gguf:f32"]["prediction"] for r in rows} == {REPLY}
    assert [r["targets"]["ollama:tiny"]["prediction"] for r in rows] == [REPLY] * 4
    assert len(chats) == 4 and chats[0]["options"]["num_predict"] == 16


def test_a_lone_gguf_file_uses_its_embedded_template(tmp_path, tiny_tokenizer_dir):
    """No HF tokenizer anywhere near it: llama.cpp renders the GGUF's own chat template; no loss without a mask."""
    ws = Workspace(tmp_path / "ws")
    ws.data_dir.mkdir(parents=True)
    ws.split_file("test").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}]}) + "\n"
        for q in QUESTIONS[:2]))
    gguf = build_gguf(tmp_path / "lone" / "model.gguf", tiny_tokenizer_dir)
    result = evaluate(ModelConfig(), EvalConfig(max_new_tokens=16, bootstrap=0), ws, targets=str(gguf))
    assert result.exit_code == 0, result.report["failed"]
    metrics = result.report["metrics"][str(gguf)]
    assert metrics["exact_match"] == 1.0 and metrics["perplexity"] is None
