"""Server metrics in Prometheus text format (exposition 0.0.4), kept in-process without a client library."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.in_flight = 0
        self.cancelled = 0
        # A/B variants, keyed by (group, variant, model): answers by finish reason, their time, tokens generated
        self.variant_answers: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.variant_latency: dict[tuple[str, str, str], Histogram] = {}
        self.variant_tokens: dict[tuple[str, str, str], int] = defaultdict(int)
        # user feedback (POST /v1/feedback), "up" or "down": all of it, and per (group, variant, model, thumb)
        self.feedbacks: dict[str, int] = defaultdict(int)
        self.variant_feedback: dict[tuple[str, str, str, str], int] = defaultdict(int)

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(route, status)] += 1
            if status >= 400:
                self.errors[route] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def tokens(self, prompt: int, completion: int, cancelled: bool = False, cached: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.cached_prompt_tokens += cached
            self.completion_tokens += completion
            self.cancelled += int(cancelled)

    def variant(self, group: str, variant: str, model: str, finish_reason: str, completion: int, seconds: float) -> None:
        with self._lock:
            key = (group, variant, model)
            self.variant_answers[(*key, finish_reason)] += 1
            self.variant_tokens[key] += completion
            self.variant_latency.setdefault(key, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def feedback(self, thumb: str, variant: tuple[str, str, str] | None) -> None:
        """One thumb on an answer; `variant` is the answer's (group, variant, model) in an A/B test, else None."""
        with self._lock:
            self.feedbacks[thumb] += 1
            if variant is not None:
                self.variant_feedback[(*variant, thumb)] += 1

    def render(self, queued: int, loaded: list[str] | None = None, loads: dict[str, int] | None = None,
               unloads: dict[str, int] | None = None) -> str:
        """`loaded` (the names of the models loaded now) adds the per-model lines of a server with several."""
        with self._lock:
            lines = [
                "# HELP llmforge_requests_total HTTP requests answered, by route and status code.",
                "# TYPE llmforge_requests_total counter",
            ]
            lines += [
                f'llmforge_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())
            ]
            lines += [
                "# HELP llmforge_request_errors_total Requests answered with a 4xx or 5xx status, by route.",
                "# TYPE llmforge_request_errors_total counter",
            ]
            lines += [f'llmforge_request_errors_total{{route="{r}"}} {n}' for r, n in sorted(self.errors.items())]
            lines += [
                "# HELP llmforge_request_duration_seconds Time from request to the last byte of the answer.",
                "# TYPE llmforge_request_duration_seconds histogram",
            ]
            for route, h in sorted(self.latency.items()):
                lines += h.lines("llmforge_request_duration_seconds", f'route="{route}"')
            lines += [
                "# HELP llmforge_time_to_first_token_seconds Time from request to the first generated text.",
                "# TYPE llmforge_time_to_first_token_seconds histogram",
            ]
            lines += self.ttft.lines("llmforge_time_to_first_token_seconds")
            lines += [
                "# HELP llmforge_generated_tokens_total Tokens generated (completion tokens).",
                "# TYPE llmforge_generated_tokens_total counter",
                f"llmforge_generated_tokens_total {self.completion_tokens}",
                "# HELP llmforge_prompt_tokens_total Prompt tokens processed.",
                "# TYPE llmforge_prompt_tokens_total counter",
                f"llmforge_prompt_tokens_total {self.prompt_tokens}",
                "# HELP llmforge_cached_prompt_tokens_total Prompt tokens found in the KV cache, not computed again.",
                "# TYPE llmforge_cached_prompt_tokens_total counter",
                f"llmforge_cached_prompt_tokens_total {self.cached_prompt_tokens}",
                "# HELP llmforge_cancelled_requests_total Generations stopped because the client went away.",
                "# TYPE llmforge_cancelled_requests_total counter",
                f"llmforge_cancelled_requests_total {self.cancelled}",
                "# HELP llmforge_requests_in_flight Requests being answered now.",
                "# TYPE llmforge_requests_in_flight gauge",
                f"llmforge_requests_in_flight {self.in_flight}",
                "# HELP llmforge_queue_length Requests waiting for the engine.",
                "# TYPE llmforge_queue_length gauge",
                f"llmforge_queue_length {queued}",
            ]
            lines += [
                "# HELP llmforge_feedback_total User feedback on answers (POST /v1/feedback), up or down.",
                "# TYPE llmforge_feedback_total counter",
            ]
            lines += [f'llmforge_feedback_total{{feedback="{t}"}} {n}' for t, n in sorted(self.feedbacks.items())]
            if self.variant_latency or self.variant_feedback:  # feedback may come for answers of before a restart
                lines += self._variant_lines()
        if loaded is not None:
            lines += _model_lines(loaded, loads or {}, unloads or {})
        return "\n".join(lines) + "\n"

    def _variant_lines(self) -> list[str]:
        def labels(group: str, variant: str, model: str) -> str:
            return f'group="{_escape(group)}",variant="{_escape(variant)}",model="{_escape(model)}"'

        lines = [
            "# HELP llmforge_variant_answers_total Answers by A/B variant and finish reason.",
            "# TYPE llmforge_variant_answers_total counter",
        ]
        lines += [f'llmforge_variant_answers_total{{{labels(g, v, m)},finish_reason="{_escape(f)}"}} {n}'
                  for (g, v, m, f), n in sorted(self.variant_answers.items())]  # fmt: skip
        lines += [
            "# HELP llmforge_variant_generated_tokens_total Tokens generated, by A/B variant.",
            "# TYPE llmforge_variant_generated_tokens_total counter",
        ]
        lines += [f"llmforge_variant_generated_tokens_total{{{labels(*k)}}} {n}"
                  for k, n in sorted(self.variant_tokens.items())]  # fmt: skip
        lines += [
            "# HELP llmforge_variant_duration_seconds Time from request to the last token, by A/B variant.",
            "# TYPE llmforge_variant_duration_seconds histogram",
        ]
        for key, h in sorted(self.variant_latency.items()):
            lines += h.lines("llmforge_variant_duration_seconds", labels(*key))
        lines += [
            "# HELP llmforge_variant_feedback_total User feedback on answers (up or down), by A/B variant.",
            "# TYPE llmforge_variant_feedback_total counter",
        ]
        lines += [f'llmforge_variant_feedback_total{{{labels(g, v, m)},feedback="{t}"}} {n}'
                  for (g, v, m, t), n in sorted(self.variant_feedback.items())]  # fmt: skip
        return lines


def _model_lines(loaded: list[str], loads: dict[str, int], unloads: dict[str, int]) -> list[str]:
    lines = ["# HELP llmforge_model_loaded Whether each served model is loaded now (1) or not (0).",
             "# TYPE llmforge_model_loaded gauge"]  # fmt: skip
    lines += [f'llmforge_model_loaded{{model="{_escape(m)}"}} {int(m in loaded)}' for m in sorted(loads)]
    lines += ["# HELP llmforge_model_loads_total Times each model was loaded.",
              "# TYPE llmforge_model_loads_total counter"]  # fmt: skip
    lines += [f'llmforge_model_loads_total{{model="{_escape(m)}"}} {n}' for m, n in sorted(loads.items())]
    lines += ["# HELP llmforge_model_unloads_total Times each model was unloaded to make room for another.",
              "# TYPE llmforge_model_unloads_total counter"]  # fmt: skip
    lines += [f'llmforge_model_unloads_total{{model="{_escape(m)}"}} {n}' for m, n in sorted(unloads.items())]
    return lines


def _escape(value: str) -> str:
    # Prometheus label values escape backslash, double quote and newline
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
