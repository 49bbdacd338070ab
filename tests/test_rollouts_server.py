"""A/B rollouts end to end: a real server on the tiny Llama, real gRPC, real registry, changes made while it serves."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conftest import TINY_BASE, make_adapter_dir, wait_until

from cli.main import main
from registry import Registry
from registry.rollouts import Arm, Guard
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from server.router import RolloutRouter

OPTIONS = dict(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=6, default_max_new_tokens=4)
ROUNDS = 300  # requests the guard test may send before its guard must have tripped


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_base_dir):
    """A registry whose adapters `support`, `fb`, `live` and `flaky` each have versions 1 and 2.

    flaky:2 has weights of its own (no other version shares its blob), so a test can corrupt them.
    """
    home = tmp_path_factory.mktemp("rollout-home")
    work = tmp_path_factory.mktemp("rollout-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    v1, v2, flaky = (make_adapter_dir(tiny_base_dir, work / f"seed{seed}", "lora", seed=seed) for seed in (61, 62, 63))
    for name, dirs in (("support", (v1, v2)), ("fb", (v1, v2)), ("live", (v1, v2)), ("flaky", (v1, flaky))):
        for d in dirs:
            reg.push(d, name, allow_duplicate=True)
    reg.close()
    return home


@pytest.fixture(scope="module")
def served(home):
    reg = Registry(home)
    server, port, service = create_server(ServerOptions(**OPTIONS), reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    yield {"reg": reg, "service": service, "client": client, "port": port}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def expected_arms(reg: Registry, name: str, keys) -> dict[str, tuple[str, str]]:
    """What the revision in force routes each key to: (NAME:N, arm), computed apart from the server."""
    router = RolloutRouter()
    router.load(reg.rollouts.all_current())
    return {k: (f"{name}:{c.version}", c.arm) for k in keys for c in [router.pick_arm(name, k)]}



def wait_for_revision(service, name: str, revision: int) -> None:
    """Let the server's background thread pick up a rollout change."""
    current = lambda: service.router.current(name)  # noqa: E731
    wait_until(lambda: current() is not None and current().revision == revision,
               f"the server to route {name} by revision {revision}")


def weights_of_every_other_version(reg: Registry, ref: str):
    return [f for a in reg.list_adapters() for v in reg.list_versions(a.name) if v.ref != ref
            for f in reg.resolve(v.ref).files]


def ask(client, name: str, key: str = "", **kwargs):
    return client.generate("hello world", adapter=name, routing_key=key, max_new_tokens=2, **kwargs)


def test_a_bare_name_goes_to_its_arm_and_the_response_says_which(served, capsys):
    reg, service, client = served["reg"], served["service"], served["client"]
    revision = reg.rollouts.set("support", [Arm(1, 50), Arm(2, 50)], sticky=True)
    wait_for_revision(service, "support", revision.revision)
    keys = [f"user-{i}" for i in range(40)]
    want = expected_arms(reg, "support", keys)
    assert {arm for _, arm in want.values()} == {"A", "B"}
    texts = {v: ask(client, f"support:{v}").text for v in (1, 2)}
    for key in keys:
        result = ask(client, "support", key)
        assert (result.adapter_version, result.variant) == want[key], key
        assert result.text == texts[int(result.adapter_version.split(":")[1])]
    again = ask(client, "support", keys[0])
    assert (again.adapter_version, again.variant) == want[keys[0]]
    final = list(client.stream("hello world", adapter="support", routing_key=keys[1], max_new_tokens=2))[-1]
    assert (final.adapter_version, final.variant) == want[keys[1]]
    for exact in ("support:1", "support:2"):  # exact refs bypass the rollout
        result = ask(client, exact, keys[0])
        assert (result.adapter_version, result.variant) == (exact, "")
    reg.set_alias("support", "prod", 1)
    assert (ask(client, "support@prod", keys[0]).adapter_version, ask(client, "support@prod").variant) == ("support:1", "")
    capsys.readouterr()
    target = ["--target", f"127.0.0.1:{served['port']}", "--raw", "--max-new-tokens", "2"]
    assert main(["generate", "hello world", "--adapter", "support", "--key", keys[0], *target]) == 0
    assert f"[{want[keys[0]][0]} / {want[keys[0]][1]}]" in capsys.readouterr().err


def test_outcomes_and_feedback_are_recorded_per_arm(served):
    reg, service, client = served["reg"], served["service"], served["client"]
    revision = reg.rollouts.set("fb", [Arm(1, 70), Arm(2, 30)], sticky=True)
    wait_for_revision(service, "fb", revision.revision)
    served_by = {}
    for i in range(60):
        result = ask(client, "fb", f"k{i}", request_id=f"fb-{i}")
        served_by[result.request_id] = result.adapter_version
    for request_id, version in served_by.items():  # arm A's users are happy, arm B's are not
        assert client.feedback(request_id, label="good" if version == "fb:1" else "bad")
    assert client.feedback("fb-0", score=0.25)
    service.rollout_worker.flush()
    arms = {a["ref"]: a for a in reg.rollouts.report("fb")["arms"]}
    counts = {v: list(served_by.values()).count(v) for v in ("fb:1", "fb:2")}
    assert min(counts.values()) > 0
    for ref, n in counts.items():
        extra = int(served_by["fb-0"] == ref)
        assert arms[ref]["requests"] == n and arms[ref]["errors"] == 0 and arms[ref]["completion_tokens"] > 0
        assert arms[ref]["feedback"] == n + extra and arms[ref]["trials"] == n + extra
        assert arms[ref]["successes"] == (n + extra if ref == "fb:1" else extra)
    assert arms[served_by["fb-0"]]["mean_score"] == 0.25


