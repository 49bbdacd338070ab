"""A/B rollouts in the registry and the router: splits, stickiness, growth, validation, history, reports, guards."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from conftest import make_adapter_dir, snapshot

from cli.main import main
from registry import InvalidInput, Registry
from registry.db import utcnow
from registry.rollouts import Arm, FeedbackRecord, Guard, Outcome
from server.router import BUCKETS, RolloutRouter, bucket_of, key_hash

KEYS = [f"user-{i}" for i in range(100_000)]


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, tiny_base_dir):
    work = tmp_path_factory.mktemp("rollout-adapters")
    return [make_adapter_dir(tiny_base_dir, work / f"v{i}", "lora", seed=40 + i) for i in range(4)]


@pytest.fixture
def reg(registry, adapter_dirs) -> Registry:
    """`support` with versions 1..4."""
    for d in adapter_dirs:
        registry.push(d, "support")
    return registry


def router_for(reg: Registry, rng: random.Random | None = None) -> RolloutRouter:
    router = RolloutRouter(rng)
    router.load(reg.rollouts.all_current())
    return router


def versions_by_key(router: RolloutRouter, keys=KEYS) -> dict[str, int]:
    return {k: router.pick_arm("support", k).version for k in keys}


def shares(picks) -> dict[int, float]:
    values = list(picks)
    return {v: values.count(v) / len(values) for v in set(values)}


# --- routing ------------------------------------------------------------------------------


@pytest.mark.parametrize("arms", [[(3, 90), (4, 10)], [(1, 20), (2, 30), (4, 50)], [(2, 1), (3, 99)]])
def test_a_hundred_thousand_keys_split_within_one_point_of_the_weights(reg, arms):
    reg.rollouts.set("support", [Arm(v, w) for v, w in arms], sticky=True)
    got = shares(versions_by_key(router_for(reg)).values())
    for version, weight in arms:
        assert abs(got.get(version, 0.0) - weight / 100) <= 0.01, (version, got)


def test_without_a_key_arms_are_drawn_at_random_with_the_weights(reg):
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)], sticky=True)
    router = router_for(reg, random.Random(7))
    got = shares(router.pick_arm("support").version for _ in range(100_000))
    assert abs(got[3] - 0.9) <= 0.01 and abs(got[4] - 0.1) <= 0.01


def test_a_rollout_that_is_not_sticky_ignores_the_key(reg):
    reg.rollouts.set("support", [Arm(3, 50), Arm(4, 50)], sticky=False)
    router = router_for(reg, random.Random(3))
    assert {router.pick_arm("support", "user-1").version for _ in range(200)} == {3, 4}


def test_the_same_key_gets_the_same_arm_every_time_and_after_a_restart(reg):
    reg.rollouts.set("support", [Arm(3, 50), Arm(4, 50)], sticky=True)
    first = versions_by_key(router_for(reg), KEYS[:2000])
    assert set(first.values()) == {3, 4}
    assert versions_by_key(router_for(reg), KEYS[:2000]) == first
    reopened = Registry(reg.home)  # a new process would open the registry afresh
    try:
        assert versions_by_key(router_for(reopened), KEYS[:2000]) == first
    finally:
        reopened.close()
    choice = router_for(reg).pick_arm("support", "user-1")
    assert choice.key_hash == key_hash("support", "user-1") and 0 <= bucket_of(choice.key_hash) < BUCKETS


def test_growing_the_canary_only_moves_keys_from_the_old_arm_to_it(reg):
    before = None
    for canary in (1, 5, 25, 50):
        reg.rollouts.set("support", [Arm(3, 100 - canary), Arm(4, canary)], sticky=True)
        now = versions_by_key(router_for(reg))
        if before is not None:
            assert all(now[k] == 4 for k, v in before.items() if v == 4)  # nobody leaves the canary
        assert abs(shares(now.values())[4] - canary / 100) <= 0.01
        before = now
    reg.rollouts.promote("support", 4)
    assert set(versions_by_key(router_for(reg)).values()) == {4}


def test_with_three_arms_the_canary_takes_keys_from_the_arm_below_it_only(reg):
    reg.rollouts.set("support", [Arm(1, 50), Arm(2, 45), Arm(4, 5)], sticky=True)
    before = versions_by_key(router_for(reg))
    reg.rollouts.set("support", [Arm(1, 50), Arm(2, 25), Arm(4, 25)], sticky=True)
    after = versions_by_key(router_for(reg))
    moved = {(before[k], after[k]) for k in KEYS if before[k] != after[k]}
    assert moved == {(2, 4)}


def test_names_without_a_rollout_and_cleared_rollouts_are_not_routed(reg):
    assert router_for(reg).pick_arm("support", "user-1") is None
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)])
    assert router_for(reg).pick_arm("other", "user-1") is None
    reg.rollouts.clear("support")
    assert router_for(reg).pick_arm("support", "user-1") is None


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["set", "support", "--arm", "3=90", "--arm", "4=5"], 2, "weights sum to 95 (3=90 4=5); they must sum to 100"),
        (["set", "support", "--arm", "3=90.5", "--arm", "4=9.5"], 2, "weight '90.5' is not a whole number"),
        (["set", "support", "--arm", "3:90"], 2, "arm '3:90': expected VERSION=WEIGHT"),
        (["set", "support", "--arm", "3=100", "--arm", "4=0"], 2, "arm 4=0: a weight is a whole percentage from 1 to 100"),
        (["set", "support", "--arm", "3=50", "--arm", "3=50"], 2, "version 3 is in more than one arm"),
        (["set", "support"], 2, "a rollout needs at least one arm"),
        (["set", "support", "--arm", "3=90", "--arm", "9=10"], 3, "arm 9=10: adapter 'support' has no version 9"),
        (["set", "support", "--arm", "1=90", "--arm", "4=10"], 3, "support:1 was deleted at"),
        (["set", "nope", "--arm", "1=100"], 3, "no adapter named 'nope'"),
        (["set", "Bad Name", "--arm", "1=100"], 2, "invalid adapter name 'Bad Name'"),
        (["set", "support", "--arm", "3=90", "--arm", "4=10", "--guard", "max_errors=0.1"], 2,
         "unknown guard key 'max_errors': use max_error_rate, max_p95_ratio, min_requests"),
        (["set", "support", "--arm", "3=90", "--arm", "4=10", "--guard", "max_error_rate=1.5"], 2,
         "guard max_error_rate=1.5: must be a number from 0 to 1"),
        (["set", "support", "--arm", "3=90", "--arm", "4=10", "--guard", "max_p95_ratio=0.5"], 2,
         "guard max_p95_ratio=0.5: must be a number of at least 1"),
        (["set", "support", "--arm", "3=90", "--arm", "4=10", "--guard", "max_error_rate=0.1,min_requests=2.5"], 2,
         "guard min_requests='2.5': must be a whole number of at least 1"),
        (["set", "support", "--arm", "3=90", "--arm", "4=10", "--guard", "min_requests=50"], 2, "sets no limit"),
        (["set", "support", "--arm", "4=100", "--guard", "max_error_rate=0.1"], 2, "a guard needs at least two arms"),
        (["promote", "support", "7"], 3, "arm 7=100: adapter 'support' has no version 7"),
        (["rollback", "support"], 4, "no revision before 1 to go back to"),
        (["clear", "fresh"], 3, "adapter 'fresh' has no rollout to clear"),
        (["report", "nope"], 3, "no adapter named 'nope'"),
    ],
)
def test_bad_input_is_refused_with_its_value_and_changes_nothing(reg, adapter_dirs, capsys, args, code, needle):
    reg.remove_version("support:1")
    reg.push(adapter_dirs[0], "fresh")
    reg.rollouts.set("support", [Arm(2, 50), Arm(3, 50)], reason="first")
    before = snapshot(reg.home)
    capsys.readouterr()
    assert main(["rollout", *args, "--home", str(reg.home)]) == code
    err = capsys.readouterr().err
    assert needle in err, err
    assert snapshot(reg.home) == before


def test_a_guard_is_checked_however_it_is_built():
    """A remote registry builds Guards from JSON, not from the CLI's text: the same checks apply."""
    assert Guard(max_error_rate=0.1, min_requests=5) == Guard.parse("max_error_rate=0.1,min_requests=5")
    for bad, needle in [({"max_error_rate": "0.1"}, "max_error_rate='0.1'"), ({"max_error_rate": 0.1, "min_requests": 2.0},
                        "min_requests=2.0"), ({"max_p95_ratio": float("inf")}, "max_p95_ratio=inf"), ({}, "sets no limit"),
                        ({"max_error_rate": True}, "max_error_rate=True")]:
        with pytest.raises(InvalidInput, match=re.escape(needle)):
            Guard(**bad)


