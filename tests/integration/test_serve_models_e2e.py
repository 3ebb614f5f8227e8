"""Several models in one `serve` (the tiny GGUF on llama.cpp and the tiny HF model on transformers), loaded on
first use within serve.max_loaded, and an A/B test between them: header, conversation log, /metrics, report."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import export_gguf, metric, running, serve_config

from llmforge.serving import build_app
from llmforge.workspace import Workspace

pytest.importorskip("llama_cpp")

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama_dir) -> Path:
    return export_gguf(tiny_llama_dir, tmp_path_factory.mktemp("export-ws"), "f16")


def ask(url: str, model: str | None, **extra) -> httpx.Response:
    body = {"messages": HELLO, "max_tokens": 3, "ignore_eos": True, **({"model": model} if model else {}), **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_requests_pick_the_model_each_loaded_on_first_use_within_max_loaded(tiny_gguf, tiny_llama_dir, tmp_path):
    cfg = serve_config(f"serve.models=[{tiny_gguf},{tiny_llama_dir}]", "serve.max_loaded=1", "serve.threads=1")
    app = build_app(cfg.model, cfg.serve, Workspace(tmp_path))
    gguf_name, hf_name = tiny_gguf.stem, tiny_llama_dir.name
    models = app.state.server.models
    with running(app) as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [gguf_name, hf_name]
        assert models.loaded() == []  # nothing loads before a request asks for it
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(ask(url, hf_name))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert {r.json()["model"] for r in answers} == {hf_name} and models.loads[hf_name] == 1  # loaded once
        r = ask(url, None)  # no model: the first one
        assert r.status_code == 200 and r.json()["model"] == gguf_name
        assert models.loaded() == [gguf_name] and models.unloads[hf_name] == 1  # max_loaded=1: the other went
        r = httpx.post(url + "/v1/completions", json={"model": hf_name, "prompt": "the", "max_tokens": 2}, timeout=120)
        assert r.status_code == 200 and r.json()["model"] == hf_name and models.loaded() == [hf_name]
        r = ask(url, "missing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert gguf_name in r.json()["error"]["message"] and hf_name in r.json()["error"]["message"]
        text = httpx.get(url + "/metrics").text
        assert f'llmforge_model_loaded{{model="{hf_name}"}} 1' in text
        assert f'llmforge_model_unloads_total{{model="{gguf_name}"}} 1' in text


def test_ab_variants_are_sticky_logged_counted_and_reported(tiny_gguf, tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app as cli

    variants = f'[{{name: gguf, model: "{tiny_gguf}", weight: 1}}, {{name: hf, model: "{tiny_llama_dir}", weight: 1}}]'
    cfg = serve_config(f"serve.variants={variants}", "serve.variant_group=bot", "serve.log_conversations=true",
                       "serve.threads=1")  # fmt: skip
    app = build_app(cfg.model, cfg.serve, Workspace(tmp_path))
    seen: dict[str, set[str]] = {}
    with running(app) as url:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["bot", tiny_gguf.stem,
                                                                                   tiny_llama_dir.name]  # fmt: skip
        for i in range(12):  # six ids, each twice: once as the `user` field, once as the conversation header
            user = f"user-{i % 6}"
            body = {"model": "bot", "messages": HELLO, "max_tokens": 3, "ignore_eos": True, "stream": i % 4 == 1}
            if i < 6:
                body["user"] = user
                if i % 3 == 0:
                    del body["model"]  # no model: the A/B group, the default
            headers = {"X-Conversation-Id": user} if i >= 6 else {}
            r = httpx.post(url + "/v1/chat/completions", headers=headers, json=body, timeout=120)
            assert r.status_code == 200, r.text
            seen.setdefault(user, set()).add(r.headers["x-llmforge-variant"])
        direct = ask(url, tiny_gguf.stem)  # naming a model directly is no part of the test
        assert direct.status_code == 200 and "x-llmforge-variant" not in direct.headers
        text = httpx.get(url + "/metrics").text
    assert all(len(v) == 1 for v in seen.values()), seen  # sticky per user / conversation
    assert {v for s in seen.values() for v in s} == {"gguf", "hf"}  # 6 ids at 1:1: both are almost surely used
    assert metric(text, "llmforge_variant_answers_total") == 12
    assert metric(text, "llmforge_variant_duration_seconds_count") == 12
    assert 'llmforge_variant_answers_total{group="bot",variant="hf",' in text
    records = [json.loads(line) for line in (tmp_path / "serve" / "conversations" / "conversations.jsonl").open()]
    assert len(records) == 13 and sum("variant" in r["metadata"] for r in records) == 12
    result = CliRunner().invoke(cli, ["serve", "report", "--json", "-s", f"project.workdir={tmp_path}"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["groups"]["bot"]
    assert report["requests"] == 12 and sum(v["requests"] for v in report["variants"].values()) == 12
    assert report["variants"]["hf"]["models"] == [tiny_llama_dir.name]


def test_feedback_on_the_answers_of_both_variants_is_counted_and_reported(tiny_gguf, tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app as cli

    variants = f'[{{name: gguf, model: "{tiny_gguf}", weight: 1}}, {{name: hf, model: "{tiny_llama_dir}", weight: 1}}]'
    cfg = serve_config(f"serve.variants={variants}", "serve.log_conversations=true", "serve.api_key=sk-fb",
                       "serve.threads=1")  # fmt: skip
    key = {"Authorization": "Bearer sk-fb"}
    app = build_app(cfg.model, cfg.serve, Workspace(tmp_path))
    thumbs = {"gguf": "up", "hf": -1}  # the route takes "up"/"down" and 1/-1
    given: dict[str, list[str]] = {"gguf": [], "hf": []}
    with running(app) as url:
        for i in range(6):
            body = {"messages": HELLO, "max_tokens": 3, "ignore_eos": True, "user": f"u{i}", "stream": i == 1}
            r = httpx.post(url + "/v1/chat/completions", headers=key, json=body, timeout=120)
            assert r.status_code == 200, r.text
            answer_id = json.loads(r.text.split("\n")[0][6:])["id"] if i == 1 else r.json()["id"]
            variant = r.headers["x-llmforge-variant"]
            fb = httpx.post(url + "/v1/feedback", headers=key, json={"id": answer_id, "score": thumbs[variant]})
            assert fb.status_code == 200, fb.text
            assert fb.json() == {
                "object": "feedback",
                "id": answer_id,
                "feedback": "up" if variant == "gguf" else "down",
            }
            given[variant].append(answer_id)
        assert given["gguf"] and given["hf"]  # six users at 1:1: both variants answered
        unknown = httpx.post(url + "/v1/feedback", headers=key, json={"id": "chatcmpl-nope", "score": "up"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "conversation_not_found"
        assert "chatcmpl-nope" in unknown.json()["error"]["message"]
        keyless = httpx.post(url + "/v1/feedback", json={"id": given["hf"][0], "score": "up"})
        assert keyless.status_code == 401
        bad = httpx.post(url + "/v1/feedback", headers=key, json={"id": given["hf"][0], "score": 5})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
        text = httpx.get(url + "/metrics", headers=key).text
    labels = 'group="ab",variant="{}",model="{}",feedback="{}"'
    assert (
        f"llmforge_variant_feedback_total{{{labels.format('gguf', tiny_gguf.stem, 'up')}}} {len(given['gguf'])}" in text
    )
    assert (
        f"llmforge_variant_feedback_total{{{labels.format('hf', tiny_llama_dir.name, 'down')}}} {len(given['hf'])}"
        in text
    )
    assert metric(text, "llmforge_feedback_total") == 6
    result = CliRunner().invoke(cli, ["serve", "report", "--json", "-s", f"project.workdir={tmp_path}"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["groups"]["ab"]["variants"]
    assert report["gguf"]["feedback"] == {"count": len(given["gguf"]), "mean": 1.0}
    assert report["hf"]["feedback"] == {"count": len(given["hf"]), "mean": 0.0}


def test_feedback_without_the_conversation_log_is_404_naming_the_setting(tiny_gguf, tmp_path):
    cfg = serve_config(f"serve.model={tiny_gguf}")
    with running(build_app(cfg.model, cfg.serve, Workspace(tmp_path))) as url:
        r = httpx.post(url + "/v1/feedback", json={"id": "chatcmpl-1", "score": "up"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_log_off"
    assert "serve.log_conversations" in r.json()["error"]["message"]
