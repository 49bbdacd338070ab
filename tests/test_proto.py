"""The wire contract: stubs generated from proto/ are current, the Registry and Jobs services are typed (no JSON
strings), and the one converter between records and messages (registry.remote.messages) keeps what `reg --json` prints."""

from __future__ import annotations

import dataclasses
import json

import pytest

from registry.jobs import Checkpoint, Job, JobEvent
from registry.maintenance import Problem, VerifyReport
from registry.records import FileRecord, Version
from registry.remote.messages import to_message, to_python, to_record
from registry.remote.rpc import jobs_pb, pb as registry_pb
from server.rpc import codegen


def test_generated_stubs_are_not_stale(tmp_path):
    written = codegen.generate(tmp_path)
    assert {p.parent.relative_to(tmp_path).as_posix() for p in written} == {"server/rpc", "registry/remote/rpc"}
    for path in written:
        checked_in = codegen.ROOT / path.relative_to(tmp_path)
        assert path.read_text() == checked_in.read_text(), f"{checked_in.relative_to(codegen.ROOT)} is stale: run `make proto`"


def _message_types(descriptor, seen: dict) -> dict:
    """`descriptor` and every message type reachable through its fields, by full name."""
    if descriptor.full_name not in seen:
        seen[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                _message_types(field.message_type, seen)
    return seen


@pytest.mark.parametrize("module, service_name, records", [
    (registry_pb, "Registry", {"Version", "VersionDiff", "Description", "RolloutView", "RolloutReportResponse", "GcReport",
                               "VerifyReport"}),
    (jobs_pb, "Jobs", {"Job", "JobEvent", "Checkpoint", "JobList", "PushCheckpointResponse", "JobSubmission"}),
])
def test_the_services_carry_no_json_strings(module, service_name, records):
    """A client in Go or Java must be able to use a service from its .proto alone: no field of any message one of
    its RPCs takes or returns (nested ones included) is a string holding JSON."""
    service = module.DESCRIPTOR.services_by_name[service_name]
    reachable: dict = {}
    for method in service.methods:
        _message_types(method.input_type, reachable)
        _message_types(method.output_type, reachable)
    assert "loradock.v1.Document" not in reachable and "Document" not in module.DESCRIPTOR.message_types_by_name
    string = registry_pb.RefRequest.DESCRIPTOR.fields[0].TYPE_STRING
    json_named = sorted(f"{name}.{f.name}" for name, d in reachable.items() for f in d.fields
                        if f.type == string and "json" in f.name.lower())
    assert json_named == [], json_named
    assert {f"loradock.v1.{r}" for r in records} <= set(reachable)


def _job() -> Job:
    return Job(
        id="ftjob-abc123", adapter="demo", state="running", config={"lora_r": 16, "lora_dropout": 0.0, "datasets": [
            {"path": "blob:ab", "type": "alpaca"}], "push": {"name": "demo", "alias": None}}, config_hash="sha256:cd",
        base="tiny-llama", datasets=[{"name": "d.jsonl", "type": "alpaca", "sha256": "ab", "bytes": 10, "lines": 2,
                                      "split": "train"}],
        priority=-3, resources={"memory_bytes": 2**33, "gpus": 0, "num_processes": 1}, submitter="ci", source="grpc",
        created_at="2025-01-01T00:00:00+00:00", started_at="2025-01-01T00:00:01+00:00", finished_at=None, attempts=1,
        max_attempts=3, worker_id="w1", lease_expires=1.7e9 + 0.25, cancel_requested=False, run_id=None,
        result_version=None, error=None, step=3, total_steps=10, metrics={"loss": 1.5, "tokens": 300}, device="cpu",
        device_count=1, device_seconds=12.5, extra={"attempt_started_at": "2025-01-01T00:00:01+00:00",
                                                    "attempt_first_step": 1, "cost": {"usd": 0.01, "device": "cpu"}},
    )


@pytest.mark.parametrize("record, message_class", [
    (_job(), jobs_pb.Job),
    (JobEvent(4, "2025-01-01T00:00:02+00:00", "info", "metrics", "step 3/10", {"step": 3, "loss": 1.5}), jobs_pb.JobEvent),
    (Checkpoint(2, "/runs/x/checkpoint-2", {"loss": 1.25}, "2025-01-01T00:00:03+00:00", False), jobs_pb.Checkpoint),
], ids=["job", "event", "checkpoint"])
def test_job_records_travel_field_for_field(record, message_class):
    """A Job, JobEvent or Checkpoint message has the record's fields in its order (a Job's as_dict(), derived values
    last), and a record sent and read back is the record, printed by `reg job ... --json` byte for byte."""
    printed = record.as_dict() if isinstance(record, Job) else dataclasses.asdict(record)
    assert [f.name for f in message_class.DESCRIPTOR.fields] == list(printed)
    back = to_python(message_class.FromString(to_message(printed, message_class).SerializeToString()))
    assert json.dumps(back) == json.dumps(printed)
    assert to_record(type(record), back) == record


def test_free_form_json_keeps_ints_floats_nulls_and_key_order():
    config = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "layers_pattern": None, "nested": {"z": 1, "a": [True, 1.5, {}], "empty": []}}
    version = Version(id=1, adapter="demo", number=2, manifest_digest="m", base_name="b", base_digest="d",
                      peft_type="LORA", task_type=None, rank=16, alpha=32.0, target_modules=None, adapter_config=config,
                      size_bytes=10, creator="me", message="", parent=None, run_id=None, created_at="t",
                      files=[FileRecord("adapter_config.json", 3, "ab")])
    message = to_message(version.to_dict(), registry_pb.Version)
    back = to_python(registry_pb.Version.FromString(message.SerializeToString()))
    assert json.dumps(back) == json.dumps(version.to_dict())
    assert to_record(Version, back) == version


def test_a_record_field_the_message_lacks_is_an_error_not_dropped():
    import pytest

    with pytest.raises(TypeError, match="no field for \\['surprise'\\]"):
        to_message({"ref": "a:1", "path": "p", "sha256": "s", "problem": "x", "surprise": 1}, registry_pb.Problem)
    report = VerifyReport(versions=1, files=2, bytes=3, problems=[Problem("a:1", "p", "s", "missing")])
    answer = to_python(to_message(report, registry_pb.VerifyReport))
    assert answer["ok"] is False and to_record(VerifyReport, answer) == report


def test_the_registry_client_imports_no_server_and_local_ls_imports_no_grpc(tmp_path):
    """`reg --registry` needs the client only (not the inference server), and `reg ls` on a local home needs neither
    grpc nor protobuf: both load when a remote registry is first used."""
    import os
    import subprocess
    import sys

    code = ("import sys; import registry.remote.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'torch', 'trainer', 'cli')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=codegen.ROOT)
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr[-2000:] + done.stdout
    code = ("import sys; from cli.main import main; main(['ls', '--home', sys.argv[1]]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') or m.startswith('registry.remote')))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True,
                          cwd=codegen.ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.endswith("\n[]\n"), done.stderr[-2000:] + done.stdout
