"""A training run's lineage published to a remote registry: `record_run`, `push(run_id=...)` and `record_evaluation`
on a `RemoteRegistry` store what the same three calls store on a local `Registry` (trainer/train.py `_push_version`).

A real Registry server on port 0 with a tokens file, the tiny base on both sides. Every refusal is one line naming the
value, and leaves the served registry as it was.
"""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from conftest import TINY_BASE, snapshot
from remote_helpers import registry_with_base, start_registry

from registry import Registry
from registry.errors import (
    AdapterNotFound, BaseMismatch, BaseNotFound, Conflict, InvalidInput, InvalidName, NotFound, TooLarge, VersionNotFound,
)
from registry.remote.client import RemoteRegistry
from registry.remote.messages import to_message
from registry.remote.rpc import pb, pb_grpc
from server.tokens import create_token

RUN = "arith-20260101-120000-ab12cd"


@pytest.fixture
def served(tmp_path, tiny_base_dir):
    """A served registry (tokens on) and the local registry of the worker that trains for it; yields a dict."""
    home = tmp_path / "served"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    tokens_file = tmp_path / "tokens.yaml"
    token = create_token("ci-worker", "read,push", tokens_file)
    server, url, _ = start_registry(home, auth_tokens=str(tokens_file))
    remote = RemoteRegistry(url, token=token, home=tmp_path / "cache")
    worker = registry_with_base(tmp_path / "worker", tiny_base_dir, TINY_BASE)
    channel = grpc.insecure_channel(url.removeprefix("grpc://"))
    yield {"home": home, "remote": remote, "worker": worker, "token": token,
           "stub": pb_grpc.RegistryStub(channel), "metadata": [("authorization", f"Bearer {token}")]}
    channel.close()
    worker.close()
    remote.close()
    server.stop(0)


def run_arguments(base, run_id: str = RUN, **overrides) -> dict:
    """`record_run`'s arguments as the trainer passes them (trainer/train.py `_push_version`)."""
    return {
        "run_id": run_id, "adapter": "arith", "config": {"lora_r": 4, "learning_rate": 2e-4, "lora_dropout": 0.0},
        "config_hash": "sha256:" + "c" * 64, "base": base,
        "datasets": [{"path": "examples/arith.jsonl", "sha256": "d" * 64, "counts": {"train": 900, "val": 100}}],
        "seed": 7, "libraries": {"torch": "2.13.0", "peft": "0.21.2"}, "hardware": {"device": "cpu", "processes": 1},
        "metrics": {"train_loss": [[10, 2.1], [20, 1.4]], "val_loss": [[20, 1.6]], "train_runtime_s": 12.5},
        "started_at": "2026-01-01T12:00:00", "finished_at": "2026-01-01T12:01:30", "duration_s": 90.0,
        "run_dir": f"/runs/{run_id}", "job_id": "ftjob-0123abcd", **overrides,
    }


def publish(registry, adapter_dir, base, run_id: str = RUN) -> str:
    """The trainer's three calls, against a local or a remote registry; returns the version's ref."""
    registry.record_run(**run_arguments(base, run_id))
    result = registry.push(adapter_dir, "arith", base=base.name, message=f"trained by {run_id}", alias="staging",
                           run_id=run_id, allow_duplicate=True)
    registry.record_evaluation(result.version, "heldout", "val", {"exact_match": 0.7, "loss": 1.6},
                               {"exact_match": 0.1, "loss": 3.2}, run_id=run_id, passed=False,
                               failures=["exact_match 0.7 < 0.8"])
    return result.version.ref


def lineage(description: dict) -> dict:
    """What a version's lineage is, without what differs between two homes (times of writing, who pushed)."""
    version = {k: v for k, v in description["version"].items() if k not in ("created_at", "creator")}
    evaluations = [{k: v for k, v in e.items() if k != "created_at"} for e in description["evaluations"]]
    return {**description, "version": version, "evaluations": evaluations}


