"""`llmforge serve` and `llmforge chat` as real processes: the process boundary (signals, stdin, ports) is the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_helpers import read_banner, serving
from test_serve import llamacpp_engine, tiny_gguf  # noqa: F401  (fixtures)

pytest.importorskip("llama_cpp")
ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMFORGE_", "OLLAMA_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200", **extra)
    return env


def llmforge(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmforge", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=120, **kw)  # fmt: skip


def test_serve_command_serves_until_interrupted(tiny_gguf, tmp_path):  # noqa: F811
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "serve", "--model", str(tiny_gguf), "--port", "0", "--json",
         "-s", "serve.log_conversations=true", "-s", "project.workdir=work"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(LLMFORGE_SERVE__API_KEY="sk-env"),
        cwd=tmp_path,
    )  # fmt: skip
    try:
        info, banner = read_banner(proc)
        assert info["engine"] == "llamacpp" and info["api_key_required"] is True
        assert info["url"].startswith("http://127.0.0.1:")  # loopback by default
        assert "sk-env" not in banner
        url = info["url"]
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3},
                       headers={"Authorization": "Bearer sk-env"})  # fmt: skip
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        manifest = json.loads((tmp_path / "work" / "serve" / "manifest.json").read_text())
        assert manifest["engine"] == "llamacpp" and manifest["model_path"] == str(tiny_gguf)
        assert manifest["model_sha256"] and manifest["config"]["api_key"] == "***"
        assert "sk-env" not in (tmp_path / "work" / "serve" / "manifest.json").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_dry_run_picks_the_newest_export(tiny_gguf, tmp_path):  # noqa: F811
    export = tmp_path / "llmforge-work" / "demo" / "export" / "lora-1"
    export.mkdir(parents=True)
    (export / "demo-q8_0.gguf").symlink_to(tiny_gguf)
    (export / "demo-f16.gguf").symlink_to(tiny_gguf)
    (export / "manifest.json").write_text(json.dumps({"finished_at": "2026-11-22T04:00:00"}))
    r = llmforge("serve", "--dry-run", "--json", "-s", "project.name=demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["engine"] == "llamacpp" and plan["path"].endswith("demo-q8_0.gguf")
    assert plan["host"] == "127.0.0.1"


def test_serve_refuses_a_missing_model_clearly(tmp_path):
    r = llmforge("serve", "--model", str(tmp_path / "nope.gguf"), cwd=tmp_path)
    assert r.returncode == 2
    assert "nope.gguf" in r.stderr and "Traceback" not in r.stderr


def test_chat_repl_with_piped_stdin(llamacpp_engine, tmp_path):  # noqa: F811
    script = "\n".join(["/system You are terse.", "hello there", "/save convo.json", "/save convo.json",
                        "/reset", "/bogus", "second question", "/exit", "never sent"]) + "\n"  # fmt: skip
    with serving(llamacpp_engine, tmp_path, "serve.api_key=sk-chat", "serve.log_conversations=true") as url:
        r = llmforge("chat", url, "--api-key", "sk-chat", "--temperature", "0", "--max-tokens", "6",
                     input=script, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "chatting with tiny-gguf" in r.stdout
    saved = json.loads((tmp_path / "convo.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant"]
    assert saved["messages"][0]["content"] == "You are terse." and saved["messages"][1]["content"] == "hello there"
    assert saved["messages"][2]["content"] in r.stdout  # the streamed answer was printed
    assert "already exists" in r.stderr  # the second /save refused to overwrite
    assert "unknown command /bogus" in r.stderr
    # the server saw two exchanges; after /reset the second carried no history (but kept the system prompt)
    log = (tmp_path / "serve" / "conversations" / "conversations.jsonl").read_text().splitlines()
    second = json.loads(log[1])["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant"]
    assert second[1]["content"] == "second question"
    assert len(log) == 2  # "never sent" came after /exit


def test_chat_good_and_bad_rate_the_last_answer(llamacpp_engine, tmp_path):  # noqa: F811
    script = "/good\nhello there\n/bad rambles\nsecond question\n/good\n"
    with serving(llamacpp_engine, tmp_path, "serve.log_conversations=true") as url:
        r = llmforge("chat", url, "--temperature", "0", "--max-tokens", "4", input=script, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no answer to rate yet" in r.stderr and r.stdout.count("feedback recorded") == 2
    answers = [json.loads(line)["metadata"]["id"] for line in (tmp_path / "serve" / "conversations" /
                                                                "conversations.jsonl").open()]  # fmt: skip
    feedback = [json.loads(line) for line in (tmp_path / "serve" / "feedback" / "feedback.jsonl").open()]
    assert [(f["id"], f["feedback"], f.get("comment")) for f in feedback] == [
        (answers[0], "down", "rambles"), (answers[1], "up", None)]  # fmt: skip


def test_chat_says_clearly_when_the_endpoint_is_down(tmp_path):
    r = llmforge("chat", "http://127.0.0.1:9", input="hi\n", cwd=tmp_path)
    assert r.returncode == 1
    assert "cannot reach http://127.0.0.1:9" in r.stderr and "llmforge serve" in r.stderr
    env = cli_env(OLLAMA_HOST="http://127.0.0.1:9")
    r = subprocess.run([sys.executable, "-m", "llmforge", "chat", "ollama:tiny"], input="hi\n", capture_output=True,
                       text=True, env=env, timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1
    assert "ollama model tiny at http://127.0.0.1:9" in r.stderr


def test_chat_needs_the_key(llamacpp_engine, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, "serve.api_key=sk-chat") as url:
        r = llmforge("chat", url, input="hi\n", cwd=tmp_path)
    assert r.returncode == 1 and "wants an API key" in r.stderr


def test_chat_with_an_ollama_model(tiny_gguf, tmp_path):  # noqa: F811
    """`llmforge chat ollama:NAME` through the official client against the Ollama stand-in (real REST API)."""
    ollama = pytest.importorskip("ollama")
    from fakes.ollama_server import StandIn

    with StandIn() as server:
        client = ollama.Client(host=server.host)
        digest = client.create_blob(tiny_gguf)
        client.create("tiny", files={"model.gguf": digest}, stream=False)
        env = cli_env(OLLAMA_HOST=server.host)
        r = subprocess.run([sys.executable, "-m", "llmforge", "chat", "ollama:tiny", "--max-tokens", "6"],
                           input="hello there\n/save talk.json\n/good\n", capture_output=True, text=True, env=env,
                           timeout=120, cwd=tmp_path)  # fmt: skip
        chats = [body for method, path, body in server.requests if path == "/api/chat"]
    assert r.returncode == 0, r.stderr
    assert f"chatting with tiny at ollama model tiny at {server.host}" in " ".join(r.stdout.split())
    saved = json.loads((tmp_path / "talk.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[1]["content"] in r.stdout
    assert chats and chats[0]["stream"] is True and chats[0]["options"]["num_predict"] == 6
    assert "is not llmforge serve; only llmforge serve takes feedback" in " ".join(r.stderr.split())
