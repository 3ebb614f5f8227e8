"""The one Ollama client module: host resolution, and error mapping against the stand-in server's real HTTP."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from llmforge import ollama_client

pytest.importorskip("ollama")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.ollama_server import StandIn  # noqa: E402


def test_host_is_the_given_one_else_ollama_host_else_the_default(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert ollama_client.resolve_host() == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "http://h:1")
    assert ollama_client.resolve_host() == "http://h:1"
    assert ollama_client.resolve_host("http://given:2") == "http://given:2"


def test_an_error_answer_becomes_refused_with_ollamas_message_and_status():
    with StandIn() as server:
        client = ollama_client.connect(server.host, timeout=30.0, connect_timeout=5.0)
        with pytest.raises(ollama_client.Refused) as caught:
            with ollama_client.talking_to(server.host, "cannot show 'nope'", with_status=True, hint="try x"):
                client.show("nope")
    error = caught.value
    assert error.missing and error.status == 404 and error.detail == "model 'nope' not found"
    assert str(error) == f"Ollama at {server.host} cannot show 'nope': model 'nope' not found (HTTP 404)"
    assert error.hint == "try x" and error.exit_code == 1


def test_a_dead_host_becomes_unreachable_with_how_to_start_ollama():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again below: nothing listens there
    client = ollama_client.connect(host, timeout=5.0, connect_timeout=2.0)
    with pytest.raises(ollama_client.Unreachable) as caught:
        with ollama_client.talking_to(host, "answered GET /api/tags with an error"):
            client.list()
    assert str(caught.value) == f"cannot reach Ollama at {host} (ConnectionError)"
    assert "ollama serve" in caught.value.hint and "OLLAMA_HOST" in caught.value.hint
