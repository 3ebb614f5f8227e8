"""The vLLM engine: an HF model folder on CUDA GPUs, its requests batched by vLLM's own scheduler.

It offers the surface the engine worker needs (tokenize, a token stream per request, detokenizer, end test), so the
API, the limits and the stop handling are the very code the other engines run. vLLM is imported only inside
`VllmEngine`; `unavailable()` and `reason()` answer "can it run here?" without importing it, for doctor and `auto`, so this
module's top imports only what `llmforge doctor` may load.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import itertools
import json
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from llmforge.errors import UsageError
from llmforge.serving.generation import Sampling
from llmforge.serving.target import Target

# LLMEngine.add_request(request_id, prompt, params) with a {"prompt_token_ids": [...]} prompt and step() returning
# cumulative RequestOutputs: the V1 engine, the default from 0.8 on.
MIN_VERSION = (0, 8)
INSTALL_HINT = "pip install 'llmforge-cli[vllm]' on a Linux machine with a CUDA GPU"


def reason(vllm_version: str | None, torch_version: str | None, cuda: bool, gpu: str | None = None) -> str | None:
    """Why vLLM cannot serve here, in one line; None when it can. Pure, so doctor (from its probes) and serve (from
    this process) say the same thing."""
    if vllm_version is None:
        return f"vLLM is not installed ({INSTALL_HINT})"
    if _version_tuple(vllm_version) < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        return f"vLLM {vllm_version} is older than {wanted}, the first whose engine API llmforge uses (pip install -U vllm)"
    if torch_version is None:
        return f"vLLM {vllm_version} is installed but torch is not"
    if not cuda:
        return f"vLLM {vllm_version} is installed but torch {torch_version} sees no CUDA GPU"
    return None


def unavailable() -> str | None:
    """`reason()` for this process. torch is imported only when vLLM is installed (vLLM imports it anyway)."""
    version = _installed("vllm")
    if version is None or importlib.util.find_spec("torch") is None:
        return reason(version, _installed("torch"), False)
    import torch

    return reason(version, torch.__version__, torch.cuda.is_available())


def choose(target: Target, requested: str, why_not: str | None) -> Target:
    """The engine for a resolved target: `vllm` asked for must be possible; `auto` takes vLLM for a full HF model
    folder when it can run, else keeps what target resolution chose."""
    if requested == "vllm":
        if target.engine == "llamacpp":
            raise UsageError(f"{target.path}: a GGUF file is served by llama.cpp, not vLLM",
                             hint="use --engine llamacpp, or serve the HF model folder (e.g. the export's merged/)")  # fmt: skip
        if target.base_model:
            raise UsageError(f"{target.path}: the vLLM engine serves full model folders, not adapters",
                             hint="serve the merged model (export/<run>/merged/ after `llmforge export gguf`) or use "
                             "--engine transformers")  # fmt: skip
        if why_not:
            raise UsageError(f"serve.engine vllm: {why_not}", hint="run `llmforge doctor`, or use --engine auto")
        return dataclasses.replace(target, engine="vllm")
    if requested == "auto" and target.engine == "transformers" and not target.base_model and why_not is None:
        return dataclasses.replace(target, engine="vllm")
    return target


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


class VllmEngine:
    engine = "vllm"

    def __init__(
        self,
        target: Target,
        *,
        context_length: int | None = None,
        dtype: str = "auto",
        parallel: int = 1,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
    ):
        why_not = unavailable()
        if why_not:
            raise UsageError(f"serve.engine vllm: {why_not}", hint="run `llmforge doctor`, or use --engine auto")
        from vllm import EngineArgs, LLMEngine, SamplingParams

        from llmforge import checkpoints
        from llmforge.serving.engines import DEFAULT_MAX_CONTEXT, _single_token_ids
        from llmforge.serving.prompt import stop_token_texts

        path = Path(target.path)
        tokenizer_source = str(target.tokenizer or path)
        self.tokenizer = checkpoints.load_tokenizer(tokenizer_source)
        # the event loop tokenizes while the engine thread decodes; an HF fast tokenizer takes one thread at a time
        self._tokenizer_lock = threading.Lock()
        self.parallel = max(1, parallel)
        args = EngineArgs(
            model=str(path),
            tokenizer=tokenizer_source,
            dtype=dtype,
            max_model_len=context_length,
            max_num_seqs=self.parallel,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            disable_log_stats=True,
        )
        self._llm = LLMEngine.from_engine_args(args)
        self._params = SamplingParams
        self.name = target.name
        self.path = path
        self.context_length = int(self._llm.get_model_config().max_model_len or DEFAULT_MAX_CONTEXT)
        tokenizer = self.tokenizer
        self.chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        self.bos_token = tokenizer.bos_token
        self.eos_token = tokenizer.eos_token
        ends = {tokenizer.eos_token_id, *_generation_eos(path)}
        extra = tuple(tokenizer.convert_ids_to_tokens(t) for t in ends if t is not None)
        ends.update(_single_token_ids(stop_token_texts(self.chat_template, self.bos_token, self.eos_token, extra),
                                      lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]))  # fmt: skip
        self._ends = {t for t in ends if t is not None}
        self._streams = RequestStreams(self._llm)

    def tokenize(self, text: str, *, chat: bool) -> list[int]:
        # the same rule as the transformers engine: a rendered chat template holds its special tokens already
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=not chat)["input_ids"]

    def is_end(self, token: int) -> bool:
        return token in self._ends

    def detokenizer(self):
        from llmforge.serving.engines import _TextDetokenizer

        return _TextDetokenizer(self.tokenizer, self._tokenizer_lock)

    def tokens(self, prompt: list[int], s: Sampling) -> Iterator[int]:
        """One request's tokens. vLLM stops at nothing of its own (ignore_eos, no stop strings, max_tokens at the
        context's end): `Decoding` decides, as with every engine, and closing the stream aborts the request."""
        params = self._params(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,  # -1: off, as every vLLM from 0.8 takes it
            # vLLM's own penalties: the whole completion, and for repetition_penalty the prompt as well, rather
            # than the last PENALTY_WINDOW generated tokens of the other two engines (docs/serve.md says so)
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            seed=s.seed,
            max_tokens=max(1, self.context_length - len(prompt)),
            ignore_eos=True,
            detokenize=False,
        )
        return self._streams.open(prompt, params)

    def close(self) -> None:
        self._streams.abort_all()


