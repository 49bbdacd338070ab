"""Many inference replicas on one registry (issue 19): three `reg serve --registry grpc://...` replicas behave as one
service. A routing key gets the same arm on every replica; a push, an alias move and rollout changes made through the
registry are served by all three; outcomes and feedback from all of them are counted together, and the guard trips
on errors spread over them.

One registry server (`reg serve --registry-only`, tokens required) and three replicas, each a real process on a free
127.0.0.1 port with its own home holding only the tiny base (load_tests/bench_replicas.py:Fleet), started once for
the module. Each test uses adapters of its own. Propagation is waited on, never timed here: the 2 s target is measured
by `python -m load_tests.bench_replicas`.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import TINY_BASE, make_adapter_dir, run_reg, wait_until

from load_tests.bench_replicas import PROMPT, Fleet, expected_routes, main
from registry import Registry
from registry.rollouts import Arm, Guard

pytestmark = pytest.mark.integration  # four `reg serve` processes

REPLICAS = 3
SAMPLE_KEYS = [f"sample-{i}" for i in range(24)]  # keys a wait checks on every replica
GUARD_ERRORS_PER_REPLICA = 5


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_base_dir):
    """The registry server and three replicas; every process is stopped when the module ends, passed or not."""
    with Fleet(tmp_path_factory.mktemp("replicas"), tiny_base_dir, REPLICAS, base_name=TINY_BASE) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_base_dir):
    """Five adapters with different weights; adapters[4] is pushed only as flaky:2 (a blob no other version shares)."""
    work = tmp_path_factory.mktemp("replica-adapters")
    return [make_adapter_dir(tiny_base_dir, work / f"seed{seed}", "lora", seed=seed) for seed in range(90, 95)]


@pytest.fixture(scope="module")
def ops(fleet):
    """The registry, through its gRPC API, with the operator's token: every change in these tests goes through it."""
    return fleet.remote("ops")


def ask(client, name: str, key: str = "", **kwargs):
    return client.generate(PROMPT, adapter=name, routing_key=key, max_new_tokens=1, **kwargs)


def on_replicas(call, indices=range(REPLICAS)) -> list:
    """`call(index)` for each replica index at once; the answers in that order."""
    with ThreadPoolExecutor(REPLICAS) as pool:
        return list(pool.map(call, indices))



def wait_served_as(fleet: Fleet, name: str, want: dict[str, tuple[str, str]], seen: list | None = None,
                   failing: grpc.StatusCode | None = None) -> None:
    """Until every replica answers a request for `name` with each routing key of `want` as its (version, arm) says.

    `seen` gets every answer on the way, as (replica, answer), None for a request that failed with status `failing`:
    such a failure counts as not there yet (any other fails the test)."""
    pending = set(range(REPLICAS))

    def answer(index: int, key: str):
        try:
            return ask(fleet.client(index), name, key)
        except grpc.RpcError as exc:
            if failing is None or exc.code() != failing:
                raise
            return None

    def matches(index: int) -> bool:
        answers = {key: answer(index, key) for key in want}
        if seen is not None:
            seen.extend((index, a) for a in answers.values())
        return all(a is not None and (a.adapter_version, a.variant) == want[key] for key, a in answers.items())

    def every_replica_matches() -> bool:
        indices = sorted(pending)
        pending.difference_update(i for i, ok in zip(indices, on_replicas(matches, indices)) if ok)
        return not pending

    wait_until(every_replica_matches, f"every replica to serve {name} as {sorted(set(want.values()))}")


def latest(name: str, version: int, keys=SAMPLE_KEYS) -> dict[str, tuple[str, str]]:
    """What a bare name without a rollout serves, for every key: its latest version, no arm."""
    return {key: (f"{name}:{version}", "") for key in keys}


def test_a_routing_key_gets_the_same_arm_on_every_replica(fleet, ops, adapters):
    for directory in adapters[:2]:
        ops.push(directory, "split")
    revision = ops.rollouts.set("split", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="replica agreement")
    wait_served_as(fleet, "split", expected_routes(revision, SAMPLE_KEYS))
    keys = [f"user-{i}" for i in range(200)]
    answers = on_replicas(lambda i: {key: (r.adapter_version, r.variant) for key in keys
                                     for r in [ask(fleet.client(i), "split", key)]})
    want = expected_routes(revision, keys)  # as the registry's revision routes them, computed apart from the replicas
    assert {arm for _, arm in want.values()} == {"A", "B"}
    for index, served in enumerate(answers):
        assert served == want, f"replica {index}: {sum(served[k] != want[k] for k in keys)} keys on another arm"


