"""The rollout report over time: its requests and feedback in equal time buckets, locally and over gRPC.

Every event is recorded with an `at` the test chooses, so which bucket it lands in is known without a clock.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import make_adapter_dir
from remote_helpers import start_registry

from cli.main import main
from registry import Registry
from registry.remote.client import RemoteRegistry
from registry.rollout_report import TIMELINE_BUCKETS, TIMELINE_LATENCY_SAMPLES, BucketCell, percentile
from registry.rollouts import Arm, FeedbackRecord, Outcome

T0 = datetime(2024, 5, 1, tzinfo=UTC)
HOUR_MS = 3_600_000
LABEL_OF = {1: "A", 2: "B"}


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, tiny_base_dir):
    work = tmp_path_factory.mktemp("timeline-adapters")
    return [make_adapter_dir(tiny_base_dir, work / f"v{i}", "lora", seed=70 + i) for i in range(2)]


@pytest.fixture
def reg(registry, adapter_dirs) -> Registry:
    """`support` with versions 1 and 2, split 90/10 (revision 1)."""
    for d in adapter_dirs:
        registry.push(d, "support")
    registry.rollouts.set("support", [Arm(1, 90), Arm(2, 10)])
    return registry


def at(ms: int, offset_hours: int = 0) -> str:
    """T0 + `ms`, written with a UTC offset of `offset_hours` (the same instant whatever the offset)."""
    return (T0 + timedelta(milliseconds=ms)).astimezone(timezone(timedelta(hours=offset_hours))).isoformat(
        timespec="milliseconds")


def outcome(version: int, ms: int, status: str = "OK", latency: float = 100.0, revision: int = 1, i: int = 0,
            when: str | None = None) -> Outcome:
    return Outcome("support", revision, version, LABEL_OF[version], f"r{version}-{ms}-{i}", None, status, latency, 10.0,
                   5, 8, when or at(ms))


def feedback(version: int, ms: int, label: str, revision: int = 1, i: int = 0) -> FeedbackRecord:
    return FeedbackRecord(f"f{version}-{ms}-{i}", "support", version, revision, LABEL_OF[version], None, label, at(ms))


def bucket_arms(bucket: dict) -> dict[str, dict]:
    return {a["arm"]: a for a in bucket["arms"]}


def random_events(seed: int = 0) -> tuple[list[Outcome], list[FeedbackRecord]]:
    """A day of requests and feedback on both arms at random times, with errors, cancels and undecidable feedback."""
    rng = random.Random(seed)
    outcomes = [outcome(v, rng.randrange(24 * HOUR_MS), rng.choice(["OK"] * 6 + ["INTERNAL", "CANCELLED"]),
                        rng.uniform(20, 400), i=i) for i in range(600) for v in (1, 2) if v == 1 or i % 3 == 0]
    notes = [feedback(v, rng.randrange(24 * HOUR_MS), rng.choice(["good", "bad", "meh"]), i=i)
             for i in range(200) for v in (1, 2)]
    return outcomes, notes


def test_the_buckets_tile_the_span_and_sum_to_the_arm_totals(reg):
    outcomes, notes = random_events()
    reg.rollouts.record(outcomes, notes)
    report = reg.rollouts.report("support")
    timeline = report["timeline"]
    assert len(timeline) == TIMELINE_BUCKETS
    times = sorted(datetime.fromisoformat(r.at) for r in [*outcomes, *notes])
    assert datetime.fromisoformat(timeline[0]["start"]) == times[0]
    assert datetime.fromisoformat(timeline[-1]["end"]) == times[-1]
    widths = set()
    for before, after in itertools.pairwise(timeline):
        assert before["end"] == after["start"]
        widths.add(datetime.fromisoformat(before["end"]) - datetime.fromisoformat(before["start"]))
    assert max(widths) - min(widths) <= timedelta(milliseconds=1)  # equal, to the millisecond
    for bucket in timeline:
        assert [(a["arm"], a["version"]) for a in bucket["arms"]] == [(a["arm"], a["version"]) for a in report["arms"]]
    for arm in report["arms"]:
        in_buckets = [bucket_arms(b)[arm["arm"]] for b in timeline]
        for key in ("requests", "errors", "successes", "trials"):
            assert sum(b[key] for b in in_buckets) == arm[key], (arm["arm"], key)

    def bucket_of(when: str) -> int:
        t = datetime.fromisoformat(when)
        last = len(timeline) - 1
        return next(i for i, b in enumerate(timeline) if datetime.fromisoformat(b["start"]) <= t
                    and (t < datetime.fromisoformat(b["end"]) or i == last))

    for index, bucket in enumerate(timeline):  # every event is in the bucket whose [start, end) holds its time
        for label, got in bucket_arms(bucket).items():
            mine = [o for o in outcomes if o.arm == label and bucket_of(o.at) == index]
            assert got["requests"] == len(mine)
            assert got["errors"] == sum(o.status == "INTERNAL" for o in mine)
            assert got["latency_p50_ms"] == percentile([o.latency_ms for o in mine if o.status == "OK"], 0.5)
            decided = [f for f in notes if f.arm == label and bucket_of(f.at) == index and f.label != "meh"]
            assert (got["successes"], got["trials"]) == (sum(f.label == "good" for f in decided), len(decided))


def test_errors_and_feedback_land_in_the_bucket_of_their_time(reg):
    reg.rollouts.record(
        [outcome(1, 0), outcome(1, 1 * HOUR_MS),  # 1 h is where bucket 1 starts
         outcome(1, 5 * HOUR_MS + 30 * 60_000, "INTERNAL"), outcome(2, 5 * HOUR_MS + 31 * 60_000, "CANCELLED"),
         outcome(2, 7 * HOUR_MS, latency=10.0, i=0), outcome(2, 7 * HOUR_MS + 1, latency=30.0, i=1),
         outcome(2, 7 * HOUR_MS + 2, latency=20.0, i=2), outcome(2, 7 * HOUR_MS + 3, "DATA_LOSS", latency=999.0),
         outcome(1, 9 * HOUR_MS, when=at(9 * HOUR_MS, offset_hours=2))],  # 11:00+02:00 is 09:00 UTC
        [feedback(2, 23 * HOUR_MS + 59 * 60_000, "good"), feedback(2, 24 * HOUR_MS, "bad"),  # the latest event of all
         feedback(1, 12 * HOUR_MS, "meh"), feedback(1, 12 * HOUR_MS + 1, "yes")],
    )
    timeline = reg.rollouts.report("support")["timeline"]
    assert len(timeline) == TIMELINE_BUCKETS and timeline[-1]["end"] == at(24 * HOUR_MS)
    assert [b["start"] for b in timeline] == [at(i * HOUR_MS) for i in range(TIMELINE_BUCKETS)]
    arms = [bucket_arms(b) for b in timeline]
    assert arms[0]["A"]["requests"] == 1 and arms[1]["A"]["requests"] == 1
    assert (arms[5]["A"]["requests"], arms[5]["A"]["errors"], arms[5]["A"]["latency_p50_ms"]) == (1, 1, None)
    assert (arms[5]["B"]["requests"], arms[5]["B"]["errors"]) == (1, 0)  # a cancel is not an error
    assert (arms[7]["B"]["requests"], arms[7]["B"]["errors"], arms[7]["B"]["latency_p50_ms"]) == (4, 1, 20.0)
    assert arms[9]["A"]["requests"] == 1
    assert (arms[12]["A"]["successes"], arms[12]["A"]["trials"]) == (1, 1)  # "meh" has no binary reading
    assert (arms[23]["B"]["successes"], arms[23]["B"]["trials"]) == (1, 2)  # the span's end is in the last bucket
    assert arms[23]["A"] == {"arm": "A", "version": 1, "requests": 0, "errors": 0, "latency_p50_ms": None,
                             "successes": 0, "trials": 0}


def test_a_report_with_nothing_recorded_has_an_empty_timeline(reg):
    report = reg.rollouts.report("support")
    assert report["timeline"] == [] and [a["requests"] for a in report["arms"]] == [0, 0]


def test_since_keeps_the_timeline_to_the_later_revisions(reg):
    reg.rollouts.record([outcome(1, 0), outcome(2, HOUR_MS)])
    reg.rollouts.set("support", [Arm(1, 50), Arm(2, 50)])  # revision 2
    reg.rollouts.record([outcome(1, 10 * HOUR_MS, revision=2), outcome(2, 12 * HOUR_MS, revision=2)],
                        [feedback(2, 11 * HOUR_MS, "good", revision=2)])
    timeline = reg.rollouts.report("support", since=2)["timeline"]
    assert (timeline[0]["start"], timeline[-1]["end"]) == (at(10 * HOUR_MS), at(12 * HOUR_MS))
    assert sum(bucket_arms(b)["A"]["requests"] + bucket_arms(b)["B"]["requests"] for b in timeline) == 2


@pytest.mark.parametrize("times_ms, buckets", [([0, 0, 0], 1), ([0, 5], 5), ([0, 23], 23), ([0, 24], 24), ([0, 10**9], 24)])
def test_short_spans_get_fewer_buckets_of_at_least_a_millisecond(reg, times_ms, buckets):
    reg.rollouts.record([outcome(1, ms, i=i) for i, ms in enumerate(times_ms)])
    timeline = reg.rollouts.report("support")["timeline"]
    assert len(timeline) == buckets
    assert (timeline[0]["start"], timeline[-1]["end"]) == (at(min(times_ms)), at(max(times_ms)))
    assert sum(bucket_arms(b)["A"]["requests"] for b in timeline) == len(times_ms)
    if max(times_ms) > min(times_ms):
        assert all(b["start"] < b["end"] for b in timeline)


def test_a_time_that_cannot_be_read_counts_in_the_totals_but_in_no_bucket(reg):
    reg.rollouts.record([outcome(1, 0), outcome(1, HOUR_MS), outcome(1, 0, i=1, when="yesterday")])
    report = reg.rollouts.report("support")
    assert report["arms"][0]["requests"] == 3
    assert sum(bucket_arms(b)["A"]["requests"] for b in report["timeline"]) == 2


def test_a_bucket_keeps_a_bounded_sample_of_its_latencies():
    cell, rng = BucketCell(), random.Random(1)
    for latency in range(10 * TIMELINE_LATENCY_SAMPLES):
        cell.add_latency(float(latency), rng)
    assert cell.ok_requests == 10 * TIMELINE_LATENCY_SAMPLES and len(cell.latency_sample) == TIMELINE_LATENCY_SAMPLES
    true_p50 = 10 * TIMELINE_LATENCY_SAMPLES / 2
    assert abs(percentile(cell.latency_sample, 0.5) - true_p50) < 0.1 * true_p50


def test_the_remote_report_and_its_json_equal_the_local_ones(reg, capsys):
    outcomes, notes = random_events(seed=3)
    reg.rollouts.record(outcomes, notes)
    local = reg.rollouts.report("support")
    assert len(local["timeline"]) == TIMELINE_BUCKETS
    server, url, _ = start_registry(reg.home)
    try:
        with RemoteRegistry(url) as remote:
            assert remote.rollouts.report("support") == local
        capsys.readouterr()
        assert main(["rollout", "report", "support", "--json", "--home", str(reg.home)]) == 0
        local_json = capsys.readouterr().out
        assert main(["--registry", url, "rollout", "report", "support", "--json"]) == 0
        assert capsys.readouterr().out == local_json and '"timeline":[{"start":' in local_json
    finally:
        server.stop(0)
