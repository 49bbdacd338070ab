"""One registry interface (issue 13): the local `Registry` and the gRPC `RemoteRegistry` both implement every
method of `registry.interface.RegistryAPI` (and `RolloutsAPI` for `.rollouts`, `JobsAPI` for `.jobs`), with the same
signatures and, for the same history of calls, the same answers. A real SQLite home and a real Registry server on
port 0 (jobs' answers are compared in tests/test_jobs_remote.py, where the server takes jobs)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from conftest import TINY_BASE
from remote_helpers import registry_with_base, start_registry

from registry import Registry
from registry.bases import DEFAULT_BASE
from registry.errors import InvalidInput
from registry.interface import JobsAPI, RegistryAPI, RolloutsAPI
from registry.jobs import JobQueue
from registry.rollouts import Arm, Rollouts
from registry.remote.client import RemoteRegistry, RemoteRollouts
from registry.remote.jobs import RemoteJobs


def members(protocol: type) -> list[str]:
    """The protocol's methods and properties, in declaration order."""
    return [name for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))]


def parameters(function) -> list[tuple]:
    """What callers rely on: each parameter's name, kind, default and annotation (not `self`, not the return)."""
    return [(p.name, p.kind, p.default, p.annotation) for p in inspect.signature(function).parameters.values()][1:]


@pytest.mark.parametrize("protocol, implementations", [
    (RegistryAPI, (Registry, RemoteRegistry)), (RolloutsAPI, (Rollouts, RemoteRollouts)), (JobsAPI, (JobQueue, RemoteJobs)),
], ids=["registry", "rollouts", "jobs"])
def test_both_registries_implement_every_method_with_the_same_signature(protocol, implementations):
    assert members(protocol), "the protocol lists its methods"
    for name in members(protocol):
        declared = vars(protocol)[name]
        for cls in implementations:
            assert hasattr(cls, name), f"{cls.__name__} lacks {protocol.__name__}.{name}"
            implemented = inspect.getattr_static(cls, name)
            if isinstance(declared, property):
                assert isinstance(implemented, property), f"{cls.__name__}.{name} must be a property"
            else:
                assert parameters(implemented) == parameters(declared), f"{cls.__name__}.{name}{inspect.signature(implemented)}"


@pytest.fixture
def both(tmp_path, tiny_base_dir):
    """(local, remote): a local registry and a served one, each with the tiny base, in the same state."""
    local = registry_with_base(tmp_path / "local", tiny_base_dir, TINY_BASE)
    served = registry_with_base(tmp_path / "served", tiny_base_dir, TINY_BASE)
    served.close()
    server, url, _ = start_registry(tmp_path / "served")
    remote = RemoteRegistry(url, home=tmp_path / "remote-cache")
    yield local, remote
    remote.close()
    local.close()
    server.stop(0)


_VARYING = {"at", "created_at", "updated_at", "deleted_at", "path", "home"}  # times and where each home lies


