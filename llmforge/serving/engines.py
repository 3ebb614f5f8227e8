"""The two engines behind the server: llama.cpp on a GGUF, transformers on an HF folder or a run's adapter.

Both offer what the generation loop needs: tokenize, an incremental detokenizer and the end-of-generation test, then
llama.cpp a batched decode and samplers over KV sequences of its own, transformers a token stream per request.
Neither is thread-safe; only the engine worker (generation.py) calls them.
"""

from __future__ import annotations

import codecs
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path

from llmforge.errors import LlmforgeError, UsageError, require_extra
from llmforge.llamacpp import open_llama
from llmforge.serving.generation import PENALTY_WINDOW, Sampling
from llmforge.serving.prompt import stop_token_texts
from llmforge.serving.target import Target

log = logging.getLogger(__name__)

DEFAULT_MAX_CONTEXT = 4096


def load(
    target: Target,
    *,
    context_length: int | None = None,
    threads: int | None = None,
    dtype: str = "auto",
    parallel: int = 1,
    vllm: dict | None = None,
):
    if target.engine == "llamacpp":
        return LlamaCppEngine(target, context_length=context_length, threads=threads, parallel=parallel)
    if target.engine == "vllm":  # its own module: vLLM is imported only there, and only when chosen
        from llmforge.serving.vllm_engine import VllmEngine

        return VllmEngine(target, context_length=context_length, dtype=dtype, parallel=parallel, **(vllm or {}))
    return TransformersEngine(target, context_length=context_length, threads=threads, dtype=dtype, parallel=parallel)


