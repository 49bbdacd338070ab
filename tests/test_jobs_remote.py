"""Fine-tuning jobs over gRPC (issue 15): `reg --registry grpc://... --token T job ...` against a real Registry + Jobs
server on port 0, with a tokens file (roles `train`, `read`, `admin`) and the trainer's real submission checks.

Nothing trains here: a job's life after it is queued is driven through the registry's own `JobQueue` (claim,
progress, checkpoint, finish under a made-up worker id), the same calls a worker makes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import TINY_BASE, run_reg, snapshot

from registry.errors import InvalidInput, PermissionDenied, TooLarge
from registry.jobs import Job, SubmitRequest
from registry.remote.client import RemoteRegistry
from registry.remote.jobs import MAX_SUBMITTED_BYTES
from registry.remote.messages import to_message
from registry.remote.rpc import jobs_pb, jobs_pb_grpc, pb
from server.app import create_registry_server
from server.jobs_service import JobHooks
from server.options import ServerOptions
from server.tokens import create_token

ROOT = Path(__file__).resolve().parent.parent
ARITH = ROOT / "examples" / "arith.jsonl"
WORKER = "test-worker-1"
BACKSTOP_S = 120  # joins and deadlines are backstops for a hung stream, never a measure of speed


def write_config(directory: Path, name: str = "remote-job", data: str = "data.jsonl", lines: int = 40, **overrides) -> Path:
    """A job config for the registry's tiny base, with its dataset beside it under the relative path `data`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / data).write_text("\n".join(ARITH.read_text().splitlines()[:lines]) + "\n")
    config = {
        "base_model": TINY_BASE, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "datasets": [{"path": data, "type": "alpaca"}], "val_set_size": 16, "sequence_len": 48,
        "micro_batch_size": 4, "max_steps": 2, "eval_steps": 2, "save_steps": 2, "learning_rate": 0.002, "seed": 3,
        "push": {"name": name}, "evaluation": {"max_examples": 2, "max_new_tokens": 2, "max_general_ppl_ratio": None},
        **overrides,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def served(registry, tmp_path):
    """The `registry` fixture's home served with the Registry and Jobs services, tokens required; yields a dict.

    `train` does not imply `read` (no role but admin implies another): trainer-a may submit but not list."""
    from trainer.jobs.submit import check_dataset, submit

    tokens_file = tmp_path / "tokens.yaml"
    tokens = {name: create_token(name, role, tokens_file)
              for name, role in (("trainer-a", "train"), ("trainer-b", "read,train"), ("reader", "read"), ("boss", "admin"))}
    options = ServerOptions(port=0, auth_tokens=str(tokens_file))
    hooks = JobHooks(submit=submit, check_dataset=check_dataset)
    server, port, _ = create_registry_server(options, registry.home, job_hooks=hooks)
    url = f"grpc://127.0.0.1:{port}"
    clients = {name: RemoteRegistry(url, token=token, home=tmp_path / "cache") for name, token in tokens.items()}
    yield {"url": url, "tokens": tokens, "remote": clients, "registry": registry, "port": port}
    for client in clients.values():
        client.close()
    server.stop(0)


def reg(capsys, served, token: str | None, *args: str) -> tuple[int, str, str]:
    """`reg --registry URL [--token T] ARGS` in this process: (exit code, stdout, the CLI's `error: ...` lines).

    The server runs in this process too: its log lines (a denial's warning) are left out of stderr."""
    code, out, err = run_reg(capsys, "--registry", served["url"], *(["--token", served["tokens"][token]] if token else []), *args)
    return code, out, "".join(line for line in err.splitlines(keepends=True) if line.startswith("error: "))


def submit_remote(capsys, served, token: str, path: Path, *args: str) -> str:
    code, out, err = reg(capsys, served, token, "job", "submit", str(path), *args)
    assert code == 0, err
    return out.strip()


def run_to_the_end(queue, job_id: str, state: str = "succeeded", checkpoint: Path | None = None) -> None:
    """What a worker does with a job, through the real queue: claim it, log two steps (and a checkpoint), end it."""
    claimed = queue.claim(WORKER, {"gpus": [], "memory_bytes": None, "device": "cpu"})
    assert claimed is not None and claimed.id == job_id
    queue.progress(job_id, 1, 2, {"loss": 1.5, "learning_rate": 0.002})
    if checkpoint is not None:
        queue.record_checkpoint(job_id, 2, str(checkpoint), {"loss": 1.25})
    queue.progress(job_id, 2, 2, {"loss": 1.25})
    assert queue.finish(job_id, WORKER, state, result_version="remote-job:1" if state == "succeeded" else None,
                        error=None if state == "succeeded" else "boom", device_seconds=3.0)


# --- submitting -------------------------------------------------------------------------------------------------


def test_a_train_token_submits_from_another_machine(served, capsys, tmp_path):
    """The config and its datasets travel to the server, which checks them, freezes them and queues the job under
    the token's name; later edits of the submitter's files change nothing."""
    path = write_config(tmp_path / "client")
    job_id = submit_remote(capsys, served, "trainer-a", path, "--set", "lora_r=8", "--priority", "5")
    (tmp_path / "client" / "data.jsonl").write_text("")
    registry = served["registry"]
    job = registry.jobs.get(job_id)
    assert (job.state, job.submitter, job.source, job.priority, job.adapter) == ("queued", "trainer-a", "grpc", 5, "remote-job")
    assert job.config["lora_r"] == 8 and job.base == TINY_BASE
    [ds] = job.datasets
    assert job.config["datasets"][0]["path"] == f"blob:{ds['sha256']}" and ds["lines"] == 40 and ds["name"] == "data.jsonl"
    assert registry.blobs.has(ds["sha256"])
    assert [e.data.get("state") for e in registry.jobs.events(job_id) if e.type == "state"] == ["validating_files", "queued"]
    [entry] = [e for e in registry.audit_entries() if e["action"] == "job.submit"]
    assert (entry["token"], entry["target"]) == ("trainer-a", job_id)


def test_a_read_token_cannot_submit_but_can_list_and_show(served, capsys, tmp_path):
    path = write_config(tmp_path / "client")
    before = snapshot(served["registry"].home)
    code, out, err = reg(capsys, served, "reader", "job", "submit", str(path))
    assert code == 11 and out == ""
    assert err.strip() == (f"error: registry {served['url']}: token 'reader' has role(s) read; SubmitJob needs 'train'")
    assert snapshot(served["registry"].home) == before
    code, _, err = reg(capsys, served, None, "job", "ls")
    assert code == 10 and "no token" in err
    code, _, err = reg(capsys, served, "trainer-a", "job", "ls")
    assert code == 11 and "ListJobs needs 'read'" in err  # `train` alone submits; reading needs `read`
    job_id = submit_remote(capsys, served, "trainer-a", path)
    code, out, _ = reg(capsys, served, "reader", "job", "ls", "--json")
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job_id]
    code, out, _ = reg(capsys, served, "reader", "job", "show", job_id)
    assert code == 0 and "queued" in out and "by trainer-a" in out
    code, _, err = reg(capsys, served, "reader", "job", "cancel", job_id)
    assert code == 11 and "CancelJob needs 'train'" in err
    code, _, err = reg(capsys, served, "reader", "job", "show", "ftjob-doesnotexist")
    assert code == 3 and "no job 'ftjob-doesnotexist'" in err


