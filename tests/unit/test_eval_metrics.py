"""Text metrics agree with the libraries and with hand computation; bootstrap deltas behave. No torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llmforge.evaluation import metrics as m

PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("A quick brown fox jumps over the dog", "The quick brown fox jumped over the lazy dog."),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("", "Something was expected here."),
    ("forty-two", "42"),
    ("Lighthouses burn oil for twelve hours.", "A lamp that burns for 12 hours uses about 3 litres of oil."),
]
PREDS = [p for p, _ in PAIRS]
REFS = [r for _, r in PAIRS]


def test_normalize_drops_case_punctuation_articles_and_spaces():
    assert m.normalize("  The  Cat, sat!  on AN old   mat. ") == "cat sat on old mat"
    assert m.normalize("Theatre") == "theatre"  # 'the' only as a whole word


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("Paris.", "paris", 1.0),
        ("The Paris", "Paris!", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match_hand_cases(pred, ref, expected):
    assert m.exact_match(pred, ref) == expected


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        # 1 common token of 2 predicted and 1 reference: P = 1/2, R = 1, F1 = 2/3
        ("Paris, France", "Paris", 2 / 3),
        # common: sat, on, mat (3); pred 4 tokens (cat sat on mat), ref 5 (dog sat on red mat): P=3/4 R=3/5
        ("The cat sat on the mat", "a dog sat on a red mat", 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)),
        # a repeated token matches at most as often as it appears on both sides: common x, y -> P = R = 2/3
        ("x x y", "x y y", 2 * (2 / 3) * (2 / 3) / (4 / 3)),
        ("nothing shared", "entirely different", 0.0),
        ("", "something", 0.0),
        ("", "", 1.0),
    ],
)
def test_token_f1_hand_cases(pred, ref, expected):
    assert m.token_f1(pred, ref) == pytest.approx(expected)


def test_bleu_and_chrf_equal_sacrebleu_corpus_scores():
    scores = m.score_texts(PREDS, REFS)
    assert scores.corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score, abs=1e-9)
    assert scores.corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score, abs=1e-9)
    # per-example values are sacrebleu's sentence scores
    for pred, ref, value in zip(PREDS, REFS, scores.per_example["chrf"]):
        assert value == pytest.approx(sacrebleu.sentence_chrf(pred, [ref]).score)
    assert scores.per_example["bleu"][0] == pytest.approx(100.0)


def test_rouge_equals_rouge_score_mean_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    scores = m.score_texts(PREDS, REFS)
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = [scorer.score(ref, pred)[key].fmeasure for pred, ref in PAIRS]
        assert scores.per_example[key] == pytest.approx(expected)
        assert scores.corpus[key] == pytest.approx(sum(expected) / len(expected))


def test_exact_match_and_f1_corpus_are_means():
    scores = m.score_texts(PREDS, REFS)
    assert scores.per_example["exact_match"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert scores.corpus["exact_match"] == pytest.approx(1 / 6)
    assert scores.corpus["f1"] == pytest.approx(np.mean([m.token_f1(p, r) for p, r in PAIRS]))


def test_bleu_stats_resample_reproduce_corpus_scores_of_the_subset():
    scores = m.score_texts(PREDS, REFS)
    idx = [0, 1, 1, 5]
    sub_p, sub_r = [PREDS[i] for i in idx], [REFS[i] for i in idx]
    assert m.corpus_bleu(scores.bleu_stats[idx]) == pytest.approx(sacrebleu.corpus_bleu(sub_p, [sub_r]).score)
    assert m.corpus_chrf(scores.chrf_stats[idx]) == pytest.approx(sacrebleu.corpus_chrf(sub_p, [sub_r]).score)


def test_perplexity_is_exp_of_token_weighted_mean_nll():
    rows = [(2.0, 4), (6.0, 2)]  # 8 nats over 6 tokens
    values, fn = m.metric_rows("perplexity", None, rows)
    assert fn(values) == pytest.approx(math.exp(8 / 6))
    values, fn = m.metric_rows("loss", None, rows)
    assert fn(values) == pytest.approx(8 / 6)
    assert m.perplexity(8.0, 6) == pytest.approx(math.exp(8 / 6))


def test_bootstrap_delta_is_zero_for_identical_sides_and_seeded():
    rows = np.array([[1.0], [0.0], [1.0], [1.0]])
    out = m.bootstrap_delta(rows, rows, lambda s: float(s.mean()), 200, seed=3)
    assert out == {"delta": 0.0, "low": 0.0, "high": 0.0}
    a = np.array([[0.0]] * 10 + [[1.0]] * 10)
    b = np.array([[1.0]] * 20)
    first = m.bootstrap_delta(a, b, lambda s: float(s.mean()), 500, seed=7)
    again = m.bootstrap_delta(a, b, lambda s: float(s.mean()), 500, seed=7)
    assert first == again
    assert first["delta"] == pytest.approx(0.5)
    assert 0.2 < first["low"] < 0.5 < first["high"] <= 0.8


def test_bootstrap_off_gives_no_interval():
    rows = np.array([[1.0], [2.0]])
    assert m.bootstrap_delta(rows, rows + 1, lambda s: float(s.mean()), 0, seed=0) == {
        "delta": 1.0, "low": None, "high": None}


def test_metrics_module_does_not_import_torch():
    code = (
        "from llmforge.evaluation import metrics as m\n"
        "m.score_texts(['a b c'], ['a b d'])\n"
        "import sys, json\nprint(json.dumps('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def test_no_pairs_gives_no_scores():
    scores = m.score_texts([], [])
    assert scores.corpus == dict.fromkeys(m.TEXT_METRICS) and scores.per_example["f1"] == []
