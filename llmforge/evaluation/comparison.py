"""Evaluate each target in turn on the same examples and decoding, then compare them against the base.

A target that cannot be resolved, loaded or reached fails alone: its error goes in the report and the others
still run. Models are loaded one at a time and freed before the next.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmforge.config.eval import EvalConfig
from llmforge.config.model import ModelConfig
from llmforge.errors import LlmforgeError, require_extra
from llmforge.evaluation import examples as example_io
from llmforge.evaluation import metrics as m
from llmforge.evaluation.cache import GenerationCache, entry_key
from llmforge.evaluation.examples import Example
from llmforge.evaluation.targets import Target, resolve
from llmforge.extensions import is_entry, load
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)

Progress = Callable[[str, str, int, int], None]  # (target label, phase, done, total)
METRIC_KEYS = ["perplexity", "loss", "bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "f1"]


@dataclass
class TargetResult:
    spec: str
    label: str
    kind: str | None = None
    run: str | None = None
    source: str | None = None  # the adapter, model folder or hub id, GGUF file, or server behind the target
    adapter: str | None = None
    fingerprint: str | None = None
    error: str | None = None
    hint: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    generated: int = 0  # generations computed in this run
    cached: int = 0  # generations taken from the cache
    mask: str | None = None  # how the scored tokens were chosen
    judge_error: str | None = None
    seconds: float = 0.0
    nll: list[tuple[float, int]] | None = None  # per example: (sum of NLL over scored tokens, their count)
    predictions: list[dict[str, Any]] | None = None  # per generating example
    judge_scores: list[dict[str, float]] | None = None
    text_scores: m.TextScores | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example rows."""
        heavy = {"nll", "predictions", "judge_scores", "text_scores"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in heavy}


def wanted(config: EvalConfig) -> tuple[bool, bool]:
    """(score perplexity?, generate?) from eval.metrics."""
    chosen = set(config.metrics)
    return "perplexity" in chosen, bool(chosen - {"perplexity"})


def open_engine(target: Target, model: ModelConfig, config: EvalConfig, items: list[Example]):
    """The engine for one target: a plain `if` over its kind (architecture.md rule 4)."""
    if target.kind == "hf":
        require_extra("evaluating a transformers model", "train", "torch", "transformers",
                      *(["peft"] if target.adapter is not None else []))
        from llmforge.evaluation.hf_engine import HFEngine

        return HFEngine(target.model, target.tokenizer, target.adapter, revision=target.revision, dtype=model.dtype,
                        trust_remote_code=model.trust_remote_code, chat_template=model.chat_template)
    if target.kind == "gguf":
        from llmforge.evaluation.gguf_engine import GGUFEngine

        return GGUFEngine(target.model, target.tokenizer, max_length=config.max_length,
                          max_new_tokens=config.max_new_tokens, seed=config.seed, chat_template=model.chat_template,
                          examples=items)
    from llmforge.evaluation.remote import HTTPEngine, OllamaEngine

    if target.kind == "ollama":
        engine = OllamaEngine(target.url, target.model, timeout=config.timeout)
        target.details["digest"] = engine.digest
        return engine
    engine = HTTPEngine(target.url, target.model, timeout=config.timeout, api_key_env=config.api_key_env)
    target.model = engine.model
    return engine


def decoding_of(config: EvalConfig) -> dict[str, Any]:
    decoding: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature}
    if config.temperature > 0:
        decoding["seed"] = config.seed  # greedy output does not depend on the seed
    return decoding


