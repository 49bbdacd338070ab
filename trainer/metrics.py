"""Text-generation metrics for the trainer's evaluation: pure Python, no torch at import.

Each metric names the reference implementation it follows, so a number recorded in the registry
can be compared with a published one:

- `exact_match`: equality after `normalize_answer` (our own, lighter than SQuAD's; see there).
- `rouge_l`: rouge-score's `rougeL` F-measure with its default tokenizer and no stemmer.
- `bleu`: sacrebleu's corpus BLEU with its default `13a` tokenizer, case-sensitive; `smooth=True`
  is sacrebleu's `smooth_method="add-k", smooth_value=1`, not its default `"exp"`.
- `distinct_n`: Li et al. (2016), over `bleu_tokenize` tokens of case-folded text.

Predictions and references are paired by position, one reference per prediction. Scores are on a
0..1 scale (sacrebleu reports BLEU on 0..100).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

TASK_METRICS = ("exact_match", "rouge_l", "bleu")
"""The reference-based metrics `compute_generation_metrics` can report as the task score."""

OVERFIT_MARGIN = 0.02
"""How far above its best (relative) validation loss must stay for `overfitting_flag`'s second rule."""


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    # A bare string would be scored character by character; refuse it rather than return nonsense.
    for name, texts in (("predictions", predictions), ("references", references)):
        if isinstance(texts, str):
            raise TypeError(f"{name} must be a list of strings, not a single string")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return list(zip(predictions, references))


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# --- exact match -----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Normalize a short answer for `exact_match`.

    Exactly these steps, in order:

    1. case-fold (`str.casefold`, so "Straße" and "STRASSE" agree);
    2. split on runs of Unicode whitespace and rejoin with single spaces, which also strips both ends;
    3. drop trailing characters that are spaces or Unicode punctuation (category P*), except
       `_KEPT_TRAILING` (% ‰ ‱ # ′ ″), which change what an answer means ("50%", "C#", "6′"); so
       " Paris. " and "paris !" both become "paris".

    Leading and inner punctuation stay ("3.14", "U.S" from "U.S."), as do symbols ("$5", "C++").
    Unlike SQuAD's normalizer, articles and inner punctuation are not removed.
    """
    text = " ".join(text.casefold().split())
    end = len(text)
    while end and _is_trailing_noise(text[end - 1]):
        end -= 1
    return text[:end]


_KEPT_TRAILING = frozenset("%‰‱#′″")


def _is_trailing_noise(char: str) -> bool:
    return char == " " or (unicodedata.category(char).startswith("P") and char not in _KEPT_TRAILING)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0..1) of pairs equal after `normalize_answer`."""
    pairs = _pairs(predictions, references)
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / len(pairs)


# --- ROUGE-L ---------------------------------------------------------------------------------

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer: `str.lower`, then runs of ASCII [a-z0-9]; all else separates.

    Like rouge-score, non-ASCII letters are separators too: "café" -> ["caf"], and text with no
    ASCII letters or digits (Chinese, say) has no tokens and scores 0.
    """
    return _ROUGE_TOKEN.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    # One row of the classic DP table, O(len(b)) memory; `above_left` is the previous row's [j - 1].
    row = [0] * (len(b) + 1)
    for x in a:
        above_left = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = above_left + 1 if x == y else max(above, row[j - 1])
            above_left = above
    return row[-1]


def _rouge_l_pair(prediction: str, reference: str) -> float:
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean over pairs of ROUGE-L F1 (beta=1, rouge-score's `fmeasure`), 0..1.

    Per pair: LCS = longest common token subsequence of `rouge_tokenize` tokens, precision =
    LCS / prediction tokens, recall = LCS / reference tokens, F1 = 2PR / (P + R); 0 when either
    side has no tokens. No stemming (rouge-score's `use_stemmer=False` default).
    """
    pairs = _pairs(predictions, references)
    return sum(_rouge_l_pair(p, r) for p, r in pairs) / len(pairs)


# --- BLEU ------------------------------------------------------------------------------------

# sacrebleu's 13a rules (mteval-v13a.pl), applied in order.
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # split off most ASCII punctuation
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma, unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... or unless before one
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]
_13A_UNESCAPE = [("<skipped>", ""), ("-\n", ""), ("\n", " "), ("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]


def bleu_tokenize(text: str) -> list[str]:
    """sacrebleu's `13a` tokenizer, case preserved.

    Splits off ASCII punctuation and symbols (`!"#$%&()*+/:;<=>?@[\\]^_`{|}~`) everywhere; periods
    and commas unless between digits ("3.14", "1,000" stay whole); a dash only after a digit
    ("1990-2000" -> "1990 - 2000", "well-known" stays). Apostrophes are not split ("don't" is one
    token). Also unescapes `&quot; &amp; &lt; &gt;` and joins "-\\n" line breaks, as 13a does.
    """
    text = text.rstrip()
    for old, new in _13A_UNESCAPE:
        text = text.replace(old, new)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4, smooth: bool = True) -> float:
    """Corpus-level BLEU (Papineni et al., 2002), 0..1, one reference per prediction.

    Clipped n-gram matches and n-gram totals for n = 1..max_n are summed over the whole corpus
    before dividing (not averaged per sentence). BLEU = BP * exp(mean of log p_n), with brevity
    penalty BP = exp(1 - r/c) when the summed prediction length c is shorter than the summed
    reference length r, else 1 (0 when c = 0). Tokens come from `bleu_tokenize`.

    With `smooth`, p_n = (matches + 1) / (total + 1) for every n > 1: Lin & Och (2004)'s add-one
    applied to the corpus totals, exactly sacrebleu's `smooth_method="add-k", smooth_value=1`.
    The unigram precision is never smoothed, so no unigram match still scores 0. Without `smooth`,
    any order with no match (e.g. predictions shorter than max_n tokens) makes the score 0.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for prediction, reference in _pairs(predictions, references):
        pred, ref = bleu_tokenize(prediction), bleu_tokenize(reference)
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for n in range(1, max_n + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred, n), _ngrams(ref, n)
            totals[n - 1] += sum(pred_ngrams.values())
            matches[n - 1] += sum(min(count, ref_ngrams[gram]) for gram, count in pred_ngrams.items())

    log_precision_sum = 0.0
    for n, (matched, total) in enumerate(zip(matches, totals), start=1):
        if smooth and n > 1:
            matched, total = matched + 1, total + 1
        if matched == 0:  # also covers an empty corpus of predictions (pred_len == 0)
            return 0.0
        log_precision_sum += math.log(matched / total)
    brevity_penalty = 1.0 if pred_len >= ref_len else math.exp(1 - ref_len / pred_len)
    return brevity_penalty * math.exp(log_precision_sum / max_n)


# --- diversity -------------------------------------------------------------------------------


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / total n-grams, pooled over all texts.

    Tokens are `bleu_tokenize` of the case-folded text, so "The" and "the." share the token "the";
    n-grams do not cross text boundaries. 0.0 when there are no n-grams at all.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        counts.update(_ngrams(bleu_tokenize(text.casefold()), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


# --- loss curves -----------------------------------------------------------------------------


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy in nats); `inf` instead of OverflowError for huge losses."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    # Two decimals as a rule, more when two decimals would show a change as "1.00 -> 1.00".
    for digits in range(2, 7):
        left, right = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if left != right:
            break
    return left, right


def overfitting_flag(
    train_curve: Sequence[tuple[float, float]], val_curve: Sequence[tuple[float, float]], window: int = 3
) -> tuple[bool, str]:
    """Whether validation loss has been rising while training loss fell, with an explanation.

    Curves are (step, loss) points, in any order. The window is the last `window` validation
    evaluations plus the one before them, spanning steps s0..s1. Validation counts as risen when
    either each of the last `window` evaluations is higher than the one before it, or each of them
    is more than 2% (`OVERFIT_MARGIN`) above the best validation loss before the window (this
    catches a noisy climb). Training loss counts as fallen when the last training point at or
    before s1 is lower than the last one at or before s0 (the first in the window if none precedes it).

    Returns (True, "val loss rose 1.21 -> 1.35 over steps 40-60 while train loss fell 0.90 -> 0.61")
    when both hold; (False, <why not>) when there is enough data but they do not; (False, "") with
    fewer than `window` + 1 validation points or without two training points to compare across s0..s1.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    val = sorted(val_curve)
    train = sorted(train_curve)
    if len(val) < window + 1:
        return False, ""
    (s0, v0), (s1, v1) = val[-window - 1], val[-1]
    train_start = next((p for p in reversed(train) if p[0] <= s0), None)
    if train_start is None:
        train_start = next((p for p in train if s0 <= p[0] <= s1), None)
    train_end = next((p for p in reversed(train) if p[0] <= s1), None)
    if train_start is None or train_end is None or train_start[0] >= train_end[0]:
        return False, ""

    recent = [loss for _, loss in val[-window:]]
    rose_every_eval = all(later > earlier for earlier, later in zip([v0, *recent], recent))
    best_step, best = min(val[:-window], key=lambda p: p[1])
    above_best = all(loss > best + OVERFIT_MARGIN * abs(best) for loss in recent)
    t0, t1 = _fmt_pair(train_start[1], train_end[1])
    train_fell = train_end[1] < train_start[1]

    if rose_every_eval:
        a, b = _fmt_pair(v0, v1)
        val_text = f"val loss rose {a} -> {b} over steps {s0}-{s1}"
    elif above_best:
        a, b = _fmt_pair(best, v1)
        val_text = (
            f"val loss stayed more than {OVERFIT_MARGIN:.0%} above its best {a} (step {best_step})"
            f" for the last {window} evals, now {b} at step {s1}"
        )
    else:
        a, b = _fmt_pair(v0, v1)
        return False, f"val loss has not risen over the last {window} evals ({a} -> {b} over steps {s0}-{s1})"
    if not train_fell:
        return False, f"{val_text}, but train loss did not fall ({t0} -> {t1}), so this is not overfitting"
    if rose_every_eval:
        return True, f"{val_text} while train loss fell {t0} -> {t1}"
    return True, f"{val_text}, while train loss fell {t0} -> {t1} over steps {s0}-{s1}"


# --- all together ----------------------------------------------------------------------------


def compute_generation_metrics(
    predictions: Sequence[str], references: Sequence[str], task_metric: str = "exact_match"
) -> dict[str, float | str]:
    """Every metric above for one evaluation set, plus the one the task is judged by.

    Returns {"exact_match", "rouge_l", "bleu", "distinct_1", "distinct_2", "task_metric",
    "task_score"}; distinct-n is over the predictions. `task_metric` is one of `TASK_METRICS`.
    """
    if task_metric not in TASK_METRICS:
        raise ValueError(f"unknown task_metric {task_metric!r}; expected one of: {', '.join(TASK_METRICS)}")
    results: dict[str, float | str] = {
        "exact_match": exact_match(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "bleu": bleu(predictions, references),
        "distinct_1": distinct_n(predictions, 1),
        "distinct_2": distinct_n(predictions, 2),
    }
    results["task_metric"] = task_metric
    results["task_score"] = results[task_metric]
    return results