def test_a_version_in_a_rollout_cannot_be_deleted(reg, capsys):
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)])
    before = snapshot(reg.home)
    assert main(["rm", "support:4", "--force", "--home", str(reg.home)]) == 4
    assert "support:4 is an arm of support's rollout (revision 1)" in capsys.readouterr().err
    assert snapshot(reg.home) == before
    reg.rollouts.clear("support")
    assert main(["rm", "support:4", "--home", str(reg.home)]) == 0


def test_every_rollout_command_has_help(capsys):
    for command in ("set", "show", "report", "promote", "rollback", "clear"):
        assert main(["rollout", command, "--help"]) == 0
        assert "Usage: reg rollout " + command in capsys.readouterr().out


# --- revisions ----------------------------------------------------------------------------


def test_every_change_is_a_revision_and_rollback_restores_exactly(reg, capsys, monkeypatch):
    monkeypatch.setenv("LORADOCK_USER", "alice")
    home = ["--home", str(reg.home)]
    assert main(["rollout", "set", "support", "--arm", "3=90", "--arm", "4=10", "--sticky", "-m", "canary", *home]) == 0
    assert "revision 1 (set): A=support:3:90% B=support:4:10%, sticky" in capsys.readouterr().out
    assert main(["rollout", "set", "support", "--arm", "3=50", "--arm", "4=50", "--guard",
                 "max_error_rate=0.05,min_requests=200", "-m", "half", *home]) == 0
    assert main(["rollout", "rollback", "support", "-m", "too fast", *home]) == 0
    assert main(["rollout", "promote", "support", "4", "-m", "ship it", *home]) == 0
    assert main(["rollout", "rollback", "support", *home]) == 0
    assert main(["rollout", "clear", "support", "-m", "done", *home]) == 0
    assert main(["rollout", "rollback", "support", *home]) == 0
    capsys.readouterr()
    assert main(["rollout", "show", "support", "--json", *home]) == 0
    shown = json.loads(capsys.readouterr().out)
    steps = [(r["revision"], r["action"], r["restores"], [(a["version"], a["weight"]) for a in r["arms"]], r["sticky"],
              r["guard"], r["reason"], r["actor"]) for r in shown["history"]]
    guard = {"max_error_rate": 0.05, "max_p95_ratio": None, "min_requests": 200}
    assert steps == [
        (1, "set", None, [(3, 90), (4, 10)], True, None, "canary", "alice"),
        (2, "set", None, [(3, 50), (4, 50)], False, guard, "half", "alice"),
        (3, "rollback", 1, [(3, 90), (4, 10)], True, None, "too fast", "alice"),
        (4, "promote", None, [(4, 100)], True, None, "ship it", "alice"),
        (5, "rollback", 3, [(3, 90), (4, 10)], True, None, "", "alice"),
        (6, "clear", None, [], False, None, "done", "alice"),
        (7, "rollback", 5, [(3, 90), (4, 10)], True, None, "", "alice"),
    ]
    assert shown["current"]["revision"] == 7 and shown["current"]["arms"][1]["ref"] == "support:4"
    capsys.readouterr()
    assert main(["rollout", "rollback", "support", *home]) == 4  # 7 restores 5, which restores 3, which restores 1
    assert "no revision before 1 (revision 7 rolled back to its state)" in capsys.readouterr().err
    assert len(reg.rollouts.history("support")) == 7


