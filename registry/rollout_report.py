"""Comparing a rollout's arms from what servers recorded: counts, errors, latency, tokens, feedback, significance.

Also the guard's judgement of the newest arm. A request is an error unless it finished OK or its client
cancelled it. Feedback gives a binary outcome through its label (good/bad, yes/no, ...) or, without a
label, through the sign of its score; arms are compared on it with a two-proportion z-test. The same
requests and feedback also come split into equal time buckets (`timeline`), for a chart of the arms over time.
"""

from __future__ import annotations

import math
import random
import sqlite3
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .rollout_records import Revision, arm_label

ERROR_FREE = ("OK", "CANCELLED")
POSITIVE_LABELS = {"good", "positive", "yes", "up", "thumbs_up", "accept", "accepted", "success", "1", "true"}
NEGATIVE_LABELS = {"bad", "negative", "no", "down", "thumbs_down", "reject", "rejected", "failure", "0", "false"}
MIN_TRIALS = 30      # per arm, before a test is allowed a verdict
SIGNIFICANCE = 0.05
ALL_REVISIONS = 2**62
TIMELINE_BUCKETS = 24             # at most; a report spanning a day gets one bucket an hour
TIMELINE_LATENCY_SAMPLES = 1000   # latencies kept per arm and bucket; past that its p50 is a uniform sample's
# An event's `at` as whole milliseconds since 1970, read by SQLite: any ISO 8601 offset or none (UTC), NULL if unreadable.
# julianday() keeps exact milliseconds inside; rounding undoes the float division on the way out.
_UNIX_EPOCH_JULIAN_DAY = 2440587.5
AT_MS = f"CAST(ROUND((julianday(at) - {_UNIX_EPOCH_JULIAN_DAY}) * 86400000) AS INTEGER)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


@dataclass
class BucketCell:
    """One arm in one time bucket; its latencies are a reservoir sample of at most TIMELINE_LATENCY_SAMPLES."""

    requests: int = 0
    errors: int = 0
    ok_requests: int = 0   # the OK requests with a latency that the sample stands for
    latency_sample: list[float] = field(default_factory=list)
    successes: int = 0
    trials: int = 0

    def add_latency(self, latency_ms: float, rng: random.Random) -> None:
        self.ok_requests += 1
        if len(self.latency_sample) < TIMELINE_LATENCY_SAMPLES:
            self.latency_sample.append(latency_ms)
        else:  # Algorithm R: every latency seen so far stays in the sample with the same chance
            slot = rng.randrange(self.ok_requests)
            if slot < TIMELINE_LATENCY_SAMPLES:
                self.latency_sample[slot] = latency_ms