def plain(value):
    """`value` as JSON-like data without what differs between two homes (times, paths)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k not in _VARYING and not str(k).endswith("_at")}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def exercise(reg, adapters, tmp_path) -> dict[str, object]:
    """Every RegistryAPI / RolloutsAPI method called once, in an order that gives each something to do."""
    got: dict[str, object] = {}
    got["record_run"] = reg.record_run(
        "demo-run-1", "demo", config={"lora_r": 4, "learning_rate": 2e-4}, config_hash="sha256:ab",
        base=reg.get_base(TINY_BASE), datasets=[{"path": "d.jsonl", "counts": {"train": 9, "val": 1}}], seed=3,
        libraries={"peft": "0.1"}, hardware={"device": "cpu"}, metrics={"train_loss": [[1, 2.5]]},
        started_at="2026-01-01T00:00:00", finished_at="2026-01-01T00:00:09", duration_s=9.0, run_dir="/runs/demo-run-1")
    got["push"] = [plain(reg.push(a, "demo", message=f"v{i}", run_id="demo-run-1" if i == 2 else None).version)
                   for i, a in enumerate(adapters, 1)]
    got["record_evaluation"] = reg.record_evaluation(reg.resolve("demo:2"), "heldout", "val", {"loss": 1.5},
                                                     {"loss": 3.0}, run_id="demo-run-1", passed=False, failures=["loss"])
    got["resolve"] = plain(reg.resolve("demo:1"))
    got["pull"] = plain(reg.pull("demo:2", tmp_path / "pulled")[0])
    got["set_alias"] = reg.set_alias("demo", "prod", 1)
    got["aliases"] = reg.aliases("demo")
    got["remove_alias"] = reg.remove_alias("demo", "prod")
    got["alias_history"] = [(e.alias, e.old_version, e.new_version) for e in reg.alias_history("demo")]
    got["list_adapters"] = plain(reg.list_adapters())
    got["list_versions"] = plain(reg.list_versions("demo"))
    got["version_summaries"] = plain(reg.version_summaries("demo"))
    got["count_versions"] = reg.count_versions("demo")
    got["describe"] = plain(reg.describe("demo:2"))
    got["diff"] = plain(reg.diff("demo:1", "demo:2"))
    got["list_bases"] = plain(reg.list_bases())
    got["get_base"] = plain(reg.get_base(TINY_BASE))
    rollouts = reg.rollouts
    got["rollouts"] = type(rollouts).__name__ in ("Rollouts", "RemoteRollouts")
    got["set"] = plain(rollouts.set("demo", [Arm(1, 90), Arm(2, 10)], reason="canary"))
    got["promote"] = plain(rollouts.promote("demo", 2))
    got["rollback"] = plain(rollouts.rollback("demo"))
    got["show"] = plain(rollouts.show("demo"))
    got["report"] = plain(rollouts.report("demo"))
    got["record"] = rollouts.record([], [])
    got["check_guard"] = rollouts.check_guard("demo")
    got["change_id"] = isinstance(rollouts.change_id(), int)
    got["all_current"] = plain(rollouts.all_current())
    got["clear"] = plain(rollouts.clear("demo"))
    got["captures"] = (plain(reg.captures.summary("demo")), reg.captures.get("demo"), reg.captures.rows("demo"))
    got["jobs"] = (type(reg.jobs).__name__ in ("JobQueue", "RemoteJobs"), reg.jobs.list())
    got["remove_version"] = plain(reg.remove_version("demo:1"))
    got["gc"] = plain(reg.gc(dry_run=True))
    got["verify"] = plain(reg.verify())
    got["audit_entries"] = isinstance(reg.audit_entries(), list)  # a local registry audits no remote writes
    other = reg.new_connection()
    got["new_connection"] = plain(other.resolve("demo:2"))
    other.close()
    got["close"] = None  # closed by the fixture, after the last call
    return got


def test_a_local_and_a_remote_registry_answer_every_method_alike(both, make_adapter, tmp_path):
    local, remote = both
    assert isinstance(local, RegistryAPI) and isinstance(remote, RegistryAPI)
    assert isinstance(local.rollouts, RolloutsAPI) and isinstance(remote.rollouts, RolloutsAPI)
    assert isinstance(local.jobs, JobsAPI) and isinstance(remote.jobs, JobsAPI)
    adapters = [make_adapter("lora", seed=1), make_adapter("lora", seed=2)]
    answers = exercise(local, adapters, tmp_path / "l"), exercise(remote, adapters, tmp_path / "r")
    local_only = {"add_base", "fetch_default_base"}  # registering a base reads files on the registry's host
    assert set(answers[0]) | local_only == set(members(RegistryAPI)) | set(members(RolloutsAPI)), "call every method"
    for name in answers[0]:
        assert answers[0][name] == answers[1][name], name


def test_registering_a_base_needs_the_registrys_host(both, tiny_base_dir):
    local, remote = both
    assert local.add_base(str(tiny_base_dir), TINY_BASE)[1] is False  # the same weights again: nothing to do
    local.add_base(str(tiny_base_dir), DEFAULT_BASE)  # stands in for the converted default base (no 30 s conversion)
    assert local.fetch_default_base()[0].name == DEFAULT_BASE
    for call in (lambda: remote.add_base(str(tiny_base_dir), "x"), remote.fetch_default_base):
        with pytest.raises(InvalidInput, match=rf"works on a local registry only, not on {remote.url}"):
            call()


def test_a_misspelt_method_of_a_remote_registry_is_an_attribute_error(both):
    _, remote = both
    with pytest.raises(AttributeError):
        remote.resolv("demo")  # noqa: B018  (a typo, not "works on a local registry only")
    with pytest.raises(AttributeError):
        remote.record_export  # noqa: B018  (local-only and not in RegistryAPI: callers ask for a `Registry`)