def test_the_same_key_keeps_its_arm_across_a_server_restart(served, home):
    reg, client = served["reg"], served["client"]
    revision = reg.rollouts.set("support", [Arm(1, 60), Arm(2, 40)], sticky=True, reason="restart test")
    wait_for_revision(served["service"], "support", revision.revision)
    keys = [f"sticky-{i}" for i in range(30)]
    before = {k: (r.adapter_version, r.variant) for k in keys for r in [ask(client, "support", k)]}
    assert len(set(before.values())) == 2
    for _ in range(2):  # a second server on the same registry, started and stopped twice
        reg2 = Registry(home)
        server, port, service = create_server(ServerOptions(**OPTIONS), reg2)
        try:
            with LoradockClient(f"127.0.0.1:{port}", timeout=60) as other:
                assert {k: (r.adapter_version, r.variant) for k in keys for r in [ask(other, "support", k)]} == before
        finally:
            shutdown(server, service, 0)
            reg2.close()


def test_a_split_change_reaches_a_running_server_under_load_without_a_failed_request(served, capsys):
    reg, service, client = served["reg"], served["service"], served["client"]
    first = reg.rollouts.set("live", [Arm(1, 90), Arm(2, 10)], sticky=True)
    wait_for_revision(service, "live", first.revision)
    keys = [f"load-{i}" for i in range(200)]
    old = expected_arms(reg, "live", keys)
    counter, lock, stop = itertools.count(), threading.Lock(), threading.Event()
    seen: list[tuple[int, str, str | None, str]] = []  # (start order, key, version or None, error)
    switched = {"at": None}

    def worker(offset: int) -> None:
        for i in itertools.count(offset, 8):
            if stop.is_set():
                return
            key = keys[i % len(keys)]
            with lock:
                order = next(counter)
            try:
                seen.append((order, key, ask(client, "live", key).adapter_version, ""))
            except grpc.RpcError as exc:
                seen.append((order, key, None, f"{exc.code().name}: {exc.details()}"))

    with ThreadPoolExecutor(8) as pool:
        workers = [pool.submit(worker, n) for n in range(8)]
        wait_until(lambda: len(seen) >= 80 or any(w.done() for w in workers), "80 requests before the change")
        assert main(["rollout", "set", "live", "--arm", "1=50", "--arm", "2=50", "--sticky", "-m", "widen",
                     "--home", str(reg.home)]) == 0
        wait_for_revision(service, "live", first.revision + 1)
        with lock:
            switched["at"] = next(counter)
        wait_until(lambda: sum(s[0] > switched["at"] for s in list(seen)) >= 200 or any(w.done() for w in workers),
                   "200 requests after the change")
        stop.set()
        for w in workers:
            w.result()
    new = expected_arms(reg, "live", keys)
    assert [s for s in seen if s[3]] == []  # not one request failed
    assert all(version in (old[key][0], new[key][0]) for _, key, version, _ in seen)
    after = [(key, version) for order, key, version, _ in seen if order > switched["at"]]
    assert all(version == new[key][0] for key, version in after)
    moved = {key for key, _ in after if old[key][0] != new[key][0]}
    assert moved and all(old[k][0] == "live:1" and new[k][0] == "live:2" for k in moved)


def test_the_guard_routes_back_when_the_new_arm_errors(served, capsys):
    """flaky:2's stored weights are corrupted on disk, so every request routed to it fails with DATA_LOSS."""
    reg, service, client = served["reg"], served["service"], served["client"]
    weights = next(f for f in reg.resolve("flaky:2").files if f.path == "adapter_model.safetensors")
    assert [f.sha256 for f in weights_of_every_other_version(reg, "flaky:2") if f.sha256 == weights.sha256] == []
    blob = reg.blobs.path(weights.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    first = reg.rollouts.set("flaky", [Arm(1, 50), Arm(2, 50)], guard=Guard.parse("max_error_rate=0.2,min_requests=10"),
                             reason="canary with a guard")
    wait_for_revision(service, "flaky", first.revision)
    outcomes = []
    for _ in range(ROUNDS):
        try:
            result = ask(client, "flaky")
            outcomes.append((result.adapter_version, result.variant))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DATA_LOSS, exc.details()
            outcomes.append(("DATA_LOSS", ""))
        current = reg.rollouts.current("flaky")
        if current.action == "guard":
            break
    else:
        raise AssertionError(f"the guard never tripped: {outcomes}")
    assert current.actor == "guard" and current.arms == [Arm(1, 100)] and "flaky:2 error rate 100.0%" in current.reason
    wait_for_revision(service, "flaky", current.revision)
    for _ in range(20):
        assert (ask(client, "flaky").adapter_version, ask(client, "flaky").variant) == ("flaky:1", "A")
    service.rollout_worker.flush()
    arms = {a["ref"]: a for a in reg.rollouts.report("flaky", since=first.revision)["arms"]}
    failures = outcomes.count(("DATA_LOSS", ""))
    assert failures >= 10 and arms["flaky:2"]["errors"] == arms["flaky:2"]["requests"] == failures
    assert arms["flaky:1"]["errors"] == 0 and arms["flaky:1"]["requests"] == outcomes.count(("flaky:1", "A")) + 40
    capsys.readouterr()
    assert main(["rollout", "show", "flaky", "--home", str(reg.home)]) == 0
    out = capsys.readouterr().out
    assert "the guard rolled the newest arm back" in out and "routed back to flaky:1" in out