class Timeline:
    """A report's requests and feedback in equal time buckets, from the first event's time to the last one's.

    Times are whole milliseconds (AT_MS). Bucket i holds the events with start <= at < end; the last bucket also
    holds its end, the last event. There are at most TIMELINE_BUCKETS buckets, none shorter than a millisecond,
    and one (start = end) when every event has the same time. Memory is bounded by buckets x arms x
    TIMELINE_LATENCY_SAMPLES latencies; the sample's generator has a fixed seed, so the same events always give
    the same report (a remote one included).
    """

    def __init__(self, first_ms: int, last_ms: int, buckets: int = TIMELINE_BUCKETS):
        self.first_ms, self.span_ms = first_ms, last_ms - first_ms
        self.count = max(1, min(buckets, self.span_ms))
        self.cells: dict[tuple[int, int], BucketCell] = {}
        self._rng = random.Random(0)

    def add_request(self, at_ms: int | None, version: int, status: str, latency_ms: float | None) -> None:
        cell = self._cell(at_ms, version)
        if cell is None:
            return
        cell.requests += 1
        if status not in ERROR_FREE:
            cell.errors += 1
        if status == "OK" and latency_ms is not None:
            cell.add_latency(latency_ms, self._rng)

    def add_feedback(self, at_ms: int | None, version: int, success: bool | None) -> None:
        cell = self._cell(at_ms, version)
        if cell is not None and success is not None:
            cell.trials += 1
            cell.successes += success

    def buckets(self, arms: list[tuple[str, int]]) -> list[dict]:
        """Every bucket with every one of `arms` (label, version), in that order; zeros where an arm had nothing."""
        out = []
        for index in range(self.count):
            arm_rows = []
            for label, version in arms:
                cell = self.cells.get((index, version)) or BucketCell()
                arm_rows.append({
                    "arm": label, "version": version, "requests": cell.requests, "errors": cell.errors,
                    "latency_p50_ms": percentile(cell.latency_sample, 0.5), "successes": cell.successes,
                    "trials": cell.trials,
                })
            out.append({"start": _iso(self._start_ms(index)), "end": _iso(self._start_ms(index + 1)), "arms": arm_rows})
        return out

    def _start_ms(self, index: int) -> int:
        # ceil(span * index / count): exactly the times t with (t - first) * count // span >= index, as _cell reads them
        return self.first_ms - (-self.span_ms * index // self.count)

    def _cell(self, at_ms: int | None, version: int) -> BucketCell | None:
        if at_ms is None:  # a time SQLite cannot read: counted in the arm's totals, but on no bucket
            return None
        index = (at_ms - self.first_ms) * self.count // self.span_ms if self.span_ms else 0
        index = min(max(index, 0), self.count - 1)  # the last event, or one recorded after the span was read
        return self.cells.setdefault((index, version), BucketCell())


def _iso(ms: int) -> str:
    """Like the recorded times (`registry.db.utcnow`): UTC, to the millisecond."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def event_span(conn: sqlite3.Connection, name: str, first: int, last: int = ALL_REVISIONS) -> tuple[int, int] | None:
    """(first, last) time in ms of `name`'s recorded requests and feedback in revisions first..last; None if none."""
    where = "WHERE adapter=? AND revision BETWEEN ? AND ?"
    earliest, latest = conn.execute(
        f"SELECT MIN(t), MAX(t) FROM (SELECT {AT_MS} AS t FROM rollout_events {where}"
        f" UNION ALL SELECT {AT_MS} FROM feedback {where})", (name, first, last) * 2,
    ).fetchone()
    return None if earliest is None else (earliest, latest)


def collect_outcomes(conn: sqlite3.Connection, name: str, first: int, last: int = ALL_REVISIONS,
                     timeline: Timeline | None = None) -> dict[int, ArmOutcomes]:
    """Outcomes and feedback of `name`'s routed requests in revisions first..last, by version.

    Each row also goes to `timeline` when one is given, so a report reads each table once."""
    arms: dict[int, ArmOutcomes] = {}
    rows = conn.execute(
        f"SELECT version, status, latency_ms, ttft_ms, prompt_tokens, completion_tokens, {AT_MS} FROM rollout_events"
        " WHERE adapter=? AND revision BETWEEN ? AND ?", (name, first, last),
    )
    for version, status, latency, ttft, prompt_tokens, completion_tokens, at_ms in rows:
        if timeline is not None:
            timeline.add_request(at_ms, version, status, latency)
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
        f"SELECT version, score, label, {AT_MS} FROM feedback WHERE adapter=? AND revision BETWEEN ? AND ?",
        (name, first, last),
    )
    for version, score, label, at_ms in rows:
        arm = arms.setdefault(version, ArmOutcomes(version))
        arm.feedback += 1
        if score is not None:
            arm.scores.append(score)
        success = binary_outcome(score, label)
        if timeline is not None:
            timeline.add_feedback(at_ms, version, success)
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
    """Every arm seen since revision `since` (and every arm in force), each compared with arm A (the oldest version),
    and the same requests and feedback over time (`Timeline`; [] when nothing was recorded)."""
    span = event_span(conn, name, since)
    timeline = Timeline(*span) if span else None
    outcomes = collect_outcomes(conn, name, since, timeline=timeline)
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
        "timeline": timeline.buckets([(label, o.version) for label, o in labelled]) if timeline else [],
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