def test_a_push_an_alias_move_and_rollout_changes_reach_every_replica(fleet, ops, adapters):
    ops.push(adapters[0], "moving")
    wait_served_as(fleet, "moving", latest("moving", 1, [""]))
    ops.push(adapters[1], "moving")  # a new version of the bare name: every replica pulls and serves it
    wait_served_as(fleet, "moving", latest("moving", 2, [""]))
    for number in (1, 2, 1):
        ops.set_alias("moving", "prod", number)
        wait_served_as(fleet, "moving@prod", latest("moving", number, [""]))

    for directory in adapters[:3]:
        ops.push(directory, "live")
    changes = [
        lambda: ops.rollouts.set("live", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="split"),
        lambda: ops.rollouts.set("live", [Arm(1, 10), Arm(2, 90)], sticky=True, reason="widen"),
        lambda: ops.rollouts.promote("live", 1, reason="promote"),
        lambda: ops.rollouts.clear("live", reason="clear"),
    ]
    previous = latest("live", 3)
    for change in changes:
        revision = change()
        want = expected_routes(revision, SAMPLE_KEYS) if revision.arms else latest("live", 3)
        assert want != previous, revision  # else the wait below could pass on the old routing
        wait_served_as(fleet, "live", want)
        previous = want


def test_outcomes_and_feedback_from_every_replica_are_counted_together(fleet, ops, adapters, capsys):
    for directory in adapters[:2]:
        ops.push(directory, "fb")
    revision = ops.rollouts.set("fb", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="counted together")
    seen: list = []  # the wait's own requests are routed and counted too
    wait_served_as(fleet, "fb", expected_routes(revision, SAMPLE_KEYS[:6]), seen)
    requests = 60
    sent = on_replicas(lambda i: [(i, ask(fleet.client(i), "fb", f"k{n}", request_id=f"fb-{n}"))
                                  for n in range(i, requests, REPLICAS)])
    served = list(itertools.chain.from_iterable(sent))
    for index, answer in served:  # feedback through the replica that served the request; arm A's users are happy
        assert fleet.client(index).feedback(answer.request_id, label="good" if answer.variant == "A" else "bad")
    routed = [a for _, a in seen + served if a.variant]
    want = {arm: sum(a.variant == arm for a in routed) for arm in ("A", "B")}
    rated = {arm: sum(a.variant == arm for _, a in served) for arm in ("A", "B")}
    assert min(rated.values()) > 0 and {len(per) for per in sent} == {requests // REPLICAS}

    def counted() -> bool:
        arms = {a["arm"]: a for a in ops.rollouts.report("fb", since=revision.revision)["arms"]}
        return {arm: (arms[arm]["requests"], arms[arm]["feedback"]) if arm in arms else None for arm in want} == \
            {arm: (want[arm], rated[arm]) for arm in want}

    wait_until(counted, "the registry to count the requests and feedback of all three replicas")
    code, out, _ = run_reg(capsys, "--registry", fleet.url, "--token", fleet.tokens["ops"], "rollout", "report", "fb",
                           "--since", str(revision.revision), "--json")
    assert code == 0
    arms = {a["arm"]: a for a in json.loads(out)["arms"]}
    for arm in want:
        assert (arms[arm]["requests"], arms[arm]["errors"], arms[arm]["feedback"]) == (want[arm], 0, rated[arm])
        assert arms[arm]["trials"] == rated[arm] and arms[arm]["successes"] == (rated[arm] if arm == "A" else 0)


def test_the_guard_trips_on_errors_spread_over_the_replicas(fleet, ops, adapters):
    """flaky:2's stored weights are corrupted in the registry, so each replica fails every request routed to it. Each
    replica sends fewer than the guard's min_requests; only counted together do they reach it."""
    ops.push(adapters[0], "flaky")
    weights = next(f for f in ops.push(adapters[4], "flaky").version.files if f.path == "adapter_model.safetensors")
    registry = Registry(fleet.registry_home)
    blob = registry.blobs.path(weights.sha256)
    registry.close()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    min_requests = GUARD_ERRORS_PER_REPLICA * REPLICAS
    first = ops.rollouts.set("flaky", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="canary with a guard",
                             guard=Guard.parse(f"max_error_rate=0.2,min_requests={min_requests}"))
    routes = expected_routes(first, [f"user-{i}" for i in range(100)])
    healthy = [key for key, (ref, _) in routes.items() if ref == "flaky:1"][:6]
    doomed = [key for key, (ref, _) in routes.items() if ref == "flaky:2"][:GUARD_ERRORS_PER_REPLICA]
    # until a replica routes by the rollout, the bare name is flaky:2 there, which fails (and is no rollout outcome)
    wait_served_as(fleet, "flaky", {key: routes[key] for key in healthy}, failing=grpc.StatusCode.DATA_LOSS)

    def fail(index: int) -> list[str]:
        codes = []
        for key in doomed:
            with pytest.raises(grpc.RpcError) as failed:
                ask(fleet.client(index), "flaky", key)
            codes.append(failed.value.code().name)
        return codes

    assert on_replicas(fail) == [["DATA_LOSS"] * GUARD_ERRORS_PER_REPLICA] * REPLICAS
    wait_until(lambda: ops.rollouts.show("flaky")["current"]["action"] == "guard",
               "the guard to trip on the errors of all three replicas")
    current = ops.rollouts.show("flaky")["current"]
    assert current["actor"] == "guard" and [a["ref"] for a in current["arms"]] == ["flaky:1"]
    assert "flaky:2 error rate 100.0%" in current["reason"]
    late: list = []  # a replica still routing by the old revision fails them, and records those failures too
    wait_served_as(fleet, "flaky", {key: ("flaky:1", "A") for key in doomed}, late, failing=grpc.StatusCode.DATA_LOSS)
    failures = min_requests + sum(a is None for _, a in late)
    wait_until(lambda: {a["ref"]: (a["requests"], a["errors"]) for a in ops.rollouts.report(
        "flaky", since=first.revision)["arms"]}.get("flaky:2") == (failures, failures), f"{failures} failures counted")


def test_feedback_through_another_replica_than_the_one_that_served_is_counted(fleet, ops, adapters):
    ops.push(adapters[0], "elsewhere")
    revision = ops.rollouts.set("elsewhere", [Arm(1, 100)], reason="feedback elsewhere")
    wait_served_as(fleet, "elsewhere", expected_routes(revision, [""]))
    answer = ask(fleet.client(0), "elsewhere", request_id="elsewhere-1")
    assert fleet.client(1).feedback(answer.request_id, label="good")
    wait_until(lambda: [a["feedback"] for a in ops.rollouts.report("elsewhere")["arms"]] == [1],
               "the feedback to be counted")


def test_the_propagation_benchmark_runs_end_to_end(tmp_path):
    """`python -m load_tests.bench_replicas`, small: it checks that the script works, not the speed."""
    assert main(["--changes", "2", "--keys", "20", "--replicas", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["agreement"]["agreement"] == 1.0 and result["agreement"]["keys"] == 20
    assert {kind: s["samples"] for kind, s in result["propagation"].items()} == \
        {"push": 4, "alias move": 4, "rollout weights": 4}
    assert "| rollout weights | 0.5 s rollout poll | 2 x 2 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("outcome_first", [True, False], ids=["outcome-first", "feedback-first"])
def test_feedback_a_replica_could_not_place_takes_its_requests_arm_in_either_order(registry, tmp_path, outcome_first):
    """The registry's side of cross-replica feedback, without servers: whichever of the serving replica's outcome and
    the other replica's feedback is written first, the feedback ends up with the request's adapter, version and arm."""
    from registry.db import utcnow
    from registry.rollouts import FeedbackRecord, Outcome

    registry.push(make_adapter_dir(registry.resolve_base(TINY_BASE).path, tmp_path / "a", "lora", seed=7), "placed")
    revision = registry.rollouts.set("placed", [Arm(1, 100)], reason="test")
    outcome = Outcome("placed", revision.revision, 1, "A", "req-1", None, "OK", 5.0, 1.0, 3, 1, utcnow())
    unplaced = FeedbackRecord("req-1", "", None, None, "", 1.0, "good", utcnow())
    stray = FeedbackRecord("req-nobody-served", "", None, None, "", -1.0, "", utcnow())
    writes = [([outcome], []), ([], [unplaced, stray])]
    for outcomes, feedback in (writes if outcome_first else writes[::-1]):
        registry.rollouts.record(outcomes, feedback)
    rows = registry.rollouts.conn.execute("SELECT request_id, adapter, version, revision, arm FROM feedback"
                                          " ORDER BY request_id").fetchall()
    assert [tuple(r) for r in rows] == [("req-1", "placed", 1, revision.revision, "A"),
                                        ("req-nobody-served", "", None, None, "")]
    [arm] = registry.rollouts.report("placed")["arms"]
    assert arm["feedback"] == 1  # the stray one is counted nowhere