def test_a_remote_registry_records_the_lineage_a_local_one_does(served, make_adapter, tmp_path, tiny_base_dir):
    adapter = make_adapter("lora", seed=1)
    base = served["worker"].get_base(TINY_BASE)
    assert publish(served["remote"], adapter, base) == "arith:1"
    local = registry_with_base(tmp_path / "local", tiny_base_dir, TINY_BASE)
    assert publish(local, adapter, local.get_base(TINY_BASE)) == "arith:1"

    on_server = Registry(served["home"]).describe("arith:1")
    assert lineage(on_server) == lineage(local.describe("arith:1"))
    run = on_server["run"]
    assert (run["id"], run["adapter"], run["config_hash"], run["base_digest"], run["job_id"]) == (
        RUN, "arith", "sha256:" + "c" * 64, base.weights_digest, "ftjob-0123abcd")
    assert run["datasets"][0]["counts"] == {"train": 900, "val": 100} and run["metrics"]["train_loss"][1] == [20, 1.4]
    assert on_server["version"]["run_id"] == RUN and on_server["aliases_here"] == ["staging"]
    [evaluation] = on_server["evaluations"]
    assert (evaluation["run_id"], evaluation["passed"], evaluation["failures"]) == (RUN, False, ["exact_match 0.7 < 0.8"])
    assert evaluation["base_metrics"] == {"exact_match": 0.1, "loss": 3.2}
    # ... and over the wire too (`reg --registry URL show arith:1`)
    assert served["remote"].describe("arith:1") == on_server
    local.close()


def test_the_audit_log_names_the_token(served, make_adapter):
    publish(served["remote"], make_adapter("lora", seed=1), served["worker"].get_base(TINY_BASE))
    entries = Registry(served["home"]).audit_entries()
    assert [(e["token"], e["action"], e["target"]) for e in entries] == [
        ("ci-worker", "run.record", RUN), ("ci-worker", "push", "arith:1"), ("ci-worker", "evaluation.record", "arith:1"),
    ]
    assert entries[1]["detail"]["run_id"] == RUN and entries[2]["detail"]["passed"] is False
    assert all(e["peer"].startswith("ipv4:127.0.0.1") for e in entries)
    assert Registry(served["home"]).resolve("arith:1").creator == "ci-worker"


def test_recording_a_run_again_is_a_no_op_and_another_run_under_its_id_a_conflict(served):
    remote, base = served["remote"], served["worker"].get_base(TINY_BASE)
    remote.record_run(**run_arguments(base))
    runs = snapshot(served["home"])["runs"]
    remote.record_run(**run_arguments(base))  # a worker retrying a call whose answer it lost
    assert snapshot(served["home"])["runs"] == runs
    before = snapshot(served["home"])
    with pytest.raises(Conflict) as caught:
        remote.record_run(**run_arguments(base, seed=8, metrics={}))
    assert str(caught.value) == (f"run {RUN!r} is already recorded, with another seed, metrics; a run id names one run: "
                                 f"record this one under a new id")
    assert snapshot(served["home"]) == before


def _other_base(base):
    return dataclasses.replace(base, name="no-such-base")


def _other_weights(base):
    return dataclasses.replace(base, weights_digest="sha256:" + "0" * 64)


@pytest.mark.parametrize("change, error, needle", [
    (lambda b: {"base": _other_base(b)}, BaseNotFound, "no base model named 'no-such-base'"),
    (lambda b: {"base": _other_weights(b)}, BaseMismatch, "weights 'sha256:" + "0" * 64),
    (lambda b: {"run_id": "../etc"}, InvalidInput, "run id '../etc': expected a plain name"),
    (lambda b: {"adapter": "Bad/Name"}, InvalidName, "'Bad/Name'"),
    (lambda b: {"job_id": "job-1"}, InvalidInput, "job id 'job-1'"),
], ids=["unknown-base", "other-weights", "bad-run-id", "bad-adapter", "bad-job-id"])
def test_a_run_the_registry_cannot_vouch_for_is_refused_and_nothing_changes(served, change, error, needle):
    base = served["worker"].get_base(TINY_BASE)
    before = snapshot(served["home"])
    with pytest.raises(error) as caught:
        served["remote"].record_run(**{**run_arguments(base), **change(base)})
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(served["home"]) == before


