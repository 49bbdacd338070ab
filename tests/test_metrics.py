"""trainer.metrics against numbers worked out by hand (no reference package is installed to compare with)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.metrics import (
    TASK_METRICS,
    bleu,
    bleu_tokenize,
    compute_generation_metrics,
    distinct_n,
    exact_match,
    normalize_answer,
    overfitting_flag,
    perplexity,
    rouge_l,
    rouge_tokenize,
)

CAT_SAT = "the cat sat on the mat"
CAT_WAS = "the cat was on the mat"


def test_importing_metrics_does_not_import_torch():
    code = "import sys, trainer.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


# --- exact match -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Paris. ", "paris"),
        ("PARIS", "paris"),
        ("New \t York\n City", "new york city"),
        ("what ?!", "what"),  # trailing punctuation and the space before it
        ("U.S.", "u.s"),  # only trailing punctuation goes
        ("3.14", "3.14"),
        ("50%.", "50%"),  # % is punctuation to Unicode but changes the answer, so it stays
        ("C#", "c#"),
        ("C++!", "c++"),  # + is a symbol, not punctuation
        ("Straße", "strasse"),  # casefold, not lower
        ("", ""),
        (" ... ", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_normalizes_before_comparing():
    assert exact_match([" Paris. "], ["paris"]) == 1.0
    # Pairs 1 and 2 match after normalization, pair 3 does not: 2/3.
    assert exact_match([" Paris. ", "Berlin", "rome"], ["paris", "berlin!", "Madrid"]) == pytest.approx(2 / 3)
    assert exact_match(["a cat"], ["cat"]) == 0.0  # articles are kept, unlike SQuAD


@pytest.mark.parametrize("metric", [exact_match, rouge_l, bleu])
def test_paired_metrics_reject_bad_input(metric):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        metric([], [])
    with pytest.raises(TypeError, match="single string"):
        metric("paris", "paris")


# --- ROUGE-L ---------------------------------------------------------------------------------


def test_rouge_tokenize_matches_rouge_score_default():
    assert rouge_tokenize("The café, costs $3.14!") == ["the", "caf", "costs", "3", "14"]


def test_rouge_l_hand_computed():
    # LCS of the|cat|sat|on|the|mat and the|cat|was|on|the|mat is the|cat|on|the|mat = 5 tokens:
    # P = 5/6, R = 5/6, F1 = 5/6.
    assert rouge_l([CAT_SAT], [CAT_WAS]) == pytest.approx(5 / 6)
    # "the cat" vs "the cat sat down": LCS 2, P = 2/2, R = 2/4, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert rouge_l(["the cat"], ["the cat sat down"]) == pytest.approx(2 / 3)
    # The mean over pairs: (5/6 + 2/3) / 2 = 3/4.
    assert rouge_l([CAT_SAT, "the cat"], [CAT_WAS, "the cat sat down"]) == pytest.approx(3 / 4)
    # Order matters: LCS of cat|the and the|cat is 1, P = R = F1 = 1/2.
    assert rouge_l(["cat the"], ["the cat"]) == pytest.approx(1 / 2)


def test_rouge_l_edge_cases():
    assert rouge_l(["The CAT."], ["the cat"]) == 1.0  # case and punctuation are not tokens
    assert rouge_l(["dog"], ["cat"]) == 0.0
    assert rouge_l([""], ["cat"]) == 0.0
    # rouge-score parity: no ASCII letters or digits means no tokens, hence 0 even for equal text.
    assert rouge_l(["北京"], ["北京"]) == 0.0


# --- BLEU ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Hello, world!", ["Hello", ",", "world", "!"]),
        ("It costs $3.14, or 1,000 yen.", ["It", "costs", "$", "3.14", ",", "or", "1,000", "yen", "."]),
        ("don't stop well-known 1990-2000", ["don't", "stop", "well-known", "1990", "-", "2000"]),
        ("a &amp; b (c) x/y", ["a", "&", "b", "(", "c", ")", "x", "/", "y"]),
    ],
)
def test_bleu_tokenize_follows_13a(text, tokens):
    assert bleu_tokenize(text) == tokens


def test_bleu_identical_sentences_score_one():
    assert bleu([CAT_SAT], [CAT_SAT]) == 1.0
    assert bleu([CAT_SAT], [CAT_SAT], smooth=False) == 1.0


def test_bleu_partial_overlap_hand_computed():
    # the cat sat on the mat / the cat was on the mat, equal lengths so BP = 1.
    # matches/totals: 1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat),
    # 3-grams 1/4 (on the mat), 4-grams 0/3.
    # Unsmoothed: a zero precision makes BLEU 0.
    assert bleu([CAT_SAT], [CAT_WAS], smooth=False) == 0.0
    # Add-one for n > 1: 5/6 * 4/6 * 2/5 * 1/4 = 40/720 = 1/18, BLEU = (1/18) ** (1/4) ~ 0.4855.
    score = bleu([CAT_SAT], [CAT_WAS])
    assert 0 < score < 1
    assert score == pytest.approx((1 / 18) ** 0.25)
    # With max_n=1 BLEU is the unigram precision alone.
    assert bleu([CAT_SAT], [CAT_WAS], max_n=1) == pytest.approx(5 / 6)


def test_bleu_brevity_penalty_hand_computed():
    # Prediction = the first 6 of the reference's 9 tokens: every precision is 1 (smoothed or
    # not), c = 6 < r = 9, so BLEU = BP = exp(1 - 9/6) = exp(-0.5) ~ 0.6065.
    reference = "the quick brown fox jumps over the lazy dog"
    assert bleu(["the quick brown fox jumps over"], [reference]) == pytest.approx(math.exp(-0.5))
    assert bleu(["the quick brown fox jumps over"], [reference], smooth=False) == pytest.approx(math.exp(-0.5))
    # A longer prediction is not penalized for length: c = 10 > r = 9, BP = 1, precisions
    # 9/10, 8/9, 7/8, 6/7 multiply to 6/10, BLEU = 0.6 ** (1/4).
    assert bleu([reference + " today"], [reference], smooth=False) == pytest.approx(0.6**0.25)


def test_bleu_is_corpus_level():
    # Counts are pooled before dividing. Pair 1 is identical (4/4, 3/3, 2/2, 1/1); pair 2,
    # "w x y z" vs "w x y q", has 3/4, 2/3, 1/2, 0/1. Pooled: 7/8, 5/6, 3/4, 1/2, product 35/128.
    # (A mean of sentence scores would be (1 + 0) / 2 = 0.5.)
    score = bleu(["a b c d", "w x y z"], ["a b c d", "w x y q"], smooth=False)
    assert score == pytest.approx((35 / 128) ** 0.25)


def test_bleu_clips_repeated_ngrams():
    # Papineni's example: "the" appears once in the reference, so only one of four counts: 1/4.
    assert bleu(["the the the the"], ["the cat"], max_n=1) == pytest.approx(1 / 4)


def test_bleu_short_and_empty_predictions():
    # Three tokens have no 4-grams: 0/0 unsmoothed is a zero precision; add-one makes it 1/1.
    assert bleu(["the cat sat"], ["the cat sat"], smooth=False) == 0.0
    assert bleu(["the cat sat"], ["the cat sat"]) == 1.0
    # Unigram precision is never smoothed: no unigram match is 0 either way.
    assert bleu(["dog"], ["cat"]) == 0.0
    assert bleu([""], ["the cat sat on"]) == 0.0
    with pytest.raises(ValueError, match="max_n"):
        bleu(["a"], ["a"], max_n=0)


# --- distinct-n ------------------------------------------------------------------------------


def test_distinct_n_hand_computed():
    texts = ["the cat sat", "the cat ran"]
    # Unigrams: the, cat, sat, the, cat, ran = 6, distinct {the, cat, sat, ran} = 4.
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # Bigrams: the cat, cat sat, the cat, cat ran = 4 (none across the two texts), distinct 3.
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == 1.0  # the cat sat, the cat ran
    assert distinct_n(texts, 4) == 0.0  # no 4-grams at all
    # Case-folded 13a tokens: the, cat, ., the, cat = 5, distinct {the, cat, .} = 3.
    assert distinct_n(["The cat.", "the cat"], 1) == pytest.approx(3 / 5)


def test_distinct_n_edge_cases():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a b"], 0)
    with pytest.raises(TypeError):
        distinct_n("the cat", 1)


# --- perplexity and overfitting --------------------------------------------------------------


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(4)) == pytest.approx(4.0)
    assert perplexity(1e6) == math.inf  # math.exp would raise OverflowError
    assert perplexity(math.inf) == math.inf


TRAIN_FALLING = [(10, 1.20), (20, 0.90), (30, 0.80), (40, 0.70), (50, 0.61)]


def test_overfitting_flag_when_val_rises_every_eval():
    val = [(10, 1.30), (20, 1.21), (30, 1.25), (40, 1.30), (50, 1.35)]
    assert overfitting_flag(TRAIN_FALLING, val, window=3) == (
        True,
        "val loss rose 1.21 -> 1.35 over steps 20-50 while train loss fell 0.90 -> 0.61",
    )
    # Points may come in any order.
    assert overfitting_flag(TRAIN_FALLING[::-1], val[::-1], window=3)[0] is True


def test_overfitting_flag_noisy_climb_above_best():
    # Not monotonic (1.10, 1.05, 1.08), but each is more than 2% above the best 1.00.
    val = [(10, 1.00), (20, 1.10), (30, 1.05), (40, 1.08)]
    flagged, why = overfitting_flag([(10, 0.90), (40, 0.60)], val, window=3)
    assert flagged
    assert why == (
        "val loss stayed more than 2% above its best 1.00 (step 10) for the last 3 evals, now 1.08 at step 40,"
        " while train loss fell 0.90 -> 0.60 over steps 10-40"
    )
    # Within 2% of the best (1.015, 1.01, 1.019 < 1.02) is noise, not overfitting.
    close = [(10, 1.00), (20, 1.015), (30, 1.01), (40, 1.019)]
    assert overfitting_flag([(10, 0.90), (40, 0.60)], close, window=3)[0] is False


def test_overfitting_flag_shows_small_changes():
    val = [(1, 1.0), (2, 1.001), (3, 1.002), (4, 1.004)]
    flagged, why = overfitting_flag([(1, 0.5), (4, 0.4)], val, window=3)
    assert flagged
    assert why.startswith("val loss rose 1.000 -> 1.004 over steps 1-4")


def test_overfitting_flag_false_with_reasons():
    falling = [(10, 1.30), (20, 1.20), (30, 1.10), (40, 1.05)]
    flagged, why = overfitting_flag(TRAIN_FALLING, falling, window=3)
    assert not flagged
    assert why == "val loss has not risen over the last 3 evals (1.30 -> 1.05 over steps 10-40)"

    # Both rising is divergence, not overfitting.
    rising = [(10, 1.00), (20, 1.10), (30, 1.20), (40, 1.30)]
    train_rising = [(10, 0.9), (20, 1.0), (30, 1.1), (40, 1.2)]
    flagged, why = overfitting_flag(train_rising, rising, window=3)
    assert not flagged
    assert "train loss did not fall (0.90 -> 1.20)" in why


def test_overfitting_flag_insufficient_data():
    rising = [(10, 1.00), (20, 1.10), (30, 1.20), (40, 1.30)]
    assert overfitting_flag(TRAIN_FALLING, rising[1:], window=3) == (False, "")  # 3 evals, need 4
    assert overfitting_flag([], rising, window=3) == (False, "")
    assert overfitting_flag([(40, 0.5)], rising, window=3) == (False, "")  # one train point in the span
    assert overfitting_flag([(50, 0.5), (60, 0.4)], rising, window=3) == (False, "")  # all after the span
    with pytest.raises(ValueError, match="window"):
        overfitting_flag(TRAIN_FALLING, rising, window=0)


# --- compute_generation_metrics --------------------------------------------------------------


def test_compute_generation_metrics():
    predictions, references = [CAT_SAT, " Paris. "], [CAT_WAS, "paris"]
    result = compute_generation_metrics(predictions, references, task_metric="rouge_l")
    assert set(result) == {"exact_match", "rouge_l", "bleu", "distinct_1", "distinct_2", "task_metric", "task_score"}
    assert result["exact_match"] == 0.5
    assert result["rouge_l"] == pytest.approx((5 / 6 + 1) / 2)
    assert result["bleu"] == bleu(predictions, references)
    assert result["distinct_1"] == distinct_n(predictions, 1)
    assert result["distinct_2"] == distinct_n(predictions, 2)
    assert result["task_metric"] == "rouge_l"
    assert result["task_score"] == result["rouge_l"]
    for name in TASK_METRICS:
        assert compute_generation_metrics(predictions, references, name)["task_score"] == result[name]


def test_compute_generation_metrics_rejects_unknown_task_metric():
    with pytest.raises(ValueError, match=r"unknown task_metric 'f1'; expected one of: exact_match, rouge_l, bleu"):
        compute_generation_metrics(["a"], ["a"], task_metric="f1")
