"""Hostile and broken requests on both engines: invalid Unicode, a model that is not served, OpenAI parameters this
server does not implement. Each gets an OpenAI-style 4xx that names the field, and the connection stays usable."""

from __future__ import annotations

import http.client
import json
from contextlib import closing
from urllib.parse import urlsplit

import pytest
from serve_helpers import serving
from test_serve import HELLO, client, llamacpp_engine, tiny_gguf, transformers_engine  # noqa: F401  (fixtures)

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")

# (route, body, the field the error names); json.dumps writes each lone surrogate as the escape "\ud800"
LONE_SURROGATES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi \ud800 there"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "ok"},
                                                                        {"type": "text", "text": "\udfff"}]}]},
     "messages.0.content.1.text"),
    ("/chat", {"messages": [{"role": "system", "content": "\udc80"}, *HELLO]}, "messages.0.content"),
    ("/v1/completions", {"prompt": "once \ud83d"}, "prompt"),
    ("/v1/completions", {"prompt": ["\ude00"]}, "prompt.0"),
    ("/v1/completions", {"prompt": "once", "stop": ["\ud800"]}, "stop.0"),
    ("/generate", {"prompt": "\ud800"}, "prompt"),
    ("/generate", {"prompt": "once", "stop": "x\udbff"}, "stop"),
]  # fmt: skip
GOOD = {"/v1/chat/completions": {"messages": HELLO}, "/chat": {"messages": HELLO},
        "/v1/completions": {"prompt": "once"}, "/generate": {"prompt": "once"}}  # fmt: skip


def connect(url: str) -> closing[http.client.HTTPConnection]:
    """One keep-alive connection (http.client does not reconnect by itself, so a closed one shows)."""
    return closing(http.client.HTTPConnection(urlsplit(url).netloc, timeout=60))


def post(conn: http.client.HTTPConnection, route: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", route, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("engine_name", ["llamacpp", "transformers"])
def test_a_lone_surrogate_is_a_400_and_the_connection_stays_open(engine_name, request, tmp_path):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    with serving(engine, tmp_path, "serve.max_tokens_limit=4") as url:
        with connect(url) as conn:
            status, _ = post(conn, "/generate", GOOD["/generate"])
            assert status == 200
            sock = conn.sock
            for route, body, field in LONE_SURROGATES:
                status, answer = post(conn, route, body)
                assert status == 400, (route, body, answer)
                error = answer["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", field, "invalid_value")
                assert "surrogate" in error["message"]
                # the same connection serves the next request (a 500 here used to close it)
                status, answer = post(conn, route, {**GOOD[route], "max_tokens": 2})
                assert status == 200, (route, answer)
                assert conn.sock is sock, "the server closed the connection"


def test_a_model_that_is_not_served_is_404(llamacpp_engine, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, "serve.max_tokens_limit=4") as url:
        c = client(url)
        served = c.models.list().data[0].id
        assert served == llamacpp_engine.name
        for name in ("gpt-4o", "", served.upper(), served + " "):
            with pytest.raises(openai.NotFoundError) as exc:
                c.chat.completions.create(model=name, messages=HELLO, max_tokens=2)
            assert (exc.value.body["code"], exc.value.body["param"]) == ("model_not_found", "model")
            assert served in exc.value.body["message"]
            with pytest.raises(openai.NotFoundError):
                c.completions.create(model=name, prompt="once", max_tokens=2)
        # the id /v1/models lists, and no model at all (the chat page, benchmarks, curl) are served
        assert c.chat.completions.create(model=served, messages=HELLO, max_tokens=2).model == served
        assert c.completions.create(model=served, prompt="once", max_tokens=2).model == served
        with connect(url) as conn:
            for route, body in GOOD.items():
                status, answer = post(conn, route, {**body, "max_tokens": 2})
                assert status == 200, (route, answer)
            status, answer = post(conn, "/v1/chat/completions", {"messages": HELLO, "model": None})
            assert status == 200, answer


# (route, parameter, values refused, values that mean "off" and are accepted)
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
UNSUPPORTED = [
    (CHAT, "tools", [[{"type": "function", "function": {"name": "f", "parameters": {}}}]], [[]]),
    (CHAT, "tool_choice", ["required", {"type": "function", "function": {"name": "f"}}], ["none", "auto"]),
    (CHAT, "functions", [[{"name": "f", "parameters": {}}]], [[]]),
    (CHAT, "function_call", [{"name": "f"}], ["none", "auto"]),
    (CHAT, "response_format", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}],
     [{"type": "text"}]),
    (CHAT, "logprobs", [True], [False]),
    (CHAT, "top_logprobs", [1, 5], [0]),
    (CHAT, "n", [2, 0], [1]),
    (CHAT, "logit_bias", [{"50256": -100}], [{}]),
    (COMPLETIONS, "logprobs", [0, 5], []),
    (COMPLETIONS, "echo", [True], [False]),
    (COMPLETIONS, "suffix", ["!"], [""]),
    (COMPLETIONS, "best_of", [3], [1]),
    (COMPLETIONS, "n", [3], [1]),
]  # fmt: skip


def test_unsupported_parameters_are_refused_by_name(llamacpp_engine, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, "serve.max_tokens_limit=4") as url:
        with connect(url) as conn:
            for route, name, refused, accepted in UNSUPPORTED:
                for alias in ((route, "/chat") if route == CHAT else (route,)):
                    base = {**GOOD[alias], "max_tokens": 2}
                    for value in refused:
                        status, answer = post(conn, alias, {**base, name: value})
                        assert status == 400, (alias, name, value, answer)
                        error = answer["error"]
                        assert (error["param"], error["code"]) == (name, "unsupported_parameter"), error
                        assert "not supported" in error["message"]
                    for value in [None, *accepted]:
                        status, answer = post(conn, alias, {**base, name: value})
                        assert status == 200, (alias, name, value, answer)
        # the official client's own way of asking gets the same answer
        with pytest.raises(openai.BadRequestError) as exc:
            client(url).chat.completions.create(model=llamacpp_engine.name, messages=HELLO, max_tokens=2,
                                                response_format={"type": "json_object"})  # fmt: skip
        assert exc.value.body["param"] == "response_format"