def test_only_the_submitter_or_an_admin_changes_a_job(served, capsys, tmp_path):
    first = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "a"))
    second = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "b", name="other-job"))
    code, _, err = reg(capsys, served, "trainer-b", "job", "cancel", first)
    assert code == 11 and f"job {first} was submitted by 'trainer-a', not 'trainer-b'" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(PermissionDenied):
        served["remote"]["trainer-b"].jobs.cancel(second)
    queue = served["registry"].jobs
    assert queue.get(first).state == queue.get(second).state == "queued"
    code, out, _ = reg(capsys, served, "trainer-a", "job", "cancel", first)
    assert code == 0 and out.strip() == f"{first}: cancelled"
    assert served["remote"]["boss"].jobs.cancel(second).state == "cancelled"  # an admin changes anyone's
    with pytest.raises(PermissionDenied):
        served["remote"]["trainer-b"].jobs.resume(first)
    code, out, _ = reg(capsys, served, "trainer-a", "job", "resume", first)
    assert code == 0 and out.strip() == f"{first}: queued"
    actions = [(e["token"], e["action"], e["target"]) for e in served["registry"].audit_entries() if e["action"] != "job.submit"]
    assert actions == [("trainer-a", "job.cancel", first), ("boss", "job.cancel", second), ("trainer-a", "job.resume", first)]


