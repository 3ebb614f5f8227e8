"""Fuzz the request bodies of every POST route with hypothesis: whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import serving
from test_serve import llamacpp_engine, tiny_gguf  # noqa: F401  (fixtures)

pytest.importorskip("llama_cpp")
# Fuzzers: the default tier checks the malformed bodies we know of (test_serve_safety); these search for new ones.
pytestmark = pytest.mark.slow


def texts(max_size: int):
    """Any text, and text holding lone surrogates: JSON can carry them ("\\ud800") and no tokenizer encodes them."""
    half = st.text(max_size=max_size // 2)
    broken = st.builds(lambda a, surrogate, b: a + surrogate + b, half, st.characters(categories=["Cs"]), half)
    return st.text(max_size=max_size) | broken


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | texts(20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(8), inner, max_size=3), max_leaves=8)  # fmt: skip
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "wizard", ""]) | json_values
content = texts(60) | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts(20)}), max_size=2) | json_values  # fmt: skip
message = st.fixed_dictionaries({"role": roles, "content": content}) | json_values
sampling = {
    "max_tokens": st.integers(-5, 10_000) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "top_p": st.floats(-0.5, 1.5) | json_values,
    "stop": texts(5) | st.lists(texts(300), max_size=6) | json_values,
    "seed": st.integers(-(2**65), 2**65) | json_values,
    "stream": st.booleans() | json_values,
    "n": st.integers(-1, 3) | json_values,
    "model": st.just("tiny-gguf") | texts(10) | json_values,
    **{name: json_values for name in ("tools", "tool_choice", "response_format", "logprobs", "logit_bias")},
}
chat_body = st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | json_values}, optional=sampling)
prompt_body = st.fixed_dictionaries({"prompt": texts(80) | st.lists(texts(10), max_size=2) | json_values}, optional=sampling)  # fmt: skip
feedback_body = st.fixed_dictionaries(
    {
        "id": st.just("chatcmpl-0") | texts(40) | json_values,
        "score": st.sampled_from([1, -1, "up", "down", 0]) | json_values,
    },
    optional={"comment": texts(50) | json_values},
)
ROUTES = {"/v1/chat/completions": chat_body, "/chat": chat_body, "/v1/completions": prompt_body, "/generate": prompt_body,
          "/v1/feedback": feedback_body}  # fmt: skip


def test_no_body_gets_a_server_error(llamacpp_engine, tmp_path):  # noqa: F811
    # the conversation log on: feedback bodies reach the lookup of the answer they name
    sets = ("serve.max_tokens_limit=16", "serve.log_conversations=true")
    with serving(llamacpp_engine, tmp_path, *sets) as url, httpx.Client(timeout=60) as http:

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


def test_the_openapi_schema_holds_under_schemathesis(llamacpp_engine, tmp_path):  # noqa: F811
    """Requests generated from /openapi.json, valid and invalid: no 5xx, and every status, content type, header and
    body is one the schema declares (the error responses included)."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Not negative_data_rejection: pydantic's lax parsing takes 0 for false and 1.0 for 1, on purpose; that is
    # leniency about requests, not an answer outside the schema.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]  # fmt: skip
    seen: Counter[tuple[str, int]] = Counter()
    with serving(llamacpp_engine, tmp_path, "serve.max_tokens_limit=8") as url:
        schema = schemathesis.openapi.from_url(url + "/openapi.json")
        cases = schema.as_strategy(generation_mode=GenerationMode.POSITIVE) | schema.as_strategy(
            generation_mode=GenerationMode.NEGATIVE
        )

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        @given(case=cases)
        def check(case):
            response = case.call_and_validate(checks=checks, timeout=60)
            seen[case.path, response.status_code] += 1

        check()
    # the run reached every route, and generation as well as refusals
    assert {path for path, _ in seen} >= {"/v1/chat/completions", "/chat", "/v1/completions", "/generate", "/health",
                                          "/v1/feedback"}  # fmt: skip
    assert {status for _, status in seen} >= {200, 400}, seen

    # behind a key and a rate limit: the 401 and 429 answers (and their headers) are as declared too. About half
    # the cases carry the key, and which do depends on what hypothesis generates from the schema (the keyed share of
    # the 30 draws fell to 8 once, with the sampling fields and /v1/feedback added): a limit of 3 is passed whatever
    # fields it has.
    statuses: Counter[int] = Counter()
    with serving(llamacpp_engine, tmp_path, "serve.max_tokens_limit=8", "serve.api_key=sk-fuzz",
                 "serve.rate_limit=3") as url:  # fmt: skip
        schema = schemathesis.openapi.from_url(url + "/openapi.json", headers={"Authorization": "Bearer sk-fuzz"})

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        @given(case=schema.as_strategy(generation_mode=GenerationMode.POSITIVE), with_key=st.booleans())
        def check_gated(case, with_key):
            headers = {"Authorization": "Bearer sk-fuzz"} if with_key else {}
            statuses[case.call_and_validate(checks=checks, headers=headers, timeout=60).status_code] += 1

        check_gated()
    assert statuses[401] and statuses[429], statuses
