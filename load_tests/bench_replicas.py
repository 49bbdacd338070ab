"""Many inference replicas on one registry: how fast a change made through the registry reaches every replica, and
whether a routing key gets the same rollout arm on all of them (issue 19).

    python -m load_tests.bench_replicas [--changes 20] [--keys 1000] [--replicas 3] [--poll-ms 20]
        [--out load-test-out/replicas]

It starts one registry server (`reg serve --registry-only`, tokens required) and --replicas inference replicas
(`reg serve --registry grpc://...`, each with its own home holding only the base), every one a process of its own on
a free 127.0.0.1 port, all on the tiny seeded Llama of the tests (the model's speed is not what is measured). Then,
for each kind of change, --changes times: a push of a new version of a bare name, an alias move, a rollout weight
change, each made through the registry's gRPC API. From the moment that call returns, each replica is polled with a
one-token request every --poll-ms until it serves the new version (for a weight change: a routing key whose arm the
change moves); the time to that answer is the change's propagation latency on that replica (resolution: one poll
interval plus one request). Last, --keys routing keys are sent to every replica under a 50/50 sticky split: the arm
agreement (the share of keys served by the same version and arm everywhere) must be 100 %.

Writes results.json and results.md under --out; exits 0, or 1 when the agreement is below 100 % or a change never
arrived. `Fleet` (the processes) is what tests/test_replicas.py runs its checks on, too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REG = [sys.executable, "-c", "from cli.main import run; run()"]
BASE_NAME = "tiny-llama"
# token name -> roles: who makes the changes, the replicas' own (they read routing and pull adapters, and write
# what they served), and the clients of the replicas
TOKEN_ROLES = {"ops": "read,push", "replica": "read,push", "app": "infer"}
TARGET_S = 2.0  # issue 19: a change is served by every replica within 2 s
CHANGE_TIMEOUT_S = 60.0  # a bound against hanging, far above the target: a change slower than this never arrived
PROMPT = "hello world"
_INHERITED_OFF = ("LORADOCK_HOME", "LORADOCK_REGISTRY", "LORADOCK_TOKEN")  # each child is told these explicitly
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None  # loaded here: a forked child only calls it


class Child:
    """One `reg ...` process, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]):
        self.name, self.log_path = name, log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([*REG, *args], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if _LIBC else None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (the server drains and writes what it buffered), then SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies, so a killed test run or benchmark leaves no server
    behind. (Linux counts the thread that started the child as its parent: start a Fleet from a lasting thread.)"""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Fleet:
    """One registry server and `replicas` inference replicas over it, each `reg serve` in a process of its own.

    `Fleet(work, base_dir).start()`; then `remote("ops")` is a RemoteRegistry to make changes through, `client(i)`
    a LoradockClient of replica i, `url` the registry's address. `stop()` ends every process it started, replicas
    first (so what they buffered reaches the registry)."""

    def __init__(self, work: Path, base_dir: Path, replicas: int = 3, base_name: str = BASE_NAME):
        from load_tests import free_ports

        self.work, self.base_dir, self.base_name = Path(work), Path(base_dir), base_name
        self.registry_home = self.work / "registry-home"
        self.tokens_file = self.work / "tokens.yaml"
        self.tokens: dict[str, str] = {}
        registry_port, *replica_ports = free_ports(1 + replicas)
        self.registry_port, self.replica_ports = registry_port, replica_ports
        self.url = f"grpc://127.0.0.1:{registry_port}"
        self.targets = [f"127.0.0.1:{port}" for port in replica_ports]
        self.registry: Child | None = None
        self.replicas: list[Child] = []
        self._remotes: list = []
        self._clients: dict[int, object] = {}

    def start(self, timeout_s: float = 600.0) -> "Fleet":
        """Make the homes and tokens, start the registry, then the replicas; return once every one answers."""
        from server.tokens import create_token

        try:
            self.work.mkdir(parents=True, exist_ok=True)
            self._home_with_base(self.registry_home)
            self.tokens = {name: create_token(name, roles, self.tokens_file) for name, roles in TOKEN_ROLES.items()}
            env = _child_environment()
            self.registry = Child("registry", ["serve", "--registry-only", "--home", str(self.registry_home), "--port",
                                               str(self.registry_port), "--auth-tokens", str(self.tokens_file)],
                                  self.work / "registry.log", env)
            self._wait(self.registry, lambda: self.remote("ops", keep=False).list_adapters(), timeout_s)
            # one intra-op thread each: three replicas of a tiny model on a few shared cores must not fight over them
            replica_env = {**env, "LORADOCK_TOKEN": self.tokens["replica"], "OMP_NUM_THREADS": "1"}
            for i, port in enumerate(self.replica_ports):
                home = self._home_with_base(self.work / f"replica-{i}-home")
                self.replicas.append(Child(f"replica {i}", [
                    "--registry", self.url, "serve", "--home", str(home), "--base", self.base_name, "--quant", "none",
                    "--port", str(port), "--auth-tokens", str(self.tokens_file), "--max-batch-size", "8",
                    "--default-max-new-tokens", "1", "--grace", "5"], self.work / f"replica-{i}.log", replica_env))
            for i, replica in enumerate(self.replicas):
                self._wait(replica, lambda: self.client(i).generate(PROMPT, max_new_tokens=1, timeout=10), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def remote(self, token: str = "ops", keep: bool = True):
        """A RemoteRegistry client of the registry with the token named `token` (closed by `stop()` if `keep`)."""
        from registry.remote.client import RemoteRegistry

        remote = RemoteRegistry(self.url, token=self.tokens[token], home=self.work / f"client-{token}", timeout=60)
        if keep:
            self._remotes.append(remote)
        return remote

    def client(self, index: int):
        """The LoradockClient of replica `index` (one per replica, with the `app` token)."""
        from server.client import LoradockClient

        if index not in self._clients:
            self._clients[index] = LoradockClient(self.targets[index], timeout=60, token=self.tokens["app"])
        return self._clients[index]

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        for remote in self._remotes:
            remote.close()
        self._clients, self._remotes = {}, []
        for replica in self.replicas:
            replica.stop()
        if self.registry is not None:
            self.registry.stop()

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _home_with_base(self, home: Path) -> Path:
        from registry import Registry

        registry = Registry(home)
        try:
            registry.add_base(str(self.base_dir), self.base_name)
        finally:
            registry.close()
        return home

    @staticmethod
    def _wait(child: Child, answers, timeout_s: float) -> None:
        """Until `answers()` returns without raising; RuntimeError with the child's log if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answers()
                return
            except Exception as exc:  # not listening yet (UNAVAILABLE), or the model still loading
                if not child.alive() or time.monotonic() > deadline:
                    state = f"exited with {child.proc.returncode}" if not child.alive() else f"not ready in {timeout_s:.0f} s"
                    raise RuntimeError(f"{child.name} {state} ({type(exc).__name__}); its log:\n{child.tail()}") from None
            time.sleep(0.2)


def _child_environment() -> dict[str, str]:
    from load_tests import OFFLINE_ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_OFF}
    return {**OFFLINE_ENVIRONMENT, **env, "PYTHONPATH": str(ROOT)}