def evaluate_target(
    target: Target,
    result: TargetResult,
    items: list[Example],
    model: ModelConfig,
    config: EvalConfig,
    cache_dir: Path | None,
    progress: Progress,
) -> None:
    score_ppl, generate = wanted(config)
    engine = open_engine(target, model, config, items)
    result.fingerprint = target.fingerprint()
    try:
        if score_ppl and hasattr(engine, "score"):
            rows: list[tuple[float, int]] = []
            for i, ex in enumerate(items):
                scored = engine.score(ex, config.max_length)
                if scored is None:
                    rows = []
                    break
                rows.append(scored)
                progress(result.label, "loss", i + 1, len(items))
            if rows:
                result.nll = rows
                result.mask = ", ".join(sorted(engine.mask_how))
        if generate:
            prompts = [ex for ex in items if ex.generates]
            cache = GenerationCache(cache_dir, result.fingerprint)
            decoding = decoding_of(config)
            predictions = []
            for i, ex in enumerate(prompts):
                key = entry_key(ex.prompt, decoding)
                out = cache.get(key)
                if out is None:
                    out = engine.generate(ex.prompt, config.max_new_tokens, config.temperature, config.seed)
                    cache.put(key, out)
                    result.generated += 1
                else:
                    result.cached += 1
                predictions.append({"index": ex.index, "key": ex.key, **out})
                progress(result.label, "generate", i + 1, len(prompts))
            result.predictions = predictions
    finally:
        engine.close()
        del engine
        gc.collect()


def reported(config: EvalConfig) -> set[str]:
    """The report keys eval.metrics asks for (perplexity brings loss; rouge brings rouge1/2/L)."""
    expand = {"perplexity": ["perplexity", "loss"], "rouge": ["rouge1", "rouge2", "rougeL"]}
    return {key for name in config.metrics for key in expand.get(name, [name])}


def custom_metrics(config: EvalConfig) -> list[tuple[str, Callable]]:
    """The user's own eval.metrics functions ("mypkg.module:function"), imported before any model is loaded."""
    return [(entry, load(entry, "eval.metrics")) for entry in config.metrics if is_entry(entry)]


def summarise(result: TargetResult, items: list[Example], keep: set[str] | None = None,
              custom: list[tuple[str, Callable]] = ()) -> None:
    """Fill result.metrics from the per-example rows (metrics outside `keep` stay None; `custom` are the user's
    metric functions, reported after the built-in ones)."""
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if result.nll:
        total = sum(n for _, n in result.nll)
        nll = sum(s for s, _ in result.nll)
        metrics["loss"] = nll / total if total else None
        metrics["perplexity"] = m.perplexity(nll, total) if total else None
    if result.predictions:  # none when the data has no record ending in an assistant turn
        refs = {ex.index: ex.reference for ex in items}
        preds = result.predictions
        scores = m.score_texts([p["text"] for p in preds], [refs[p["index"]] for p in preds])
        result.text_scores = scores
        metrics.update(scores.corpus)
        for p, *values in zip(preds, *(scores.per_example[k] for k in m.TEXT_METRICS)):
            p["scores"] = dict(zip(m.TEXT_METRICS, values))
        seconds = [p["seconds"] for p in preds]
        metrics["latency_s"] = sum(seconds) / len(seconds) if seconds else None
        timed = [(p["new_tokens"], p["seconds"]) for p in preds if p.get("new_tokens") is not None]
        spent = sum(s for _, s in timed)
        metrics["tokens_per_second"] = sum(t for t, _ in timed) / spent if timed and spent > 0 else None
        texts, references = [p["text"] for p in preds], [refs[p["index"]] for p in preds]
        for entry, function in custom:
            metrics.update(m.custom_metrics(entry, function, texts, references))
    if result.judge_scores:
        for criterion in result.judge_scores[0]:
            values = [s[criterion] for s in result.judge_scores]
            metrics[f"judge_{criterion}"] = sum(values) / len(values)
    if keep is not None:
        for key in METRIC_KEYS:
            if key not in keep:
                metrics[key] = None
    result.metrics = metrics


def run_judge(results: list[TargetResult], items: list[Example], config: EvalConfig, cache_dir: Path | None,
              progress: Progress) -> None:
    from llmforge.evaluation.judge import Judge

    by_index = {ex.index: ex for ex in items}
    try:
        judge = Judge(config.judge)
    except LlmforgeError as exc:
        for r in results:
            if r.ok and r.predictions is not None:
                r.judge_error = exc.message
        return
    cache = GenerationCache(cache_dir, "judge-" + entry_key(judge.identity, {})[:20])
    for r in results:
        if not r.ok or r.predictions is None:
            continue
        scores = []
        try:
            for i, p in enumerate(r.predictions):
                ex = by_index[p["index"]]
                key = entry_key([ex.prompt, ex.reference, p["text"]], {})
                got = cache.get(key)
                if got is None:
                    got = judge.score(ex.prompt, ex.reference, p["text"])
                    cache.put(key, got)
                scores.append(got)
                progress(r.label, "judge", i + 1, len(r.predictions))
        except LlmforgeError as exc:
            r.judge_error = exc.message
            continue
        r.judge_scores = scores