def test_show_says_what_the_bare_name_resolves_to_without_a_rollout(reg, capsys):
    assert main(["rollout", "show", "support", "--home", str(reg.home)]) == 0
    assert "no rollout: the bare name support resolves to the latest version, support:4" in capsys.readouterr().out


# --- reports and guards -------------------------------------------------------------------


def outcome(version: int, status: str = "OK", latency: float = 100.0, ttft: float = 10.0, tokens: int = 8, revision: int = 1,
            i: int = 0) -> Outcome:
    arm = "A" if version == 3 else "B"
    return Outcome("support", revision, version, arm, f"r{version}-{i}", None, status, latency, ttft, 5, tokens, utcnow())


def feedback(version: int, i: int, score: float | None, label: str = "", revision: int = 1) -> FeedbackRecord:
    return FeedbackRecord(f"r{version}-{i}", "support", version, revision, "A" if version == 3 else "B", score, label, utcnow())


def test_the_report_numbers_are_the_recorded_events(reg, capsys):
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)], sticky=True)
    rng = random.Random(0)
    events = {3: [], 4: []}
    for version, n, fail_every in ((3, 300, 50), (4, 120, 10)):
        for i in range(n):
            status = "INTERNAL" if i % fail_every == 0 else ("CANCELLED" if i % 37 == 1 else "OK")
            events[version].append(outcome(version, status, rng.uniform(50, 400), rng.uniform(5, 40), rng.randint(1, 16), i=i))
    labels = {3: ["good"] * 40 + ["bad"] * 60, 4: ["good"] * 70 + ["bad"] * 30}
    notes = [feedback(v, i, None, label) for v, ls in labels.items() for i, label in enumerate(ls)]
    notes += [feedback(4, 500 + i, score) for i, score in enumerate([0.5, 2.0, -1.0])]
    notes += [feedback(3, 900, None, "meh")]  # no binary reading: counted as feedback only
    reg.rollouts.record(events[3] + events[4], notes)
    report = reg.rollouts.report("support")
    arms = {a["version"]: a for a in report["arms"]}
    for version, recorded in events.items():
        ok = [e for e in recorded if e.status == "OK"]
        arm = arms[version]
        assert arm["requests"] == len(recorded)
        assert arm["errors"] == sum(e.status == "INTERNAL" for e in recorded)
        assert arm["latency_p50_ms"] == pytest.approx(np.percentile([e.latency_ms for e in ok], 50))
        assert arm["latency_p95_ms"] == pytest.approx(np.percentile([e.latency_ms for e in ok], 95))
        assert arm["ttft_p50_ms"] == pytest.approx(np.percentile([e.ttft_ms for e in ok], 50))
        assert arm["completion_tokens"] == sum(e.completion_tokens for e in recorded)
        assert arm["prompt_tokens"] == 5 * len(recorded)
    assert (arms[3]["feedback"], arms[3]["successes"], arms[3]["trials"], arms[3]["mean_score"]) == (101, 40, 100, None)
    assert (arms[4]["feedback"], arms[4]["successes"], arms[4]["trials"]) == (103, 72, 103)
    assert arms[4]["mean_score"] == pytest.approx(0.5)
    assert (arms[3]["arm"], arms[3]["weight"], arms[4]["arm"], arms[4]["weight"]) == ("A", 90, "B", 10)
    by_metric = {c["metric"]: c for c in report["comparisons"]}
    feedback_test = by_metric["feedback success rate"]
    assert feedback_test["verdict"] == "B better" and feedback_test["p_value"] < 0.001
    assert by_metric["request success rate"]["verdict"] == "B worse"
    capsys.readouterr()
    assert main(["rollout", "report", "support", "--json", "--home", str(reg.home)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert main(["rollout", "report", "support", "--home", str(reg.home)]) == 0
    out = capsys.readouterr().out
    assert "support:4" in out and "B better" in out


@pytest.mark.parametrize(
    "a, b, verdict, p",
    [((40, 100), (60, 100), "B better", 0.004678), ((60, 100), (40, 100), "B worse", 0.004678),
     ((50, 100), (52, 100), "no detectable difference", 0.7773), ((5, 10), (9, 10), "not enough data", None)],
)
def test_the_two_proportion_test_and_its_verdicts(a, b, verdict, p):
    from registry.rollout_report import compare

    result = compare("m", "A", a[0], a[1], "B", b[0], b[1])
    assert result["verdict"] == verdict
    assert (result["p_value"] is None) if p is None else result["p_value"] == pytest.approx(p, abs=1e-4)


def test_the_guard_routes_back_to_the_older_arms_once_the_newest_breaches(reg, capsys):
    reg.rollouts.set("support", [Arm(2, 45), Arm(3, 45), Arm(4, 10)], sticky=True,
                     guard=Guard.parse("max_error_rate=0.2,min_requests=20"))
    errors = [outcome(4, "DATA_LOSS" if i % 2 else "OK", i=i) for i in range(19)]
    reg.rollouts.record(errors)
    assert reg.rollouts.check_guard("support") is None  # 19 < min_requests
    reg.rollouts.record([outcome(4, "DATA_LOSS", i=99)])
    tripped = reg.rollouts.check_guard("support")
    assert tripped.action == "guard" and tripped.actor == "guard" and tripped.arms == [Arm(2, 50), Arm(3, 50)]
    assert tripped.reason == ("guard: support:4 error rate 50.0% (10/20) is above max_error_rate=0.2; "
                              "routed back to support:2, support:3")
    assert reg.rollouts.check_guard("support") is None  # the new revision has no guard
    assert main(["rollout", "show", "support", "--home", str(reg.home)]) == 0
    out = capsys.readouterr().out
    assert "the guard rolled the newest arm back" in out and "error rate 50.0% (10/20)" in out


def test_the_guard_compares_the_newest_arms_p95_latency_with_the_others(reg):
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)], guard=Guard.parse("max_p95_ratio=1.5,min_requests=30"))
    reg.rollouts.record([outcome(3, latency=100.0 + i, i=i) for i in range(100)]
                        + [outcome(4, latency=140.0 + i, i=i) for i in range(30)])
    assert reg.rollouts.check_guard("support") is None  # p95 169 vs 195: 0.87x
    reg.rollouts.record([outcome(4, latency=400.0, i=100 + i) for i in range(10)])
    tripped = reg.rollouts.check_guard("support")
    assert tripped is not None and "p95 latency 400 ms" in tripped.reason and tripped.arms == [Arm(3, 100)]