class LlamaCppEngine:
    engine = "llamacpp"

    def __init__(
        self, target: Target, *, context_length: int | None = None, threads: int | None = None, parallel: int = 1
    ):
        require_extra("llmforge serve (llama.cpp engine)", "llamacpp", "llama_cpp")
        import llama_cpp

        self._lib = llama_cpp
        path = Path(target.path)
        if not path.is_file():
            raise UsageError(f"{path}: GGUF file not found")
        try:
            if not context_length:
                # n_ctx=0 would take the trained context, which can be 128k tokens (gigabytes of KV cache):
                # read it from a vocab-only load (cheap, no context) and cap it.
                context_length = min(_trained_context(llama_cpp, path) or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
            self.parallel = max(1, parallel)
            # The Llama object only tokenizes; generation runs in a context of our own with one KV sequence per
            # request, each `context_length` long, even for one request at a time: Llama.generate costs more Python
            # per token, and this way both settings sample alike.
            self.llm = open_llama(path, n_ctx=64, n_threads=threads, n_threads_batch=threads, verbose=False)
            self._open_batched(context_length, threads)
        except (ValueError, RuntimeError) as exc:
            raise LlmforgeError(f"{path}: llama.cpp cannot load this GGUF: {exc}") from None
        self.name = target.name
        self.path = path
        self.context_length = context_length
        meta = self.llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        model = self.llm._model
        self._vocab = model.vocab
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        self.bos_token = model.token_get_text(bos) if bos >= 0 else None
        self.eos_token = model.token_get_text(eos) if eos >= 0 else None
        self.add_bos = bool(model.add_bos_token()) and bos >= 0
        self._pieces: dict[int, bytes] = {}
        # llama.cpp's end-of-generation tokens (EOS, EOT and the ones it recognises), and the chat family's
        self._ends = _single_token_ids(
            stop_token_texts(self.chat_template, self.bos_token, self.eos_token),
            lambda text: self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True),
        )

    def tokenize(self, text: str, *, chat: bool) -> list[int]:
        # A chat template usually writes the BOS itself; add it only when the text does not start with it.
        add_bos = self.add_bos and not (chat and self.bos_token and text.startswith(self.bos_token))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def is_end(self, token: int) -> bool:
        return token in self._ends or bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def detokenizer(self) -> _ByteDetokenizer:
        return _ByteDetokenizer(self._piece)

    def _piece(self, token: int) -> bytes:
        # a token's bytes never change; the lookup through llama-cpp-python costs more than the dict
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llm.detokenize([token])
        return piece

    # ---- up to `parallel` requests at once: one KV sequence each, advanced together by one decode per step

    def _open_batched(self, context_length: int, threads: int | None) -> None:
        from llama_cpp import _internals

        llama_cpp = self._lib
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_length * self.parallel
        params.n_seq_max = self.parallel
        params.kv_unified = False  # each sequence gets its own n_ctx / n_seq_max cells
        self.batch_size = min(512, context_length)
        params.n_batch = params.n_ubatch = self.batch_size
        if threads:
            params.n_threads = params.n_threads_batch = threads
        self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=self.batch_size, embd=0, n_seq_max=self.parallel, verbose=False)
        self._internals = _internals

    def batch_decode(self, entries: list[tuple[int, list[int], int, bool]]) -> list[int]:
        """Decode (sequence, tokens, first position, want logits of the last token) entries in one llama_decode;
        returns, per entry, the batch index of its last token (where its logits are)."""
        b = self._batch.batch
        # each ctypes field lookup builds a new pointer object: take them once per step, not once per token
        token_at, pos_at, n_seq_at, seq_at, logits_at = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        n = 0
        last = []
        for seq, tokens, pos, wants in entries:
            for k, token in enumerate(tokens):
                token_at[n] = token
                pos_at[n] = pos + k
                n_seq_at[n] = 1
                seq_at[n][0] = seq
                logits_at[n] = wants and k == len(tokens) - 1
                n += 1
            last.append(n - 1)
        b.n_tokens = n
        self._ctx.decode(self._batch)
        return last

    def new_sampler(self, s: Sampling):
        sampler = self._internals.LlamaSampler()
        if s.penalized:  # before greedy too: penalties change greedy answers; sampling a token accepts it here
            sampler.add_penalties(self.llm.n_vocab(), PENALTY_WINDOW, s.repetition_penalty, s.frequency_penalty,
                                  s.presence_penalty)  # fmt: skip
        if s.temperature <= 0:
            sampler.add_greedy()
        else:  # top-k, then temperature before top-p, as transformers does it
            if s.top_k > 0:
                sampler.add_top_k(s.top_k)
            sampler.add_temp(s.temperature)
            if s.top_p < 1.0:
                sampler.add_top_p(s.top_p, 1)
            sampler.add_dist(s.seed % 2**32 if s.seed is not None else random.randrange(2**32))
        return sampler

    def sample(self, sampler, index: int) -> int:
        return sampler.sample(self._ctx, index)

    def trim_sequence(self, seq: int, keep: int) -> bool:
        """Drop a sequence's cached tokens from position `keep` on; False if llama.cpp cannot (then it is empty)."""
        if self._lib.llama_memory_seq_rm(self._ctx.memory, seq, keep, -1):
            return True
        self._lib.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)
        return False

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
        self.llm.close()


def _trained_context(llama_cpp, path: Path) -> int | None:
    """`<arch>.context_length` from the GGUF, read by a vocab-only load (no weights, no context), quietly."""
    import contextlib
    import ctypes

    try:
        from llama_cpp._utils import suppress_stdout_stderr

        quiet = suppress_stdout_stderr(disable=False)
    except ImportError:
        quiet = contextlib.nullcontext()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with quiet:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError("failed to read the model's metadata")
    try:
        buf = ctypes.create_string_buffer(256)

        def meta(key: str) -> str | None:
            n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
            return buf.value.decode("utf-8", "replace") if n >= 0 else None

        value = meta(f"{meta('general.architecture')}.context_length")
        return int(value) if value and value.isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


