"""llmforge.openai_client, the one client of OpenAI-compatible endpoints, through each of its callers: a busy server's
Retry-After is honoured (data generate, eval's served targets, llmforge chat), the key goes out as a bearer token,
and server-sent events are parsed in one place."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from llmforge.config.data import GenerateConfig
from llmforge.data import generate
from llmforge.evaluation.remote import HTTPEngine
from llmforge.openai_client import MAX_RETRY_AFTER, Client, retry_after, sse_events
from llmforge.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.judge_server import FakeOpenAIServer  # noqa: E402
from fakes.openai_server import FakeOpenAI  # noqa: E402


def test_data_generate_waits_as_long_as_retry_after_asks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("doc.txt").write_text(
        "The Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth."
    )
    with FakeOpenAI() as server:
        server.fail_next, server.status_on_fail, server.retry_after = 1, 429, "1"
        config = GenerateConfig(endpoint=server.url, model="fake-model", backoff=0.01, retries=2, api_key="sk-gen")
        started = time.monotonic()
        result = generate(["doc.txt"], config, Workspace(Path("work")))
        waited = time.monotonic() - started
    assert result.pairs == 1 and result.requests == 2 and result.retries == 1
    assert waited >= 0.95  # the server's second, not the configured 0.01 s backoff
    assert server.authorizations == ["Bearer sk-gen", "Bearer sk-gen"]


def test_eval_served_target_retries_a_busy_server():
    with FakeOpenAIServer({"Hi?": "Hello."}) as server:
        engine = HTTPEngine(server.url, None, timeout=10)
        server.busy_next, server.retry_after = 2, "0"
        out = engine.generate([{"role": "user", "content": "Hi?"}], 8, 0.0, 0)
    assert out["text"] == "Hello."
    assert len(server.completions()) == 3 and engine.client.retried == 2


def test_a_broken_server_is_not_retried():
    with FakeOpenAIServer({}, broken=True) as server:
        engine = HTTPEngine(server.url, "m", timeout=10)
        with pytest.raises(Exception, match="HTTP 500.*the model crashed"):
            engine.generate([{"role": "user", "content": "Hi?"}], 8, 0.0, 0)
    assert len(server.completions()) == 1


def test_retry_after_reads_seconds_and_dates_and_is_capped():
    assert retry_after("3") == 3.0 and retry_after(" 0 ") == 0.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("86400") == MAX_RETRY_AFTER
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0


def test_server_sent_events():
    lines = [b": keep-alive\n", b"event: message\n", b'data: {"a": 1}\n', b"\n", b'data: {"b":\n', b"data: 2}\r\n",
             b"\n", b"\n", b"data: [DONE]\n", b"\n", b'data: {"after": "done"}\n', b"\n"]
    assert list(sse_events(lines)) == [{"a": 1}, {"b": 2}]
    assert list(sse_events(['data: {"last": true}'])) == [{"last": True}]  # no blank line before the end


def test_the_key_is_kept_secret():
    client = Client("http://127.0.0.1:9/v1", api_key="sk-hidden")
    assert "sk-hidden" not in repr(vars(client))
    assert client._headers()["Authorization"] == "Bearer sk-hidden"


def test_llmforge_chat_waits_for_a_busy_server_then_streams_the_answer():
    from llmforge.serving.chat_client import ChatSession

    with FakeOpenAIServer({"Hi?": "Hello there, friend."}) as server:
        session = ChatSession(server.url.removesuffix("/v1"), api_key="sk-chat")
        assert session.connect() == "fake-model"
        server.busy_next, server.retry_after = 1, "0"
        pieces = list(session.ask("Hi?"))
    assert pieces == ["Hello", " there,", " friend."]
    assert session.messages[-1] == {"role": "assistant", "content": "Hello there, friend."}
    assert [r["auth"] for r in server.requests] == ["Bearer sk-chat"] * 2  # the busy answer, then the stream