def _raw(served, method: str, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(served["stub"], method)(request, metadata=served["metadata"], timeout=30)
    return caught.value


def _raw_run(base, **overrides) -> pb.RecordRunRequest:
    args = run_arguments(base, **overrides)
    b = args.pop("base")
    return to_message({"status": "succeeded", **args, "base_name": b.name, "base_digest": b.weights_digest},
                      pb.RecordRunRequest)


def test_the_server_checks_what_a_client_did_not(served):
    """A client in another language skips the Python client's checks: the server makes them again, before writing."""
    base = served["worker"].get_base(TINY_BASE)
    before = snapshot(served["home"])
    cases = {
        "bad run id": (_raw_run(base, run_id="../../x"), grpc.StatusCode.INVALID_ARGUMENT, "run id '../../x'"),
        "bad adapter": (_raw_run(base, adapter="../x"), grpc.StatusCode.INVALID_ARGUMENT, "'../x'"),
        "no config": (_raw_run(base), grpc.StatusCode.INVALID_ARGUMENT, "no config was sent"),
        "huge": (_raw_run(base, metrics={"notes": "x" * 5 * 2**20}),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 4,194,304 are accepted"),
        "negative duration": (_raw_run(base, duration_s=-1.0), grpc.StatusCode.INVALID_ARGUMENT, "duration_s -1.0"),
    }
    cases["no config"][0].ClearField("config")
    for name, (request, code, needle) in cases.items():
        error = _raw(served, "RecordRun", request)
        assert (error.code(), needle in error.details()) == (code, True), (name, error.details())
    bad_eval = pb.RecordEvaluationRequest(ref="arith", manifest_digest="x", name="heldout", metrics=pb.JsonObject())
    error = _raw(served, "RecordEvaluation", bad_eval)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "NAME:N, not 'arith'" in error.details()
    assert snapshot(served["home"]) == before


def test_a_push_names_a_recorded_run_of_its_own_adapter(served, make_adapter):
    remote, base = served["remote"], served["worker"].get_base(TINY_BASE)
    adapter = make_adapter("lora", seed=1)
    remote.push(adapter, "other")  # its blobs are stored now: a refused commit below uploads nothing
    remote.record_run(**run_arguments(base, run_id="other-run", adapter="other"))
    before = snapshot(served["home"])
    with pytest.raises(NotFound, match=r"^no training run 'never-recorded' is recorded on this registry; record the run"):
        remote.push(adapter, "arith", run_id="never-recorded", allow_duplicate=True)
    with pytest.raises(InvalidInput, match=r"^run 'other-run' trained adapter 'other', not 'arith'"):
        remote.push(adapter, "arith", run_id="other-run", allow_duplicate=True)
    with pytest.raises(InvalidInput, match=r"^run id '\.\.': expected a plain name"):
        remote.push(adapter, "arith", run_id="..")
    assert snapshot(served["home"]) == before


def test_an_evaluation_names_a_live_version_of_this_registry(served, make_adapter):
    remote, base = served["remote"], served["worker"].get_base(TINY_BASE)
    remote.record_run(**run_arguments(base))
    remote.record_run(**run_arguments(base, run_id="other-run", adapter="other"))
    version = remote.push(make_adapter("lora", seed=1), "arith", run_id=RUN).version
    before = snapshot(served["home"])
    cases = [
        (dataclasses.replace(version, number=5), {}, VersionNotFound, "adapter 'arith' has no version 5"),
        (dataclasses.replace(version, adapter="unknown"), {}, AdapterNotFound, "no adapter named 'unknown'"),
        (dataclasses.replace(version, manifest_digest="sha256:" + "e" * 64), {}, Conflict,
         "the evaluation is of another version"),
        (version, {"run_id": "never-recorded"}, NotFound, "no training run 'never-recorded'"),
        (version, {"run_id": "other-run"}, InvalidInput, "run 'other-run' trained adapter 'other', not 'arith'"),
        (version, {"name": ""}, InvalidInput, "name is empty"),
    ]
    for target, overrides, error, needle in cases:
        args = {"name": "heldout", "split": "val", "metrics": {"loss": 1.0}, **overrides}
        with pytest.raises(error) as caught:
            remote.record_evaluation(target, args.pop("name"), args.pop("split"), args.pop("metrics"), **args)
        assert needle in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    with pytest.raises(TooLarge, match="at most 262,144 are accepted"):
        remote.record_evaluation(version, "heldout", "val", {"notes": "x" * 300_000})
    assert snapshot(served["home"]) == before
    remote.record_evaluation(version, "custom", "", {"loss": 1.0})  # no run, no base metrics: as `reg eval` records
    [evaluation] = Registry(served["home"]).evaluations(version.id)
    assert (evaluation["run_id"], evaluation["base_metrics"], evaluation["passed"], evaluation["failures"]) == (
        None, None, None, [])