class _ByteDetokenizer:
    """llama.cpp pieces are bytes; a token may end inside a UTF-8 sequence, so decode incrementally."""

    def __init__(self, piece):
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self._decoder.decode(self._piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class TransformersEngine:
    engine = "transformers"

    def __init__(
        self,
        target: Target,
        *,
        context_length: int | None = None,
        threads: int | None = None,
        dtype: str = "auto",
        parallel: int = 1,
    ):
        self.parallel = max(1, parallel)  # requests served in turns, each with its own KV cache
        require_extra("llmforge serve (transformers engine)", "train", "torch", "transformers")
        import torch

        from llmforge import checkpoints

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        path = str(target.path)
        if target.tokenizer is not None:
            tokenizer_source = str(target.tokenizer)
        elif target.base_model and not (Path(path) / "tokenizer_config.json").exists():
            tokenizer_source = target.base_model
        else:
            tokenizer_source = path
        tokenizer = checkpoints.load_tokenizer(tokenizer_source)
        if dtype == "auto" and not torch.cuda.is_available():
            dtype = "float32"  # half precision on CPU is slow and loses accuracy
        model = checkpoints.load_model(target.base_model or path, dtype=dtype)
        if target.base_model:
            # training may have added tokens and saved resized embeddings with the adapter: match the rows first
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            model = checkpoints.load_adapter(model, path).merge_and_unload()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        # the event loop tokenizes while the engine thread decodes: HF fast tokenizers raise "Already borrowed"
        # when two threads use one at once
        self._tokenizer_lock = threading.Lock()
        self.name = target.name
        self.path = Path(path)
        self.chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        self.bos_token = tokenizer.bos_token
        self.eos_token = tokenizer.eos_token
        trained = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_CONTEXT
        self.context_length = min(context_length or trained, trained)
        ends = {tokenizer.eos_token_id}
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        ends.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        extra = tuple(tokenizer.convert_ids_to_tokens(t) for t in ends if t is not None)
        ends.update(_single_token_ids(stop_token_texts(self.chat_template, self.bos_token, self.eos_token, extra),
                                      lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]))  # fmt: skip
        self._ends = {t for t in ends if t is not None}

    def tokenize(self, text: str, *, chat: bool) -> list[int]:
        # The rendered chat template already holds every special token; a raw prompt gets the model's usual BOS.
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=not chat)["input_ids"]

    def is_end(self, token: int) -> bool:
        return token in self._ends

    def detokenizer(self) -> _TextDetokenizer:
        return _TextDetokenizer(self.tokenizer, self._tokenizer_lock)

    def tokens(self, prompt: list[int], s: Sampling) -> Iterator[int]:
        torch = self._torch
        generator = torch.Generator()  # sampling happens on CPU probabilities: one seed, same result on any device
        generator.manual_seed(s.seed if s.seed is not None else random.randrange(2**63))
        past = None
        inputs = torch.tensor([prompt], device=self.device)
        generated: list[int] = []
        while True:
            # inference mode around each step only: requests take turns, so this generator pauses between tokens
            with torch.inference_mode():
                out = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                if s.penalized and generated:
                    logits = _penalize(torch, logits, generated[-PENALTY_WINDOW:], s)
                token = _sample(torch, logits, s, generator)
            generated.append(token)
            yield token
            inputs = torch.tensor([[token]], device=self.device)

    def close(self) -> None:
        pass


def _single_token_ids(texts: tuple[str, ...], encode) -> set[int]:
    """Ids of the stop texts that are one token in this vocabulary (a multi-token stop text is no token to stop on)."""
    ids = set()
    for text in texts:
        encoded = encode(text)
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids


def _penalize(torch, logits, recent: list[int], s: Sampling):
    """llama.cpp's penalties sampler, as a logits processor: each token seen among `recent` has its logit divided
    by repetition_penalty (multiplied when negative), then lowers by presence_penalty once and frequency_penalty
    per occurrence."""
    ids, counts = torch.unique(torch.tensor(recent, device=logits.device), return_counts=True)
    seen = logits[ids]
    seen = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
    seen = seen - s.presence_penalty - s.frequency_penalty * counts.to(seen.dtype)
    return logits.index_put((ids,), seen)


def _sample(torch, logits, s: Sampling, generator) -> int:
    if s.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / s.temperature, dim=-1)
    top_p = s.top_p
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class _TextDetokenizer:
    """Decode a growing id list in a sliding window so each step costs O(1) tokens, holding back partial chars."""

    def __init__(self, tokenizer, lock):
        self._tok = tokenizer
        self._lock = lock
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        with self._lock:
            return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]
