"""Serving pieces without a model: stop strings, the generation loop's limits, rate limit, metrics text, model
resolution, the conversation log and the chat client's URL handling. No torch here."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmforge.errors import UsageError
from llmforge.serving.chat_client import ChatSession, _base_url
from llmforge.serving.conversations import ConversationLog
from llmforge.serving.generation import EngineWorker, Job, Sampling, StopMatcher, generate
from llmforge.serving.metrics import Histogram, Metrics
from llmforge.serving.prompt import render, stop_token_texts
from llmforge.serving.target import resolve
from llmforge.workspace import Workspace


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + m.flush(), False


def test_stop_string_split_over_pieces():
    assert feed_all(["END"], ["abc E", "N", "D more"]) == ("abc ", True)
    assert feed_all(["END"], ["abc E", "NX"]) == ("abc ENX", False)
    assert feed_all(["\n\n", "##"], ["a\n", "#", "#b"]) == ("a\n", True)
    assert feed_all([], ["a", "b"]) == ("ab", False)


@given(text=st.text(max_size=40), stop=st.text(min_size=1, max_size=4), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_stop_matcher_equals_cutting_the_whole_text(text, stop, cuts):
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    got, hit = feed_all([stop], pieces)
    if stop in text:
        assert (got, hit) == (text[: text.index(stop)], True)
    else:
        assert (got, hit) == (text, False)


class CountingEngine:
    """A stand-in for a model at the engine edge: emits token ids 0, 1, 2 ... forever, each decoding to 'ab'."""

    def __init__(self, end_at: int | None = None):
        self.end_at = end_at
        self.closed = 0

    def tokens(self, prompt, sampling):
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:
            self.closed += 1

    def is_end(self, token):
        return token == self.end_at

    def detokenizer(self):
        class D:
            def add(self, token):
                return "ab"

            def flush(self):
                return ""

        return D()


def run(engine, sampling):
    out = []
    job = Job([1, 2, 3], sampling, lambda kind, value: out.append((kind, value)))
    result = generate(engine, job)
    return "".join(v for k, v in out if k == "text"), result


def test_generation_loop_limits():
    engine = CountingEngine()
    text, result = run(engine, Sampling(max_tokens=5))
    assert (text, result.finish_reason, result.completion_tokens, result.prompt_tokens) == ("ab" * 5, "length", 5, 3)
    assert engine.closed == 1  # the token stream is closed: llama.cpp stops generating
    text, result = run(CountingEngine(end_at=3), Sampling(max_tokens=50))
    assert (text, result.finish_reason, result.completion_tokens) == ("ababab", "stop", 3)
    text, result = run(CountingEngine(end_at=3), Sampling(max_tokens=6, ignore_eos=True))
    assert result.completion_tokens == 6
    text, result = run(CountingEngine(), Sampling(max_tokens=50, stop=("bab",)))
    assert (text, result.finish_reason) == ("a", "stop")


def test_worker_is_fifo_and_skips_cancelled_jobs():
    worker = EngineWorker(CountingEngine(), max_queue=8)
    order, done = [], threading.Event()

    def emit_for(name):
        def emit(kind, value):
            if kind == "done":
                order.append((name, value.finish_reason, value.completion_tokens))
                if len(order) == 3:
                    done.set()

        return emit

    jobs = [Job([0], Sampling(max_tokens=3), emit_for(n)) for n in "abc"]
    jobs[1].cancel()
    for j in jobs:
        worker.submit(j)
    worker.start()
    assert done.wait(10)
    worker.stop()
    assert order == [("a", "length", 3), ("b", "cancelled", 0), ("c", "length", 3)]


def test_histogram_and_metrics_text():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    assert h.lines("x") == ['x_bucket{le="0.1"} 1', 'x_bucket{le="1"} 2', 'x_bucket{le="+Inf"} 3', "x_sum 5.550000",
                            "x_count 3"]  # fmt: skip
    m = Metrics()
    m.started()
    m.finished("/v1/models", 401, 0.01)
    text = m.render(queued=2)
    assert 'llmforge_requests_total{route="/v1/models",code="401"} 1' in text
    assert 'llmforge_request_errors_total{route="/v1/models"} 1' in text
    assert "llmforge_queue_length 2" in text and "llmforge_requests_in_flight 0" in text


def test_rate_limiter_window():
    from llmforge.serving.api import RateLimiter

    limiter = RateLimiter(2)
    assert limiter.retry_after("k", 0.0) is None
    assert limiter.retry_after("k", 1.0) is None
    assert limiter.retry_after("k", 2.0) == pytest.approx(58.0)
    assert limiter.retry_after("other", 2.0) is None
    assert limiter.retry_after("k", 60.5) is None


def finished(folder):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"finished_at": "2026-11-22T00:00:00"}))
    return folder


def test_resolve_prefers_the_newest_export_then_run_then_model_name(tmp_path):
    ws = Workspace(tmp_path / "w")
    with pytest.raises(UsageError, match="nothing to serve"):
        resolve(None, None, "auto", ws)
    hf = tmp_path / "base"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve(str(hf), None, "auto", ws).engine == "transformers"
    run = finished(ws.run_dir("lora-1"))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"finished_at": "x", "base_model": "org/base"}))
    t = resolve(str(hf), None, "auto", ws)
    assert (t.engine, t.name, t.base_model) == ("transformers", "lora-1", "org/base")
    export = finished(ws.export_dir("lora-1"))
    for quant in ("f16", "q4_k_m"):
        (export / f"demo-{quant}.gguf").write_bytes(b"GGUF")
    t = resolve(str(hf), None, "auto", ws)
    assert (t.engine, t.path.name) == ("llamacpp", "demo-q4_k_m.gguf")
    assert resolve(str(hf), None, "transformers", ws).name == "lora-1"
    assert resolve(None, str(export / "demo-f16.gguf"), "auto", ws).path.name == "demo-f16.gguf"
    assert resolve(None, "lora-1", "transformers", ws).base_model == "org/base"
    with pytest.raises(UsageError, match="served by llama.cpp"):
        resolve(None, str(export / "demo-f16.gguf"), "transformers", ws)
    with pytest.raises(UsageError, match="not a file, a folder, a run or an export"):
        resolve(None, "nothing-here", "auto", ws)


def test_conversation_log_rotates(tmp_path):
    log = ConversationLog(tmp_path / "conv", max_bytes=1024)
    for i in range(20):
        log.record([{"role": "user", "content": f"q{i} " * 10}], f"a{i}", {"model": "m"})
    files = log.files()
    assert len(files) > 1 and files[-1].name == "conversations.jsonl"
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(lines) == 20
    assert lines[0]["messages"][-1] == {"role": "assistant", "content": "a0"}


def test_prompt_render_and_stop_tokens_come_from_chat_templates():
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    msgs = [{"role": "user", "content": "hi"}]
    assert render(template, msgs, None, "<|im_end|>") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_end|>" in stop_token_texts(template, None, "<|im_end|>")
    assert stop_token_texts(None, None, "</s>") == ("</s>",)
    with pytest.raises(UsageError):
        render("{{ raise_exception('roles must alternate') }}", msgs, None, None)


def test_chat_client_urls_and_history(tmp_path):
    assert _base_url("localhost:8000") == "http://localhost:8000"
    assert _base_url("http://h:1/v1/") == "http://h:1"
    assert _base_url("https://h/v1/chat/completions") == "https://h"
    s = ChatSession("http://h:1", system="be brief")
    s.messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert [m["role"] for m in s.conversation()] == ["system", "user", "assistant"]
    s.save(tmp_path / "c.json")
    with pytest.raises(UsageError, match="already exists"):
        s.save(tmp_path / "c.json")
    s.reset()
    s.set_system("")
    assert s.conversation() == []
    assert ChatSession("ollama:tiny").ollama_model == "tiny"
    with pytest.raises(UsageError):
        ChatSession("ollama:")


def test_worker_with_two_slots_takes_turns():
    worker = EngineWorker(CountingEngine(), max_queue=8, slots=2)
    events, done = [], threading.Event()

    def emit_for(name):
        def emit(kind, value):
            events.append((name, kind))
            if kind == "done" and sum(k == "done" for _, k in events) == 3:
                done.set()

        return emit

    for name in "abc":
        worker.submit(Job([0], Sampling(max_tokens=2), emit_for(name)))
    worker.start()
    assert done.wait(10)
    worker.stop()
    texts = [name for name, kind in events if kind == "text"]
    # a and b alternate token by token; c, third in line, starts when a slot frees
    assert texts == ["a", "b", "a", "b", "c", "c"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LocalHost", "::1", "[::1]"])
def test_a_loopback_host_needs_no_key(host):
    from llmforge.config import load_config
    from llmforge.serving import check_host

    assert check_host(load_config(None, [f"serve.host={host}"], {}).config.serve) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "myhost.example", ""])
def test_any_other_host_needs_a_key_or_insecure(host):
    from llmforge.config import load_config
    from llmforge.serving import check_host

    def serve(*sets):
        return load_config(None, [f"serve.host={host}", *sets], {}).config.serve

    with pytest.raises(UsageError) as exc:
        check_host(serve())
    assert exc.value.exit_code == 2 and "no API key" in exc.value.message and "--insecure" in exc.value.hint
    with pytest.raises(UsageError):
        check_host(serve("serve.api_key=   "))  # an empty key protects nothing
    assert check_host(serve("serve.api_key=sk-1")) is None
    assert "WITHOUT an API key" in check_host(serve("serve.insecure=true"))


def test_serve_command_refuses_an_open_host_and_dry_run_says_so_too(tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")  # never loaded: the host is checked first
    runner = CliRunner()
    for extra in ([], ["--dry-run"], ["--dry-run", "--json"]):
        result = runner.invoke(app, ["serve", "--model", str(gguf), "--host", "0.0.0.0", *extra])
        assert result.exit_code == 2, result.output
        assert "no API key" in result.stderr and "hint:" in result.stderr and "--insecure" in result.stderr
    result = runner.invoke(app, ["serve", "--model", str(gguf), "--host", "0.0.0.0", "--dry-run", "--insecure"])
    assert result.exit_code == 0, result.output
    assert "WITHOUT an API key" in result.stderr and "would serve" in result.stdout
    result = runner.invoke(app, ["serve", "--model", str(gguf), "--host", "::", "--insecure", "--dry-run", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["warning"].startswith("serving on [::]:8000 WITHOUT")
    result = runner.invoke(app, ["serve", "--model", str(gguf), "--host", "0.0.0.0", "--api-key", "k", "--dry-run",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0 and result.stderr == ""
    assert json.loads(result.stdout)["warning"] is None and json.loads(result.stdout)["api_key_required"] is True
    result = runner.invoke(app, ["serve", "--model", str(gguf), "--dry-run"])  # the default host is loopback
    assert result.exit_code == 0 and result.stderr == ""


class FailingEngine(CountingEngine):
    """Two tokens, then the engine raises (as a llama.cpp decode or a CUDA error would), behind the real app."""

    name, engine, path, context_length, parallel = "failing", "fake", "/nowhere", 512, 1
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bos_token = eos_token = None

    def tokenize(self, text, *, chat):
        return [1] * len(text)

    def tokens(self, prompt, sampling):
        yield 0
        yield 1
        raise RuntimeError("decode failed")

    def close(self):
        pass


def failing_app(tmp_path):
    """The real app serving one FailingEngine (handed in loaded, as serve does with its first model)."""
    from pathlib import Path

    from llmforge.config.serve import ServeConfig
    from llmforge.serving.api import create_app
    from llmforge.serving.models import Models
    from llmforge.serving.target import Target

    engine = FailingEngine()
    models = Models([Target("fake", Path(engine.path), engine.name)], None, max_queue=4, loaded=engine)
    return create_app(models, [], ServeConfig(), tmp_path)


def test_build_app_leaves_the_host_to_whoever_binds_it(tmp_path):
    # build_app opens no port (tests and embedders bind it themselves), so an open serve.host is not refused there;
    # only `serve` (plan) refuses it.
    from fastapi.testclient import TestClient

    from llmforge.config import load_config
    from llmforge.errors import UsageError
    from llmforge.serving import build_app, plan
    from llmforge.workspace import Workspace

    cfg = load_config(None, ["serve.host=0.0.0.0"], {}).config
    app = build_app(cfg.model, cfg.serve, Workspace(tmp_path), engine=FailingEngine())
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["failing"]
    with pytest.raises(UsageError, match="reachable from other machines"):
        plan(cfg.model, cfg.serve, Workspace(tmp_path), engine=FailingEngine())


@pytest.mark.parametrize(
    "route, body",
    [
        ("/generate", {"prompt": "hi"}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_every_streaming_route_ends_with_an_error_event_when_the_engine_fails(route, body, tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(failing_app(tmp_path)) as client, client.stream("POST", route, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    # the text before the failure arrives, then the error event ends the stream (no [DONE]: it did not finish)
    texts = [e["text"] if "text" in e else e["choices"][0].get("text") or e["choices"][0]["delta"].get("content")
             for e in events[:-1]]  # fmt: skip
    assert "".join(texts) == "abab"
    assert events[-1] == {"error": {"message": "Generation failed.", "type": "server_error", "param": None,
                                    "code": "engine_error"}}  # fmt: skip


@pytest.mark.parametrize(
    "field, value",
    [("top_k", -1), ("top_k", 2**31), ("repetition_penalty", 0), ("repetition_penalty", 10.5),
     ("presence_penalty", 2.5), ("frequency_penalty", -2.01)],
)  # fmt: skip
@pytest.mark.parametrize("route", ["/generate", "/v1/completions"])
def test_sampling_settings_out_of_range_are_refused_naming_the_field(route, field, value, tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(failing_app(tmp_path)) as client:
        r = client.post(route, json={"prompt": "hi", field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (field, "invalid_value")
    assert error["message"].startswith(f"{field}: ")


def test_events_produced_while_the_loop_is_busy_arrive_as_one_batch():
    import asyncio

    from llmforge.serving.api import Events
    from llmforge.serving.generation import Result

    done = Result("length", 1, 2)

    async def main():
        events = Events(None, asyncio.get_running_loop(), Metrics(), watch=False)
        events.job = Job([1], Sampling(max_tokens=2), events.emit)
        # the engine thread emits three events while the loop is held by this coroutine (join blocks it)
        thread = threading.Thread(target=lambda: [events.emit(*e) for e in [("text", "a"), ("text", "b"), ("done", done)]])
        thread.start()
        thread.join()
        return [batch async for batch in events], events.job.cancelled.is_set()

    batches, cancelled = asyncio.run(main())
    assert batches == [[("text", "a"), ("text", "b"), ("done", done)]]
    assert cancelled  # leaving the events cancels the job (a no-op once it is done)


def test_a_streamed_answer_is_recorded_before_done_is_sent():
    """A client may rate an answer (POST /v1/feedback) as soon as it reads [DONE]: by then the answer is logged."""
    import asyncio
    from types import SimpleNamespace

    from llmforge.serving.api import _TEXT, SSE_DONE, Events, TextChunks, sse_response
    from llmforge.serving.generation import Result

    done = Result("stop", 1, 2)
    recorded: list[tuple[str, Result]] = []
    server = SimpleNamespace(account=lambda started, first, result: None)

    async def main():
        events = Events(None, asyncio.get_running_loop(), Metrics(), watch=False)
        events.job = Job([1], Sampling(max_tokens=2), events.emit)
        for event in [("text", "a"), ("text", "b"), ("done", done)]:
            events.emit(*event)
        response = sse_response(server, events, 0.0, TextChunks({"text": _TEXT}), lambda result: [],
                                finished=lambda text, result: recorded.append((text, result)))  # fmt: skip
        seen = []  # what had been recorded when each write left
        async for chunk in response.body_iterator:
            seen.append((SSE_DONE in chunk, list(recorded)))
        return seen

    seen = asyncio.run(main())
    assert seen[-1] == (True, [("ab", done)])


@given(st.text())
def test_text_chunks_are_the_json_dump_of_the_whole_chunk(text):
    from llmforge.serving.api import _TEXT, TextChunks, sse

    template = {"id": "cmpl-1", "model": "m\u00e9\"", "choices": [{"index": 0, "text": _TEXT, "logprobs": None}]}
    expected = sse({**template, "choices": [{**template["choices"][0], "text": text}]})
    assert TextChunks(template)(text) == expected