class RequestStreams:
    """vLLM's `step()` advances every running request at once; this hands each request's new tokens to a stream
    of its own. The engine worker's turns over several streams therefore share one GPU step per round, and tokens
    made for the others wait in their queues. Only the engine worker's thread uses it."""

    def __init__(self, llm):
        self._llm = llm  # a vllm.LLMEngine
        self._ids = itertools.count()
        self._pending: dict[str, deque[int]] = {}  # request id -> tokens made that its stream has not given yet
        self._seen: dict[str, int] = {}  # request id -> tokens taken from its cumulative output so far
        self._finished: set[str] = set()

    def open(self, prompt: list[int], params) -> Iterator[int]:
        """The request's token stream. vLLM gets the request at the first `next()`: a stream closed before that
        (its request was cancelled first) never reaches the GPU."""
        request_id = f"llmforge-{next(self._ids)}"
        return self._stream(request_id, list(prompt), params)

    def _stream(self, request_id: str, prompt: list[int], params) -> Iterator[int]:
        self._llm.add_request(request_id, {"prompt_token_ids": prompt}, params)
        pending = self._pending[request_id] = deque()
        self._seen[request_id] = 0
        try:
            while True:
                while not pending:
                    if request_id in self._finished:
                        return
                    self._step()
                yield pending.popleft()
        finally:  # a stream closed early (finished by Decoding, cancelled) must not keep its GPU slot
            self._pending.pop(request_id, None)
            self._seen.pop(request_id, None)
            if request_id in self._finished:
                self._finished.discard(request_id)
            else:
                self._llm.abort_request([request_id])

    def _step(self) -> None:
        for output in self._llm.step():
            rid = output.request_id
            pending = self._pending.get(rid)
            if pending is None:
                continue
            ids = output.outputs[0].token_ids if output.outputs else []
            pending.extend(ids[self._seen[rid] :])  # outputs are cumulative (vLLM's default RequestOutputKind)
            self._seen[rid] = len(ids)
            if output.finished:
                self._finished.add(rid)

    def abort_all(self) -> None:
        open_ids = [rid for rid in self._pending if rid not in self._finished]
        if open_ids:
            self._llm.abort_request(open_ids)
        self._pending.clear()
        self._seen.clear()
        self._finished.clear()


def _generation_eos(path: Path) -> list[int]:
    """generation_config.json's eos_token_id (an int or a list), which vLLM's own server also stops on."""
    try:
        value = json.loads((path / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)]
