"""The vLLM engine without vLLM: why it can or cannot run, which engine serve picks, and how one vLLM step feeds
each request's token stream (vLLM's LLMEngine faked at its edge, following its documented API)."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from llmforge.config import load_config
from llmforge.errors import UsageError
from llmforge.serving import resolve_target
from llmforge.serving.target import Target
from llmforge.serving.vllm_engine import RequestStreams, choose, reason, unavailable
from llmforge.workspace import Workspace

vllm_missing = pytest.mark.skipif(unavailable() is None, reason="vLLM and a CUDA GPU are present here")


@pytest.mark.parametrize(
    ("vllm", "torch", "cuda", "expected"),
    [
        (None, "2.13.0", True, "vLLM is not installed (pip install 'llmforge-cli[vllm]'"),
        ("0.7.3", "2.13.0", True, "vLLM 0.7.3 is older than 0.8"),
        ("0.11.0", None, False, "vLLM 0.11.0 is installed but torch is not"),
        ("0.11.0", "2.9.0+cpu", False, "vLLM 0.11.0 is installed but torch 2.9.0+cpu sees no CUDA GPU"),
    ],
)
def test_reason_says_why_vllm_cannot_serve(vllm, torch, cuda, expected):
    assert reason(vllm, torch, cuda).startswith(expected)


@pytest.mark.parametrize("version", ["0.8.0", "0.10.1rc2.dev5+gabc", "1.0"])
def test_reason_is_none_where_vllm_can_serve(version):
    assert reason(version, "2.9.0", True) is None


HF = Target("transformers", "/models/hf", "hf")
ADAPTER = Target("transformers", "/runs/lora-1/adapter", "lora-1", base_model="org/base")
GGUF = Target("llamacpp", "/export/demo-q8_0.gguf", "demo")


def test_auto_takes_vllm_for_a_full_model_only_where_it_can_run():
    assert choose(HF, "auto", None).engine == "vllm"
    assert choose(HF, "auto", None).path == HF.path
    assert choose(HF, "auto", "vLLM is not installed") == HF
    assert choose(ADAPTER, "auto", None) == ADAPTER  # adapters stay with transformers
    assert choose(GGUF, "auto", None) == GGUF


def test_asking_for_vllm_where_it_cannot_serve_is_a_usage_error_with_the_reason():
    assert choose(HF, "vllm", None).engine == "vllm"
    with pytest.raises(UsageError, match="serve.engine vllm: torch 2.9 sees no CUDA GPU"):
        choose(HF, "vllm", "torch 2.9 sees no CUDA GPU")
    with pytest.raises(UsageError, match="not adapters"):
        choose(ADAPTER, "vllm", None)
    with pytest.raises(UsageError, match="served by llama.cpp, not vLLM"):
        choose(GGUF, "vllm", None)


def hf_folder(tmp_path, name: str = "hf"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


@vllm_missing
def test_serve_resolves_the_engine_here_without_importing_vllm(tmp_path):
    folder = hf_folder(tmp_path)
    workspace = Workspace(tmp_path / "ws")
    auto = load_config(None, [f"serve.model={folder}"], {}).config
    assert resolve_target(auto.model, auto.serve, workspace).engine == "transformers"
    asked = load_config(None, [f"serve.model={folder}", "serve.engine=vllm"], {}).config
    with pytest.raises(UsageError, match=r"serve.engine vllm: vLLM is not installed|sees no CUDA GPU"):
        resolve_target(asked.model, asked.serve, workspace)
    assert "vllm" not in sys.modules


def test_engine_vllm_serves_one_model_per_server(tmp_path):
    from llmforge.serving import resolve_lineup

    a, b = hf_folder(tmp_path, "a"), hf_folder(tmp_path, "b")
    cfg = load_config(None, [f"serve.models=[{a},{b}]", "serve.engine=vllm"], {}).config
    with pytest.raises(UsageError, match="serve.engine vllm: serves one model per server, and this one has 2"):
        resolve_lineup(cfg.model, cfg.serve, Workspace(tmp_path / "ws"))
    auto = load_config(None, [f"serve.models=[{a},{b}]"], {}).config  # auto keeps transformers for several
    targets, _ = resolve_lineup(auto.model, auto.serve, Workspace(tmp_path / "ws"))
    assert [t.engine for t in targets] == ["transformers", "transformers"]


@vllm_missing
def test_the_engine_loader_routes_vllm_targets_to_the_vllm_engine(tmp_path):
    from llmforge.serving import engines

    # the transformers engine would load this folder (and fail on its empty config); the vLLM one refuses first
    with pytest.raises(UsageError, match="serve.engine vllm: "):
        engines.load(Target("vllm", hf_folder(tmp_path), "hf"))
    assert "vllm" not in sys.modules


@vllm_missing
def test_serve_dry_run_with_engine_vllm_exits_2_with_the_reason(tmp_path):
    from llmforge.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--engine", "vllm", "--model", str(hf_folder(tmp_path)), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "serve.engine vllm:" in result.output and "llmforge doctor" in result.output


@pytest.mark.parametrize(
    "setting",
    ["serve.vllm.gpu_memory_utilization=0", "serve.vllm.gpu_memory_utilization=1.5",
     "serve.vllm.tensor_parallel_size=0", "serve.vllm.tensor_parallel_size=65", "serve.vllm.gpu_memory=0.5",
     "serve.engine=vlm"],
)  # fmt: skip
def test_vllm_settings_are_bounded(setting):
    from llmforge.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config(None, [setting], {})


class FakeLLMEngine:
    """vllm.LLMEngine at its edge: add_request(id, {"prompt_token_ids"}, params), step() -> RequestOutputs with
    cumulative token_ids (two tokens a step, as a step may give more than one), abort_request([ids])."""

    def __init__(self):
        self.requests: dict[str, dict] = {}
        self.aborted: list[str] = []
        self.steps = 0

    def add_request(self, request_id, prompt, params):
        self.requests[request_id] = {"prompt": prompt["prompt_token_ids"], "max": params["max_tokens"], "out": []}

    def abort_request(self, ids):
        for rid in ids:
            self.aborted.append(rid)
            self.requests.pop(rid, None)

    def step(self):
        self.steps += 1
        outputs = []
        for rid, req in list(self.requests.items()):
            base = req["prompt"][0] * 100
            for _ in range(2):
                if len(req["out"]) < req["max"]:
                    req["out"].append(base + len(req["out"]))
            finished = len(req["out"]) >= req["max"]
            outputs.append(SimpleNamespace(request_id=rid, finished=finished,
                                           outputs=[SimpleNamespace(token_ids=list(req["out"]))]))  # fmt: skip
            if finished:
                del self.requests[rid]
        return outputs


def test_one_step_feeds_every_open_stream_in_order():
    llm = FakeLLMEngine()
    streams = RequestStreams(llm)
    a = streams.open([1, 9], {"max_tokens": 5})
    b = streams.open([2], {"max_tokens": 3})
    got_a, got_b = [next(a)], [next(b)]  # the first next() adds the request
    got_a += [next(a), next(a)]
    got_b += list(b)  # ends where vLLM finished it: not aborted
    got_a += list(a)
    assert got_a == [100, 101, 102, 103, 104]
    assert got_b == [200, 201, 202]
    assert llm.aborted == []
    assert llm.steps == 3  # shared steps: 5 tokens at two a step, b's made alongside


def test_closing_a_stream_aborts_its_request_and_an_unstarted_one_never_reaches_vllm():
    llm = FakeLLMEngine()
    streams = RequestStreams(llm)
    a = streams.open([1], {"max_tokens": 50})
    assert [next(a), next(a), next(a)] == [100, 101, 102]
    a.close()  # Decoding finished it (max_tokens, a stop string, an end token) or its client went away
    assert llm.aborted == ["llmforge-0"] and llm.requests == {}
    never = streams.open([3], {"max_tokens": 5})
    never.close()
    assert llm.requests == {} and llm.aborted == ["llmforge-0"]
    c = streams.open([4], {"max_tokens": 50})
    next(c)
    streams.abort_all()  # the engine closes at shutdown
    assert llm.aborted == ["llmforge-0", "llmforge-2"]


def test_the_vllm_stream_runs_under_the_generation_loop():
    """Decoding enforces max_tokens on a vLLM stream as on the other engines, and closes (aborts) it after."""
    from llmforge.serving.generation import Job, Sampling, generate

    llm = FakeLLMEngine()
    streams = RequestStreams(llm)

    class Engine:  # the rest of the engine surface, as trivial as a token-per-letter vocabulary makes it
        def tokens(self, prompt, sampling):
            return streams.open(prompt, {"max_tokens": 1000})

        def is_end(self, token):
            return False

        def detokenizer(self):
            return SimpleNamespace(add=lambda token: "x", flush=lambda: "")

    texts = []
    result = generate(Engine(), Job([5], Sampling(max_tokens=7), lambda kind, value: texts.append(value)))
    assert (result.finish_reason, result.completion_tokens, "".join(t for t in texts if isinstance(t, str))) == (
        "length", 7, "x" * 7)  # fmt: skip
    assert llm.aborted == ["llmforge-0"]


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        ({"top_k": 40, "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": -0.25, "seed": 7,
          "temperature": 0.7, "top_p": 0.9},
         {"top_k": 40, "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": -0.25, "seed": 7,
          "temperature": 0.7, "top_p": 0.9}),
        ({}, {"top_k": -1, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None,
              "temperature": 1.0, "top_p": 1.0}),
    ],
)  # fmt: skip
def test_the_vllm_engine_passes_every_sampling_setting_to_vllm(sampling, expected):
    """top_k and the penalties reach vLLM's SamplingParams (top_k 0, "off" on the other engines, is vLLM's -1)."""
    from llmforge.serving.generation import Sampling
    from llmforge.serving.vllm_engine import VllmEngine

    engine = object.__new__(VllmEngine)  # no vLLM here: only what tokens() reads
    engine._params = dict  # vllm.SamplingParams takes these keywords
    engine.context_length = 100
    engine._streams = SimpleNamespace(open=lambda prompt, params: params)
    params = engine.tokens([1, 2, 3], Sampling(max_tokens=5, **sampling))
    assert {key: params[key] for key in expected} == expected
    assert (params["max_tokens"], params["ignore_eos"], params["n"]) == (97, True, 1)