def test_the_guard_judges_only_the_revision_in_force(reg):
    reg.rollouts.set("support", [Arm(3, 90), Arm(4, 10)], guard=Guard.parse("max_error_rate=0.1,min_requests=10"))
    reg.rollouts.record([outcome(4, "INTERNAL", i=i) for i in range(10)])
    reg.rollouts.set("support", [Arm(3, 80), Arm(4, 20)], guard=Guard.parse("max_error_rate=0.1,min_requests=10"))
    assert reg.rollouts.check_guard("support") is None  # revision 2 has no outcomes yet


def test_an_unwritable_database_keeps_the_newest_outcomes_up_to_a_bound(reg, monkeypatch):
    """The writer keeps what it could not write for the next turn, but never more than MAX_BUFFERED of each."""
    import sqlite3

    from server import rollout_worker
    from server.router import Choice

    monkeypatch.setattr(rollout_worker, "MAX_BUFFERED", 5)
    worker = rollout_worker.RolloutWorker(Registry(reg.home), RolloutRouter())
    choice = Choice("support", 1, 1, "A", None)
    for i in range(8):
        worker.record_outcome(choice, f"req-{i}", "OK")
    other = sqlite3.connect(reg.home / "registry.db")
    other.execute("ALTER TABLE rollout_events RENAME TO rollout_events_away")  # writes now fail: no such table
    other.commit()
    with pytest.raises(sqlite3.OperationalError):
        worker.flush()
    assert worker.dropped == 3 and [o.request_id for o in worker._outcomes] == [f"req-{i}" for i in range(3, 8)]

    other.execute("ALTER TABLE rollout_events_away RENAME TO rollout_events")
    other.commit()
    assert worker.flush() == {"support"}
    rows = reg.conn.execute("SELECT request_id FROM rollout_events ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [f"req-{i}" for i in range(3, 8)]
    other.close()
    worker.registry.close()
