"""Text metrics on (prediction, reference) pairs and paired bootstrap intervals; no torch.

BLEU and chrF are sacrebleu's corpus scores (0-100); ROUGE is rouge-score's F-measure averaged over examples (0-1);
exact match and token F1 follow SQuAD's normalisation (lower case, no punctuation, no articles) and are 0-1.
Per-example sufficient statistics are kept so bootstrap resamples recompute the same corpus scores exactly.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmforge.errors import UsageError
from llmforge.extensions import name_of, one_line

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)

TEXT_METRICS = ["bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "f1"]
LOWER_IS_BETTER = {"loss", "perplexity"}


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (two empty strings agree: 1.0)."""
    pred = normalize(prediction).split()
    ref = normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class TextScores:
    """Corpus scores plus the per-example rows that reproduce them (for deltas and bootstrap)."""

    corpus: dict[str, float | None]
    per_example: dict[str, list[float]]
    bleu_stats: np.ndarray  # (n, k) sacrebleu segment statistics
    chrf_stats: np.ndarray


def _scorers():
    from sacrebleu.metrics import BLEU, CHRF

    # effective_order for per-sentence BLEU only; the corpus score uses sacrebleu's defaults.
    return BLEU(), CHRF(), BLEU(effective_order=True)


def score_texts(predictions: Sequence[str], references: Sequence[str]) -> TextScores:
    """BLEU, ROUGE-1/2/L, chrF, exact match and token F1 over aligned prediction/reference lists."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    predictions = [p or "" for p in predictions]
    if not predictions:
        empty = np.zeros((0, 0))
        return TextScores(corpus=dict.fromkeys(TEXT_METRICS), per_example={k: [] for k in TEXT_METRICS},
                          bleu_stats=empty, chrf_stats=empty)
    bleu, chrf, sentence_bleu = _scorers()
    refs = [list(references)]
    n = len(predictions)
    bleu_stats = np.array(bleu._extract_corpus_statistics(predictions, refs), dtype=float).reshape(n, -1)
    chrf_stats = np.array(chrf._extract_corpus_statistics(predictions, refs), dtype=float).reshape(n, -1)
    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    per: dict[str, list[float]] = {m: [] for m in TEXT_METRICS}
    for pred, ref in zip(predictions, references):
        r = rouge.score(ref, pred)  # rouge-score takes (target, prediction)
        per["rouge1"].append(r["rouge1"].fmeasure)
        per["rouge2"].append(r["rouge2"].fmeasure)
        per["rougeL"].append(r["rougeL"].fmeasure)
        per["exact_match"].append(exact_match(pred, ref))
        per["f1"].append(token_f1(pred, ref))
        per["bleu"].append(sentence_bleu.sentence_score(pred, [ref]).score)
        per["chrf"].append(chrf.sentence_score(pred, [ref]).score)
    corpus: dict[str, float | None] = {"bleu": corpus_bleu(bleu_stats), "chrf": corpus_chrf(chrf_stats)}
    for name in ("rouge1", "rouge2", "rougeL", "exact_match", "f1"):
        corpus[name] = float(np.mean(per[name]))
    return TextScores(corpus=corpus, per_example=per, bleu_stats=bleu_stats, chrf_stats=chrf_stats)


def corpus_bleu(stats: np.ndarray) -> float:
    bleu = _scorers()[0]
    return float(bleu._compute_score_from_stats(stats.sum(axis=0).tolist()).score)


def corpus_chrf(stats: np.ndarray) -> float:
    chrf = _scorers()[1]
    return float(chrf._compute_score_from_stats(stats.sum(axis=0).tolist()).score)


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def metric_rows(name: str, scores: TextScores | None, nll: Sequence[tuple[float, int]] | None) -> tuple[np.ndarray, Callable]:
    """Per-example rows for metric `name` and the function that turns a selection of rows into the corpus score."""
    if name in ("loss", "perplexity"):
        rows = np.array(nll, dtype=float).reshape(-1, 2)

        def loss_of(sel: np.ndarray) -> float:
            total = sel[:, 1].sum()
            return float(sel[:, 0].sum() / total) if total else float("nan")

        if name == "loss":
            return rows, loss_of
        return rows, lambda sel: math.exp(loss_of(sel))
    assert scores is not None
    if name == "bleu":
        return scores.bleu_stats, corpus_bleu
    if name == "chrf":
        return scores.chrf_stats, corpus_chrf
    rows = np.array(scores.per_example[name], dtype=float).reshape(-1, 1)
    return rows, lambda sel: float(sel.mean())


def bootstrap_delta(
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    score: Callable[[np.ndarray], float],
    samples: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, float | None]:
    """Paired bootstrap of score(b) - score(a) over the same examples: the delta and its percentile interval."""
    n = len(rows_a)
    if n != len(rows_b):
        raise ValueError("paired bootstrap needs the same examples on both sides")
    delta = score(rows_b) - score(rows_a)
    if n == 0 or samples <= 0:
        return {"delta": delta, "low": None, "high": None}
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, size=n)
        draws[i] = score(rows_b[idx]) - score(rows_a[idx])
    tail = (1 - confidence) / 2
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return {"delta": delta, "low": None, "high": None}
    low, high = np.quantile(finite, [tail, 1 - tail])
    return {"delta": delta, "low": float(low), "high": float(high)}


def custom_metrics(entry: str, function: Callable, predictions: list[str], references: list[str]) -> dict[str, float]:
    """A user's eval.metrics function on the predictions: its float under the function's name, or its dict of
    name -> float. Anything else, or an exception inside it, is a UsageError naming the entry."""
    try:
        value = function(list(predictions), list(references))
    except Exception as exc:  # the user's code: any failure is theirs to fix
        raise UsageError(f"eval.metrics: {entry} failed: {one_line(exc)}", hint="fix the metric function") from None
    values = value if isinstance(value, dict) else {name_of(entry): value}
    out: dict[str, float] = {}
    for key, number in values.items():
        if isinstance(number, bool) or not isinstance(number, (int, float, np.number)):
            raise UsageError(f"eval.metrics: {entry} returned {type(number).__name__} for {key!r}; expected a float",
                             hint="return a float, or a dict of name -> float")
        out[str(key)] = float(number)
    return out
