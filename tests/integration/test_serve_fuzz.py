"""Fuzz the request bodies of every POST route with hypothesis: whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import serving
from test_serve import llamacpp_engine, tiny_gguf  # noqa: F401  (fixtures)

pytest.importorskip("llama_cpp")

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)  # fmt: skip
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "wizard", ""]) | json_values
content = st.text(max_size=60) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=20)}), max_size=2) | json_values  # fmt: skip
message = st.fixed_dictionaries({"role": roles, "content": content}) | json_values
sampling = {
    "max_tokens": st.integers(-5, 10_000) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "top_p": st.floats(-0.5, 1.5) | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=300), max_size=6) | json_values,
    "seed": st.integers(-(2**65), 2**65) | json_values,
    "stream": st.booleans() | json_values,
    "n": st.integers(-1, 3) | json_values,
    "model": st.text(max_size=10) | json_values,
}
chat_body = st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | json_values}, optional=sampling)
prompt_body = st.fixed_dictionaries({"prompt": st.text(max_size=80) | st.lists(st.text(max_size=10), max_size=2) | json_values}, optional=sampling)  # fmt: skip
ROUTES = {"/v1/chat/completions": chat_body, "/chat": chat_body, "/v1/completions": prompt_body, "/generate": prompt_body}


def test_no_body_gets_a_server_error(llamacpp_engine, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path, "serve.max_tokens_limit=16") as url, httpx.Client(timeout=60) as http:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(route=st.sampled_from(sorted(ROUTES)), data=st.data())
        def check(route, data):
            body = data.draw(ROUTES[route] | json_values)
            r = http.post(url + route, content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (route, body, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            else:
                assert r.text

        check()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(route=st.sampled_from(sorted(ROUTES)), raw=st.binary(max_size=200))
        def check_bytes(route, raw):
            r = http.post(url + route, content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code < 500, (route, raw, r.text)

        check_bytes()