def test_a_bad_dataset_line_is_refused_remotely_naming_file_and_line(served, capsys, tmp_path):
    path = write_config(tmp_path / "client", data="bad.jsonl")
    lines = (tmp_path / "client" / "bad.jsonl").read_text().splitlines()
    lines[6] = '{"instruction": "2+2"'
    (tmp_path / "client" / "bad.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(served["registry"].home)
    code, _, err = reg(capsys, served, "trainer-a", "job", "submit", str(path))
    assert code == 2 and "bad.jsonl:7" in err and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path) not in err and "Traceback" not in err  # no path of the server's (or the client's) machine
    assert snapshot(served["registry"].home) == before and served["registry"].jobs.list() == []


def test_a_server_without_the_trainers_checks_takes_no_jobs(registry, capsys, tmp_path):
    from remote_helpers import start_registry

    server, url, _ = start_registry(registry.home)
    try:
        code, _, err = run_reg(capsys, "--registry", url, "job", "submit", str(write_config(tmp_path / "client")))
        assert code == 1 and "this server takes no fine-tuning jobs" in err
        code, out, _ = run_reg(capsys, "--registry", url, "job", "ls", "--json")
        assert code == 0 and json.loads(out) == []
    finally:
        server.stop(0)


# --- bounds ---------------------------------------------------------------------------------------------------


def test_the_submission_bound_is_the_trainers():
    from trainer.jobs.submit import MAX_SUBMITTED_BYTES as TRAINER_BOUND

    assert MAX_SUBMITTED_BYTES == TRAINER_BOUND


