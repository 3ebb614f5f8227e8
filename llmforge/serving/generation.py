"""The engine worker: one thread owns the engine and interleaves the requests it is serving, token by token.

A `Llama` (or a torch model with its KV cache) is not safe for two threads, so exactly one thread generates.
Up to `slots` requests are served at once, in turns of one token each (llama.cpp: one batched decode for all of
them, each in its own KV sequence; transformers: round-robin over per-request KV caches); more wait in arrival
order. No request is dropped or interrupted for a newer one (llama-cpp-python's bundled server does that, or
serialises them: facts.md). A cancelled request (its client went away) is skipped if still queued and stopped at
its next token if running. Each request's tokens pass through `Decoding`, which enforces max_tokens itself
(llama.cpp can overrun it while holding back incomplete UTF-8), finds stop strings across token boundaries, and
stops on the model's end-of-generation tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    # over the last PENALTY_WINDOW generated tokens (llama.cpp's penalties sampler; the same on transformers)
    repetition_penalty: float = 1.0  # 1: off; a seen token's logit divided by it (multiplied when negative)
    presence_penalty: float = 0.0  # subtracted once from a seen token's logit
    frequency_penalty: float = 0.0  # subtracted per occurrence
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


PENALTY_WINDOW = 64  # llama-cpp-python's default (last_n_tokens_size): what its users know from Llama.generate


@dataclass
class Result:
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens found in the KV cache (not computed again)


@dataclass
class Job:
    """One request. `emit(kind, value)` is called from the worker thread: ("text", str) then ("done", Result)."""

    prompt: list[int]
    sampling: Sampling
    emit: Callable[[str, object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()


class QueueFull(Exception):
    pass


class Decoding:
    """What happens to each generated token of one request: limits, end tokens, stop strings, text out."""

    def __init__(self, engine, job: Job):
        self.engine = engine
        self.job = job
        self.detok = engine.detokenizer()
        self.stops = StopMatcher(job.sampling.stop)
        self.produced = 0
        self.finish: str | None = None
        self.cached_tokens = 0
        self._stopped_by_string = False

    def push(self, token: int) -> bool:
        """Take one generated token; True when the request is finished."""
        s = self.job.sampling
        if self.job.cancelled.is_set():
            self.finish = "cancelled"
            return True
        if not s.ignore_eos and self.engine.is_end(token):
            self.finish = "stop"
            return True
        self.produced += 1
        text, hit = self.stops.feed(self.detok.add(token))
        if text:
            self.job.emit("text", text)
        if hit:
            self.finish, self._stopped_by_string = "stop", True
            return True
        if self.produced >= s.max_tokens:
            self.finish = "length"
            return True
        return False

    def result(self) -> Result:
        finish = self.finish or "length"  # the token stream ended: the context is full
        if finish != "cancelled" and not self._stopped_by_string:
            text, hit = self.stops.feed(self.detok.flush())
            text += "" if hit else self.stops.flush()
            if text:
                self.job.emit("text", text)
            if hit:
                finish = "stop"
        return Result(finish, len(self.job.prompt), self.produced, cached_tokens=self.cached_tokens)


def generate(engine, job: Job) -> Result:
    """One request alone, start to end (the engine's token iterator holds its state)."""
    decoding = Decoding(engine, job)
    tokens = engine.tokens(job.prompt, job.sampling)
    try:
        if not job.cancelled.is_set():
            for token in tokens:
                if decoding.push(token):
                    break
        else:
            decoding.finish = "cancelled"
    finally:
        tokens.close()
    return decoding.result()


class EngineWorker:
    def __init__(self, engine, max_queue: int = 256, slots: int | None = None):
        self.engine = engine
        self.slots = max(1, slots or getattr(engine, "parallel", 1))
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="llmforge-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        # Cancel queued work, then ask the thread to finish (it cancels what it is running).
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.emit("done", Result("cancelled", len(job.prompt), 0))
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def _next_job(self, block: bool) -> Job | None | bool:
        """A job to start; None at shutdown; False when none is waiting (non-blocking)."""
        while True:
            if not block and not self._queue.queue:
                # the batched loop asks before every decode step while a slot is free: look without the queue's
                # lock (a job that arrives just after is taken at the next step)
                return False
            try:
                job = self._queue.get(block=block)
            except queue.Empty:
                return False
            if job is None or not job.cancelled.is_set():
                return job
            job.emit("done", Result("cancelled", len(job.prompt), 0))

    def _run(self) -> None:
        if hasattr(self.engine, "batch_decode"):
            self._run_batched()
        else:
            self._run_interleaved()

    def _run_interleaved(self) -> None:
        """Round-robin over the token iterators of up to `slots` requests (each holds its own KV cache)."""
        active: list[tuple[Job, Decoding, object]] = []
        while True:
            while len(active) < self.slots:
                job = self._next_job(block=not active)
                if job is None:
                    return self._cancel_all(active)
                if job is False:
                    break
                tokens = self.engine.tokens(job.prompt, job.sampling)
                active.append((job, Decoding(self.engine, job), tokens))
            for entry in list(active):
                job, decoding, tokens = entry
                try:
                    finished = job.cancelled.is_set() or decoding.push(next(tokens))
                    if job.cancelled.is_set():
                        decoding.finish = "cancelled"
                except StopIteration:
                    finished = True
                except Exception as exc:  # an engine failure ends this request, never the worker
                    log.exception("generation failed")
                    active.remove(entry)
                    tokens.close()
                    job.emit("done", Result("error", len(job.prompt), decoding.produced, f"{type(exc).__name__}: {exc}"))
                    continue
                if finished:
                    active.remove(entry)
                    tokens.close()
                    job.emit("done", decoding.result())

    def _cancel_all(self, active) -> None:
        for job, decoding, tokens in active:
            tokens.close()
            job.cancel()
            decoding.finish = "cancelled"
            job.emit("done", decoding.result())

    def _run_batched(self) -> None:
        """llama.cpp: each request owns a KV sequence; one decode per step advances all of them by a token
        (prompts are fed in chunks within the batch budget, so a long prompt does not stall the others)."""
        engine = self.engine
        slots: list[_Slot | None] = [None] * self.slots
        cached: list[list[int]] = [[] for _ in slots]  # tokens held in each sequence's KV cache
        while True:
            while None in slots:
                job = self._next_job(block=not any(slots))
                if job is None:
                    for slot in filter(None, slots):
                        slot.job.cancel()
                        slot.decoding.finish = "cancelled"
                        self._release(slots, slot, slot.decoding.result())
                    return
                if job is False:
                    break
                # the free sequence whose cached tokens share the longest prefix with this prompt (a chat's
                # next turn finds its history there); keep at least one prompt token to decode for logits
                free = [i for i, slot in enumerate(slots) if slot is None]
                seq = max(free, key=lambda i: (_common_prefix(cached[i], job.prompt), -len(cached[i])))
                keep = min(_common_prefix(cached[seq], job.prompt), len(job.prompt) - 1)
                if not engine.trim_sequence(seq, keep):
                    keep = 0
                slot = _Slot(seq, job, Decoding(engine, job), engine.new_sampler(job.sampling), list(job.prompt[keep:]),
                             pos=keep)  # fmt: skip
                cached[seq] = slot.kv = list(job.prompt[:keep])
                slot.decoding.cached_tokens = keep
                slots[seq] = slot
            for slot in filter(None, slots):
                if slot.job.cancelled.is_set():
                    slot.decoding.finish = "cancelled"
                    self._release(slots, slot, slot.decoding.result())
            # one step: every decoding slot's last token, then prompt chunks within the batch budget
            budget = engine.batch_size
            step: list[tuple[_Slot, list[int], bool]] = []
            for slot in filter(None, slots):
                if not slot.pending:
                    step.append((slot, [slot.last], True))
                    budget -= 1
            for slot in filter(None, slots):
                if slot.pending and budget > 0:
                    chunk = slot.pending[:budget]
                    step.append((slot, chunk, len(chunk) == len(slot.pending)))
                    budget -= len(chunk)
            if not step:
                continue
            try:
                indices = engine.batch_decode([(slot.seq, tokens, slot.pos, wants) for slot, tokens, wants in step])
            except Exception as exc:
                log.exception("batched decode failed")
                for slot, _, _ in step:
                    slot.kv.clear()  # unknown KV state: the next request in this sequence starts from scratch
                    self._release(slots, slot, Result("error", len(slot.job.prompt), slot.decoding.produced, str(exc)))
                continue
            for (slot, tokens, wants), index in zip(step, indices):
                slot.pos += len(tokens)
                slot.kv.extend(tokens)
                if slot.pending:
                    del slot.pending[: len(tokens)]
                if not wants:
                    continue
                token = engine.sample(slot.sampler, index)
                slot.last = token
                if slot.decoding.push(token) or slot.pos >= engine.context_length:
                    self._release(slots, slot, slot.decoding.result())

    def _release(self, slots, slot: _Slot, result: Result) -> None:
        # the sequence's KV cache stays: the next request with the same prefix starts from it
        slots[slot.seq] = None
        slot.job.emit("done", result)


@dataclass
class _Slot:
    seq: int
    job: Job
    decoding: Decoding
    sampler: object
    pending: list[int]  # prompt tokens not yet decoded
    pos: int = 0
    last: int = -1
    kv: list[int] = field(default_factory=list)  # tokens decoded into this sequence (shared with `cached`)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could be the start of one."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found). After a hit, discard the rest."""
        buf = self.pending + text
        if not self.stops:
            self.pending = ""
            return buf, False
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.pending = ""
            return buf[: min(found)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text
