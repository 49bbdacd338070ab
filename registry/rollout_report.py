"""Comparing a rollout's arms from what servers recorded: counts, errors, latency, tokens, feedback, significance.

Also the guard's judgement of the newest arm. A request is an error unless it finished OK or its client
cancelled it. Feedback gives a binary outcome through its label (good/bad, yes/no, ...) or, without a
label, through the sign of its score; arms are compared on it with a two-proportion z-test.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
from dataclasses import dataclass, field

from .rollout_records import Revision, arm_label

ERROR_FREE = ("OK", "CANCELLED")
POSITIVE_LABELS = {"good", "positive", "yes", "up", "thumbs_up", "accept", "accepted", "success", "1", "true"}
NEGATIVE_LABELS = {"bad", "negative", "no", "down", "thumbs_down", "reject", "rejected", "failure", "0", "false"}
MIN_TRIALS = 30      # per arm, before a test is allowed a verdict
SIGNIFICANCE = 0.05
ALL_REVISIONS = 2**62


@dataclass
class ArmOutcomes:
    version: int
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)   # of requests that finished OK
    ttfts_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    feedback: int = 0
    scores: list[float] = field(default_factory=list)
    successes: int = 0   # feedback read as a success ...
    trials: int = 0      # ... out of the feedback with a binary reading

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def collect_outcomes(conn: sqlite3.Connection, name: str, first: int, last: int = ALL_REVISIONS) -> dict[int, ArmOutcomes]:
    """Outcomes and feedback of `name`'s routed requests in revisions first..last, by version."""
    arms: dict[int, ArmOutcomes] = {}
    rows = conn.execute(
        "SELECT version, status, latency_ms, ttft_ms, prompt_tokens, completion_tokens FROM rollout_events"
        " WHERE adapter=? AND revision BETWEEN ? AND ?", (name, first, last),
    )
    for version, status, latency, ttft, prompt_tokens, completion_tokens in rows:
        arm = arms.setdefault(version, ArmOutcomes(version))
        arm.requests += 1
        if status not in ERROR_FREE:
            arm.errors += 1
        if status == "OK":
            arm.latencies_ms.append(latency)
            arm.ttfts_ms.append(ttft)
        arm.prompt_tokens += prompt_tokens or 0
        arm.completion_tokens += completion_tokens or 0
    rows = conn.execute(
        "SELECT version, score, label FROM feedback WHERE adapter=? AND revision BETWEEN ? AND ?", (name, first, last)
    )
    for version, score, label in rows:
        arm = arms.setdefault(version, ArmOutcomes(version))
        arm.feedback += 1
        if score is not None:
            arm.scores.append(score)
        success = binary_outcome(score, label)
        if success is not None:
            arm.trials += 1
            arm.successes += success
    return arms


def binary_outcome(score: float | None, label: str) -> bool | None:
    """good/yes/... is a success, bad/no/... a failure; without a label, a positive score is a success."""
    label = (label or "").strip().lower()
    if label:
        return True if label in POSITIVE_LABELS else False if label in NEGATIVE_LABELS else None
    return None if score is None else score > 0


def percentile(values: list[float], q: float) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def two_proportion_test(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p-value) for the difference between the rates x_b/n_b and x_a/n_a."""
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (x_b / n_b - x_a / n_a) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def compare(metric: str, label_a: str, x_a: int, n_a: int, label_b: str, x_b: int, n_b: int) -> dict:
    """Arm B against arm A on a success rate, with a verdict in plain words."""
    out = {"metric": metric, "arm": label_b, "against": label_a, "rate": x_b / n_b if n_b else None,
           "against_rate": x_a / n_a if n_a else None, "z": None, "p_value": None}
    if min(n_a, n_b) < MIN_TRIALS:
        return {**out, "verdict": "not enough data"}
    z, p = two_proportion_test(x_a, n_a, x_b, n_b)
    if p >= SIGNIFICANCE:
        verdict = "no detectable difference"
    else:
        verdict = f"{label_b} better" if z > 0 else f"{label_b} worse"
    return {**out, "z": z, "p_value": p, "verdict": verdict}


def _arm_summary(name: str, label: str, o: ArmOutcomes, weight: int | None) -> dict:
    return {
        "arm": label, "version": o.version, "ref": f"{name}:{o.version}", "weight": weight, "requests": o.requests,
        "errors": o.errors, "error_rate": o.error_rate, "latency_p50_ms": percentile(o.latencies_ms, 0.5),
        "latency_p95_ms": percentile(o.latencies_ms, 0.95), "ttft_p50_ms": percentile(o.ttfts_ms, 0.5),
        "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
        "mean_completion_tokens": o.completion_tokens / o.requests if o.requests else None, "feedback": o.feedback,
        "mean_score": statistics.fmean(o.scores) if o.scores else None, "successes": o.successes, "trials": o.trials,
        "success_rate": o.successes / o.trials if o.trials else None,
    }


def build_report(conn: sqlite3.Connection, name: str, current: Revision | None, since: int) -> dict:
    """Every arm seen since revision `since` (and every arm in force), each compared with arm A (the oldest version)."""
    outcomes = collect_outcomes(conn, name, since)
    weights = {a.version: a.weight for a in current.arms} if current else {}
    versions = sorted(set(outcomes) | set(weights))
    labelled = [(arm_label(i), outcomes.get(v) or ArmOutcomes(v)) for i, v in enumerate(versions)]
    comparisons = []
    if labelled:
        label_a, a = labelled[0]
        for label_b, b in labelled[1:]:
            comparisons.append(compare("feedback success rate", label_a, a.successes, a.trials, label_b, b.successes, b.trials))
            comparisons.append(compare("request success rate", label_a, a.requests - a.errors, a.requests,
                                       label_b, b.requests - b.errors, b.requests))
    return {
        "adapter": name, "revision": current.revision if current else None, "since_revision": since,
        "arms": [_arm_summary(name, label, o, weights.get(o.version)) for label, o in labelled],
        "comparisons": comparisons,
    }


def guard_breach(revision: Revision, outcomes: dict[int, ArmOutcomes]) -> str | None:
    """Why the newest arm breaches `revision`'s guard (outcomes of that revision only), or None."""
    guard, newest = revision.guard, revision.arms[-1].version
    mine = outcomes.get(newest)
    if guard is None or mine is None or mine.requests < guard.min_requests:
        return None
    ref = f"{revision.adapter}:{newest}"
    if guard.max_error_rate is not None and mine.error_rate > guard.max_error_rate:
        return (f"guard: {ref} error rate {mine.error_rate:.1%} ({mine.errors}/{mine.requests}) is above "
                f"max_error_rate={guard.max_error_rate:g}")
    others = [ms for version, o in outcomes.items() if version != newest for ms in o.latencies_ms]
    if guard.max_p95_ratio is not None and mine.latencies_ms and others:
        p95, other_p95 = percentile(mine.latencies_ms, 0.95), percentile(others, 0.95)
        if other_p95 > 0 and p95 / other_p95 > guard.max_p95_ratio:
            return (f"guard: {ref} p95 latency {p95:.0f} ms is {p95 / other_p95:.2f}x the other arms' {other_p95:.0f} ms, "
                    f"above max_p95_ratio={guard.max_p95_ratio:g}")
    return None