def deltas(reference: TargetResult, other: TargetResult, config: EvalConfig) -> dict[str, dict[str, Any]]:
    """Paired bootstrap deltas other - reference for every metric both have."""
    out: dict[str, dict[str, Any]] = {}
    for name in METRIC_KEYS:
        if reference.metrics.get(name) is None or other.metrics.get(name) is None:
            continue
        if name in ("loss", "perplexity"):
            rows_a, fn = m.metric_rows(name, None, reference.nll)
            rows_b, _ = m.metric_rows(name, None, other.nll)
        else:
            rows_a, fn = m.metric_rows(name, reference.text_scores, None)
            rows_b, _ = m.metric_rows(name, other.text_scores, None)
        out[name] = m.bootstrap_delta(rows_a, rows_b, fn, config.bootstrap, config.seed)
    return out


def _unique(label: str, spec: str, taken: set[str]) -> str:
    """`run` and `run:NAME` may name the same run: keep report keys distinct."""
    for candidate in (label, spec):
        if candidate not in taken:
            return candidate
    n = 2
    while f"{label}#{n}" in taken:
        n += 1
    return f"{label}#{n}"


def prepare(
    targets: list[str], model: ModelConfig, config: EvalConfig, workspace: Workspace
) -> tuple[list[Example], Path, list[tuple[str, Callable]], list[Target]]:
    """(the examples, the data file, the user's metric functions, every target resolved), before any model loads."""
    data = Path(config.data) if config.data else workspace.split_file("test")
    items = example_io.load(data, config.limit)
    custom = custom_metrics(config)
    # Every target is resolved before any is evaluated: a target that names nothing (a typo, a run or file that does
    # not exist) is a usage error for the whole command, which then writes no report and no registry entry.
    resolved = [resolve(spec, workspace, model.name, model.revision, config.ollama_host) for spec in targets]
    return items, data, custom, resolved


def evaluate_all(
    targets: list[str],
    resolved: list[Target],
    items: list[Example],
    model: ModelConfig,
    config: EvalConfig,
    workspace: Workspace,
    custom: list[tuple[str, Callable]],
    progress: Progress | None = None,
) -> list[TargetResult]:
    """Evaluate every resolved target in turn (one failing alone), judge them, and fill their metrics."""
    progress = progress or (lambda *a: None)
    cache_dir = workspace.root / "eval" / "cache" if config.cache else None
    results: list[TargetResult] = []
    for spec, target in zip(targets, resolved):
        result = TargetResult(spec=spec, label=spec)
        started = time.perf_counter()
        try:
            result.label = _unique(target.label, spec, {r.label for r in results})
            result.kind, result.run = target.kind, target.run
            result.source = target.url if target.kind in ("ollama", "http") else target.model
            result.adapter = str(target.adapter) if target.adapter is not None else None
            progress(result.label, "load", 0, 1)
            evaluate_target(target, result, items, model, config, cache_dir, progress)
        except LlmforgeError as exc:
            result.error, result.hint = exc.message, exc.hint
            log.info("target %s failed: %s", spec, exc.message)
        except Exception as exc:  # a broken model or server must not take the other targets down
            if os.environ.get("LLMFORGE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
                raise
            log.debug("target %s failed", spec, exc_info=True)
            result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            result.hint = "rerun with LLMFORGE_DEBUG=1 for the traceback"
        result.seconds = round(time.perf_counter() - started, 3)
        progress(result.label, "done", 1, 1)
        results.append(result)
    by_index = {ex.index: ex for ex in items}
    for r in results:
        for p in r.predictions or []:
            p["reference"] = by_index[p["index"]].reference
    if config.judge.endpoint:
        run_judge(results, items, config, cache_dir, progress)
    for r in results:
        if r.ok:
            summarise(r, items, reported(config), custom)
    return results