# --- the benchmark -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="python -m load_tests.bench_replicas", description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=20, help="Changes of each kind (push, alias move, rollout weights).")
    ap.add_argument("--keys", type=int, default=1000, help="Routing keys sent to every replica for the arm agreement.")
    ap.add_argument("--replicas", type=int, default=3, help="Inference replicas on the one registry.")
    ap.add_argument("--poll-ms", type=float, default=20.0, help="Pause between a replica's polls after a change (ms).")
    ap.add_argument("--out", type=Path, default=ROOT / "load-test-out" / "replicas", help="Work and results folder.")
    args = ap.parse_args(argv)
    for name in ("changes", "keys", "replicas", "poll_ms"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    return args


def log(msg: str) -> None:
    print(f"[bench-replicas {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_served(fleet: Fleet, pool: ThreadPoolExecutor, adapter: str, key: str, want: str, since: float,
                poll_s: float) -> list[float]:
    """Seconds from `since` until each replica answers a request for `adapter` (with routing `key`) with version `want`."""

    def poll(index: int) -> float:
        client = fleet.client(index)
        while True:
            served = client.generate(PROMPT, adapter=adapter, routing_key=key, max_new_tokens=1).adapter_version
            elapsed = time.perf_counter() - since
            if served == want:
                return elapsed
            if elapsed > CHANGE_TIMEOUT_S:
                raise RuntimeError(f"replica {index} still serves {served} for {adapter} {CHANGE_TIMEOUT_S:.0f} s after "
                                   f"the change to {want}")
            time.sleep(poll_s)

    return list(pool.map(poll, range(len(fleet.targets))))


def measure_pushes(fleet, pool, remote, dirs: list[Path], poll_s: float) -> list[list[float]]:
    """Each push of a new version of `pushed` (new bytes: every replica pulls and loads it) until the bare name serves it."""
    latencies = []
    for directory in dirs:
        result = remote.push(directory, "pushed", message="bench_replicas push")
        since = time.perf_counter()
        latencies.append(wait_served(fleet, pool, "pushed", "", result.version.ref, since, poll_s))
    return latencies


def measure_alias_moves(fleet, pool, remote, changes: int, poll_s: float) -> list[list[float]]:
    """`moved@prod` moved between versions 1 and 2 (both already loaded on every replica)."""
    latencies = []
    for i in range(changes):
        number = 2 if i % 2 == 0 else 1
        remote.set_alias("moved", "prod", number)
        since = time.perf_counter()
        latencies.append(wait_served(fleet, pool, "moved@prod", "", f"moved:{number}", since, poll_s))
    return latencies


def measure_weight_changes(fleet, pool, remote, changes: int, poll_s: float) -> tuple[list[list[float]], object]:
    """`split` between 1=90/2=10 and 1=10/2=90 (sticky); a probe key that the change moves from one arm to the other.
    Returns the latencies and the last revision set."""
    from registry.rollouts import Arm

    splits = ([Arm(1, 90), Arm(2, 10)], [Arm(1, 10), Arm(2, 90)])
    key = moving_key("split", *splits)
    latencies, revision = [], None
    for i in range(changes):
        revision = remote.rollouts.set("split", splits[(i + 1) % 2], sticky=True, reason="bench_replicas weight change")
        since = time.perf_counter()
        latencies.append(wait_served(fleet, pool, "split", key, expected_routes(revision, [key])[key][0], since, poll_s))
    return latencies, revision


def moving_key(name: str, old_arms, new_arms) -> str:
    """A routing key that `old_arms` and `new_arms` send to different versions."""
    from server.router import arm_for_bucket, bucket_of, key_hash

    for i in range(100_000):
        bucket = bucket_of(key_hash(name, f"probe-{i}"))
        if arm_for_bucket(old_arms, bucket)[1].version != arm_for_bucket(new_arms, bucket)[1].version:
            return f"probe-{i}"
    raise RuntimeError(f"no routing key moves between {old_arms} and {new_arms}")


def expected_routes(revision, keys) -> dict[str, tuple[str, str]]:
    """What `revision` routes each key to, (NAME:N, arm), computed apart from the replicas (by the router's own code)."""
    from server.router import RolloutRouter

    router = RolloutRouter()
    router.load({revision.adapter: revision})
    return {key: (f"{c.adapter}:{c.version}", c.arm) for key in keys for c in [router.pick_arm(revision.adapter, key)]}


def arm_agreement(fleet: Fleet, pool: ThreadPoolExecutor, revision, keys: list[str]) -> dict:
    """Every key to every replica: how many keys got the same (version, arm) on all of them, and as the revision says."""

    def served(index: int) -> list[tuple[str, str]]:
        client = fleet.client(index)
        return [(r.adapter_version, r.variant) for key in keys
                for r in [client.generate(PROMPT, adapter=revision.adapter, routing_key=key, max_new_tokens=1)]]

    answers = list(pool.map(served, range(len(fleet.targets))))
    expected = list(expected_routes(revision, keys).values())
    same = sum(len({a[i] for a in answers}) == 1 for i in range(len(keys)))
    as_routed = sum(all(a[i] == expected[i] for a in answers) for i in range(len(keys)))
    arms = {arm: sum(e[1] == arm for e in expected) for arm in sorted({e[1] for e in expected})}
    return {"keys": len(keys), "replicas": len(answers), "agreeing": same, "agreement": same / len(keys),
            "as_the_registry_routes": as_routed, "keys_per_arm": arms}


def summarize(latencies: list[list[float]]) -> dict:
    from server.stats import percentile

    flat = [s for change in latencies for s in change]
    slowest = [max(change) for change in latencies]  # when the change had reached every replica
    return {
        "changes": len(latencies), "samples": len(flat),
        "p50_ms": percentile(flat, 0.5) * 1000, "p99_ms": percentile(flat, 0.99) * 1000, "max_ms": max(flat) * 1000,
        "all_replicas_p50_ms": percentile(slowest, 0.5) * 1000, "all_replicas_p99_ms": percentile(slowest, 0.99) * 1000,
        "per_replica_ms": [[round(s * 1000, 1) for s in change] for change in latencies],
    }


MECHANISM = {
    "push": "per-request resolution: a replica resolves a bare name through the registry (Resolve RPC) on every "
            "request, then pulls and loads a new version on first use",
    "alias move": "per-request resolution (Resolve RPC on every request); both versions already loaded",
    "rollout weights": "the replica's rollout poll: RolloutWorker asks the registry for its rollout state every 0.5 s "
                       "(RolloutState RPC) and reloads the router when the change id moved",
}


def markdown(result: dict) -> str:
    rows = ["| change | mechanism | changes x replicas | p50 ms | p99 ms | max ms | all replicas p99 ms | within 2 s |",
            "|---|---|---|---|---|---|---|---|"]
    for kind, s in result["propagation"].items():
        mechanism = "per-request resolve" if kind != "rollout weights" else "0.5 s rollout poll"
        rows.append(f"| {kind} | {mechanism} | {s['changes']} x {result['replicas']} | {s['p50_ms']:.0f} | "
                    f"{s['p99_ms']:.0f} | {s['max_ms']:.0f} | {s['all_replicas_p99_ms']:.0f} | "
                    f"{'yes' if s['max_ms'] <= TARGET_S * 1000 else 'NO'} |")
    a = result["agreement"]
    rows.append("")
    rows.append(f"Arm agreement: {a['agreeing']}/{a['keys']} keys ({a['agreement']:.1%}) got the same version and arm "
                f"on all {a['replicas']} replicas; {a['as_the_registry_routes']}/{a['keys']} as the revision routes them "
                f"(keys per arm: {a['keys_per_arm']}).")
    rows.append(f"Polled every {result['poll_ms']:.0f} ms with a one-token request (latency includes one request). "
                f"{result['note']}")
    return "\n".join(rows) + "\n"


def run(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import build_tiny_llama

    from load_tests.prepare import prepare_adapters
    from registry import Registry
    from registry.rollouts import Arm

    work = args.out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    base_dir = build_tiny_llama(work / "tiny-llama", seed=0)
    log(f"making {args.changes + 2} adapters on the tiny Llama ...")
    staging = Registry(work / "staging-home")  # the adapters' bytes, made once, pushed to the fleet's registry later
    staging.add_base(str(base_dir), BASE_NAME)
    made = prepare_adapters(staging, BASE_NAME, args.changes + 2, prefix="bench", canary=False)
    dirs = [staging.pull(p.ref, work / "adapters" / p.ref.replace(":", "-"))[1] for p in made]
    staging.close()
    with Fleet(work / "fleet", base_dir, args.replicas) as fleet, ThreadPoolExecutor(args.replicas) as pool:
        log(f"registry {fleet.url}, replicas {', '.join(fleet.targets)}")
        remote = fleet.remote("ops")
        poll_s = args.poll_ms / 1000
        remote.push(dirs[0], "pushed")
        for name in ("moved", "split"):  # versions 1 and 2 of each, served once by every replica (loaded)
            for directory in dirs[:2]:
                remote.push(directory, name)
        remote.set_alias("moved", "prod", 1)
        remote.rollouts.set("split", [Arm(1, 90), Arm(2, 10)], sticky=True, reason="bench_replicas start")
        for ref in ("pushed:1", "moved:1", "moved:2", "split:1", "split:2"):
            wait_served(fleet, pool, ref, "", ref, time.perf_counter(), poll_s)
        wait_served(fleet, pool, "moved@prod", "", "moved:1", time.perf_counter(), poll_s)
        log(f"{args.changes} changes of each kind ...")
        propagation = {"push": summarize(measure_pushes(fleet, pool, remote, dirs[2:], poll_s)),
                       "alias move": summarize(measure_alias_moves(fleet, pool, remote, args.changes, poll_s))}
        weights, last = measure_weight_changes(fleet, pool, remote, args.changes, poll_s)
        propagation["rollout weights"] = summarize(weights)
        for kind, s in propagation.items():
            log(f"{kind}: p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, max {s['max_ms']:.0f} ms")
        # a 50/50 split for the agreement, measured once every replica routes by it
        half = remote.rollouts.set("split", [Arm(1, 50), Arm(2, 50)], sticky=True, reason="bench_replicas agreement")
        key = moving_key("split", last.arms, half.arms)
        wait_served(fleet, pool, "split", key, expected_routes(half, [key])[key][0], time.perf_counter(), poll_s)
        log(f"arm agreement over {args.keys} keys x {args.replicas} replicas ...")
        agreement = arm_agreement(fleet, pool, half, [f"user-{i}" for i in range(args.keys)])
    return {"replicas": args.replicas, "poll_ms": args.poll_ms, "target_s": TARGET_S, "mechanism": MECHANISM,
            "propagation": propagation, "agreement": agreement,
            "note": f"One run on a shared machine ({os.cpu_count()} cores), replicas on the tiny Llama, one torch thread each."}


def main(argv: list[str] | None = None) -> int:
    from load_tests import use_offline_hub

    use_offline_hub()
    args = parse_args(argv)
    try:
        result = run(args)
    except RuntimeError as exc:  # a replica died, or a change never arrived
        log(f"error: {exc}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "results.md").write_text(table)
    print(table)
    slow = [k for k, s in result["propagation"].items() if s["max_ms"] > TARGET_S * 1000]
    if slow:
        log(f"slower than {TARGET_S:.0f} s at least once: {', '.join(slow)}")
    return 0 if result["agreement"]["agreement"] == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
