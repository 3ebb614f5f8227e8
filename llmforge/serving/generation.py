"""The engine worker: one thread owns the engine and runs queued requests first come, first served.

A `Llama` (or a torch model with its KV cache) is not safe for two threads, so exactly one thread generates.
Requests are served in arrival order and each runs to its end: none is dropped or interrupted for a newer one
(llama-cpp-python's bundled server does that, facts.md). A cancelled request (its client went away) is skipped
if still queued and stopped at the next token if running. The loop enforces max_tokens itself (llama.cpp can
overrun it while holding back incomplete UTF-8), finds stop strings across token boundaries, and stops on the
model's end-of-generation tokens.
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
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass
class Result:
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


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


class EngineWorker:
    def __init__(self, engine, max_queue: int = 256):
        self.engine = engine
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="llmforge-engine", daemon=True)
        self._busy = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        # Cancel queued work, then ask the thread to finish.
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

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                job.emit("done", Result("cancelled", len(job.prompt), 0))
                continue
            try:
                result = generate(self.engine, job)
            except Exception as exc:  # an engine failure ends this request, never the worker
                log.exception("generation failed")
                result = Result("error", len(job.prompt), 0, error=f"{type(exc).__name__}: {exc}")
            job.emit("done", result)


def generate(engine, job: Job) -> Result:
    s = job.sampling
    detok = engine.detokenizer()
    stops = StopMatcher(s.stop)
    produced = 0
    finish = "length"
    tokens = engine.tokens(job.prompt, temperature=s.temperature, top_p=s.top_p, seed=s.seed)
    try:
        while produced < s.max_tokens:
            if job.cancelled.is_set():
                finish = "cancelled"
                break
            try:
                token = next(tokens)
            except StopIteration:
                break
            if not s.ignore_eos and engine.is_end(token):
                finish = "stop"
                break
            produced += 1
            text, hit = stops.feed(detok.add(token))
            if text:
                job.emit("text", text)
            if hit:
                return Result("stop", len(job.prompt), produced)
    finally:
        tokens.close()
    if finish != "cancelled":
        text, hit = stops.feed(detok.flush())
        text += "" if hit else stops.flush()
        if text:
            job.emit("text", text)
        if hit:
            finish = "stop"
    return Result(finish, len(job.prompt), produced)


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