def test_a_full_size_submission_streams_and_a_larger_one_is_refused_before_it_is_sent(served):
    jobs = served["remote"]["trainer-a"].jobs
    config = {"base_model": TINY_BASE, "datasets": []}  # refused by the trainer's check, once every byte has arrived
    with pytest.raises(InvalidInput, match="a job needs at least one dataset"):
        jobs.submit_request(SubmitRequest(config=config, files={"big.jsonl": bytes(MAX_SUBMITTED_BYTES)}))
    with pytest.raises(TooLarge, match="more than the 67,108,864 one remote submission carries"):
        jobs.submit_request(SubmitRequest(config=config, files={"a.jsonl": bytes(MAX_SUBMITTED_BYTES // 2),
                                                                 "b.jsonl": bytes(MAX_SUBMITTED_BYTES // 2 + 1)}))
    assert served["registry"].jobs.list() == []


def _raw_submit(served, messages) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{served['port']}") as channel:
        stub = jobs_pb_grpc.JobsStub(channel)
        metadata = [("authorization", f"Bearer {served['tokens']['trainer-a']}")]
        with pytest.raises(grpc.RpcError) as caught:
            stub.SubmitJob(iter(messages), metadata=metadata, timeout=BACKSTOP_S)
    return caught.value


@pytest.mark.parametrize("case, status, needle", [
    ("declares too much", "RESOURCE_EXHAUSTED", "more than the 67,108,864"),
    ("sends more than declared", "INVALID_ARGUMENT", "more bytes than the declared 4"),
    ("sends less than declared", "INVALID_ARGUMENT", "2 of its 4 bytes arrived"),
    ("sends an undeclared file", "INVALID_ARGUMENT", "'other.jsonl'"),
    ("starts with a chunk", "INVALID_ARGUMENT", "starts with its config"),
])
def test_the_server_bounds_a_submission_as_it_arrives(served, case, status, needle):
    """A client that does not follow the protocol: refused with one line, nothing stored."""
    config = to_message({"base_model": TINY_BASE, "datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, pb.JsonObject)
    size = MAX_SUBMITTED_BYTES + 1 if case == "declares too much" else 4
    head = jobs_pb.SubmitJobRequest(submission=jobs_pb.JobSubmission(
        config=config, files=[jobs_pb.SubmittedFile(path="d.jsonl", size=size)]))
    chunk = lambda path, data: jobs_pb.SubmitJobRequest(chunk=jobs_pb.FileChunk(path=path, data=data))  # noqa: E731
    messages = {
        "declares too much": [head],
        "sends more than declared": [head, chunk("d.jsonl", b"abc"), chunk("d.jsonl", b"de")],
        "sends less than declared": [head, chunk("d.jsonl", b"ab")],
        "sends an undeclared file": [head, chunk("other.jsonl", b"ab")],
        "starts with a chunk": [chunk("d.jsonl", b"abcd")],
    }[case]
    before = snapshot(served["registry"].home)
    error = _raw_submit(served, messages)
    assert error.code().name == status and needle in error.details(), error.details()
    assert snapshot(served["registry"].home) == before


# --- following, reading, and the same answers as a local registry -------------------------------------------------


def test_following_events_streams_them_as_they_land_and_ends_with_the_job(served, capsys, tmp_path):
    job_id = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "client"))
    queue = served["registry"].jobs
    followed, queued_seen, done = [], threading.Event(), threading.Event()

    def follow():
        for event in served["remote"]["reader"].jobs.follow_events(job_id):
            followed.append(event)
            if event.data.get("state") == "queued":
                queued_seen.set()
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert queued_seen.wait(BACKSTOP_S)
    assert not done.is_set()  # the job is still queued: the stream stays open
    run_to_the_end(queue, job_id)
    thread.join(BACKSTOP_S)
    assert done.is_set(), "the stream ended when the job did"
    assert followed == queue.events(job_id) and followed[-1].data["state"] == "succeeded"
    assert [e.seq for e in followed] == list(range(1, len(followed) + 1))
    # the CLI prints exactly what it prints locally, following or not, as text or JSON
    for args in ((), ("--follow",), ("--json",), ("--follow", "--json"), ("--after", "3")):
        code, remote_out, _ = reg(capsys, served, "reader", "job", "events", job_id, *args)
        local_code, local_out, _ = run_reg(capsys, "job", "events", job_id, *args, "--home", str(queue.registry.home))
        assert code == local_code == 0 and remote_out == local_out and remote_out, args


def _when_a_handler_is_free(call):
    """`call()`, again while the server still counts the ended stream's call as running (it frees the slot a moment
    after the stream returns); a stream that did not end keeps the slot for an hour, past the backstop."""
    backstop = time.monotonic() + BACKSTOP_S
    while True:
        try:
            return call()
        except TooLarge:  # gRPC's "Concurrent RPC limit exceeded"
            if time.monotonic() > backstop:
                raise
            time.sleep(0.05)


def test_a_follower_that_goes_away_frees_its_handler_at_once(registry, capsys, tmp_path, monkeypatch):
    """With one handler thread and a poll far longer than the test, the next call is served only if the follow
    stream ended when its client cancelled (not at its next poll)."""
    import server.jobs_servicer
    from trainer.jobs.submit import check_dataset, submit

    monkeypatch.setattr(server.jobs_servicer, "FOLLOW_POLL_S", 3600.0)
    hooks = JobHooks(submit=submit, check_dataset=check_dataset)
    grpc_server, port, _ = create_registry_server(ServerOptions(port=0, workers=1), registry.home, job_hooks=hooks)
    try:
        with RemoteRegistry(f"grpc://127.0.0.1:{port}", home=tmp_path / "cache", timeout=BACKSTOP_S) as remote:
            job_id = remote.jobs.submit_request(SubmitRequest(
                config=yaml.safe_load(write_config(tmp_path / "client").read_text()),
                files={"data.jsonl": (tmp_path / "client" / "data.jsonl").read_bytes()})).id
            following = remote.jobs.follow_events(job_id)
            assert [next(following).seq for _ in registry.jobs.events(job_id)] == [e.seq for e in registry.jobs.events(job_id)]
            following.close()  # the job is still queued: only the client's cancel ends the stream
            assert _when_a_handler_is_free(lambda: remote.jobs.get(job_id)).state == "queued"
    finally:
        grpc_server.stop(0)


def test_remote_job_commands_print_what_local_ones_print(served, capsys, tmp_path, make_adapter):
    queue, home = served["registry"].jobs, str(served["registry"].home)
    done = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "a"))
    failed = submit_remote(capsys, served, "trainer-b", write_config(tmp_path / "b", name="other-job"))
    run_to_the_end(queue, done, checkpoint=make_adapter("lora", seed=1))
    run_to_the_end(queue, failed, state="failed", checkpoint=tmp_path / "removed-checkpoint")
    waiting = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "c", name="third-job"), "--priority", "-2")
    for args in (("ls", "--json"), ("ls", "--state", "failed,succeeded", "--json"), ("ls", "--submitter", "trainer-a", "--json"),
                 ("ls", "--limit", "1", "--json"), ("show", done, "--json"), ("show", failed), ("checkpoints", done, "--json"),
                 ("checkpoints", failed), ("checkpoints", waiting)):
        code, remote_out, err = reg(capsys, served, "reader", "job", *args)
        local_code, local_out, _ = run_reg(capsys, "job", *args, "--home", home)
        assert code == local_code == 0 and remote_out == local_out, (args, err)
    listed = json.loads(reg(capsys, served, "reader", "job", "ls", "--json")[1])
    assert [j["id"] for j in listed] == [waiting, failed, done] and listed[2]["device_hours"] == round(3 / 3600, 6)
    assert served["remote"]["reader"].jobs.get(done) == queue.get(done)  # the record itself, not only what is printed


def test_pushing_a_checkpoint_remotely_makes_a_version(served, capsys, tmp_path, make_adapter):
    job_id = submit_remote(capsys, served, "trainer-a", write_config(tmp_path / "client"))
    run_to_the_end(served["registry"].jobs, job_id, state="failed", checkpoint=make_adapter("lora", seed=4))
    code, _, err = reg(capsys, served, "trainer-b", "job", "push-checkpoint", job_id, "2")
    assert code == 11 and "submitted by 'trainer-a'" in err
    code, _, err = reg(capsys, served, "trainer-a", "job", "push-checkpoint", job_id, "3")
    assert code == 3 and f"job {job_id} has no checkpoint at step 3 (its checkpoints: 2)" in err
    code, out, err = reg(capsys, served, "trainer-a", "job", "push-checkpoint", job_id, "2", "--alias", "candidate")
    assert code == 0 and out.strip() == "remote-job:1", err
    version = served["registry"].resolve("remote-job@candidate")
    assert version.number == 1 and f"checkpoint at step 2 of job {job_id}" in version.message
    result = served["remote"]["boss"].jobs.push_checkpoint(job_id, 2)
    assert result.version.number == 2 and result.version.manifest_digest == version.manifest_digest
    assert [e["action"] for e in served["registry"].audit_entries()][-2:] == ["job.push-checkpoint"] * 2


def test_every_jobs_method_answers_alike_locally_and_remotely(served, capsys, tmp_path):
    """(Their signatures are compared in tests/test_registry_interface.py; push_checkpoint in the test above.)"""
    from registry.interface import JobsAPI

    job_id = submit_remote(capsys, served, "trainer-b", write_config(tmp_path / "client"))
    local, remote = served["registry"].jobs, served["remote"]["trainer-b"].jobs
    assert isinstance(remote, JobsAPI)
    assert remote.get(job_id) == local.get(job_id) and isinstance(remote.get(job_id), Job)
    assert remote.list() == local.list() and remote.list(state="running") == local.list(state="running") == []
    assert remote.events(job_id, after=1, limit=2) == local.events(job_id, after=1, limit=2)
    assert remote.checkpoints(job_id) == local.checkpoints(job_id) == []
    assert remote.cancel(job_id) == local.get(job_id)
    assert remote.resume(job_id, actor="ignored: the server reads the token") == local.get(job_id)
    assert local.get(job_id).state == "queued"
