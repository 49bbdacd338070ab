"""A worker on another machine: `reg --registry URL --token T worker --home W` runs a served registry's jobs.

The registry is served for real (the Registry, Jobs and JobWorkers services, tokens required); the worker is a
real `reg worker` process with its own home (its own registry, holding the same tiny base), so nothing of the
job reaches it but through the wire: it claims and tends the job over JobWorkers, downloads its datasets, trains
in its own home, and pushes the version to the served registry with the run's lineage and its evaluation.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BASE, run_reg, snapshot
from test_jobs_remote import ARITH, write_config

from registry import Registry
from registry.errors import Conflict, InvalidInput, NotFound
from registry.jobs import WorkerInfo
from registry.remote.client import RemoteRegistry
from server.app import create_registry_server
from server.jobs_service import JobHooks
from server.options import ServerOptions
from server.tokens import create_token

WAIT_S = 600  # a backstop for a hung job, never a measure of speed
CPU = {"device": "cpu", "device_name": "cpu", "memory_bytes": 8 << 30, "gpus": []}


@pytest.fixture
def served(registry, tmp_path):
    """`registry` served with tokens: a submitter (train), a worker (worker, read, push), a reader, an admin."""
    from trainer.jobs.submit import check_dataset, submit

    tokens_file = tmp_path / "tokens.yaml"
    tokens = {name: create_token(name, roles, tokens_file) for name, roles in (
        ("submitter", "train,read"), ("gpu-box", "worker,read,push"), ("reader", "read"), ("boss", "admin"))}
    server, port, _ = create_registry_server(ServerOptions(port=0, auth_tokens=str(tokens_file)), registry.home,
                                             job_hooks=JobHooks(submit=submit, check_dataset=check_dataset))
    url = f"grpc://127.0.0.1:{port}"
    clients = {name: RemoteRegistry(url, token=token, home=tmp_path / f"cache-{name}") for name, token in tokens.items()}
    yield {"url": url, "tokens": tokens, "remote": clients, "registry": registry}
    for client in clients.values():
        client.close()
    server.stop(0)


@pytest.fixture
def worker_home(tmp_path, tiny_base_dir) -> Path:
    """The worker machine's own registry home, with the same tiny base (the same files, so the same digest)."""
    home = tmp_path / "worker-home"
    Registry(home).add_base(str(tiny_base_dir), TINY_BASE)
    return home


def submit(capsys, served, path: Path, *args: str) -> str:
    code, out, err = run_reg(capsys, "--registry", served["url"], "--token", served["tokens"]["submitter"], "job",
                             "submit", str(path), *args)
    assert code == 0, err
    return out.strip()


def start_remote_worker(served, home: Path, token: str, log: Path, *args: str) -> subprocess.Popen:
    """`reg --registry URL worker --home HOME ...` in its own process, its token in the environment."""
    env = {**os.environ, "LORADOCK_TOKEN": served["tokens"][token], "OMP_NUM_THREADS": "1"}
    env.pop("LORADOCK_HOME", None)
    command = [str(Path(sys.executable).parent / "reg"), "--registry", served["url"], "worker", "--home", str(home),
               "--lease-s", "3", *args]
    return subprocess.Popen(command, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


# --- the worker side of the queue, over the wire ------------------------------------------------------------------


def test_the_worker_side_keeps_the_queue_s_rules_over_the_wire(served, capsys, tmp_path):
    """Claim, renew and finish through JobWorkers answer as the local queue does; what is not the caller's to do
    is refused in one line and changes nothing."""
    job_id = submit(capsys, served, write_config(tmp_path / "client"))
    queue = served["remote"]["gpu-box"].jobs
    queue.register_worker(WorkerInfo("box-1", "box", 1, 1, CPU))
    assert [w.id for w in served["registry"].jobs.live_workers()] == ["box-1"]
    with pytest.raises(Conflict, match=f"job {job_id} is queued, not running"):
        queue.add_event(job_id, "info", "message", "not yet")
    with pytest.raises(InvalidInput, match="lease_s=0.0"):
        queue.claim("box-1", CPU, lease_s=0)
    job = queue.claim("box-1", CPU, lease_s=30)
    assert job.id == job_id and job.state == "running" and job.worker_id == "box-1"
    assert queue.claim("box-1", CPU, lease_s=30) is None  # nothing else is queued
    assert queue.renew(job_id, "box-2", 30) == "lost" and queue.renew(job_id, "box-1", 30, 2.0) == "running"
    assert queue.to_stop([job_id], "box-1") == {} and queue.to_stop([job_id], "box-2") == {job_id: "lost"}
    queue.progress(job_id, 1, 2, {"loss": 1.5})
    queue.record_checkpoint(job_id, 1, "/on/the/worker/checkpoint-1", {"loss": 1.5})
    queue.set_run(job_id, job_id)
    assert queue.add_event(job_id, "warn", "message", "a worker's warning") > 0
    before = snapshot(served["registry"].home)
    with pytest.raises(NotFound):
        queue.finish(job_id, "box-1", "succeeded", result_version="never-pushed:1")
    assert queue.finish(job_id, "box-2", "failed", error="not mine") is False
    assert snapshot(served["registry"].home) == before
    served["remote"]["submitter"].jobs.cancel(job_id)
    assert queue.to_stop([job_id], "box-1") == {job_id: "cancel"}
    assert queue.finish(job_id, "box-1", "cancelled", device_seconds=3.0) is True
    job = served["registry"].jobs.get(job_id)
    assert (job.state, job.step, job.run_id, job.device_seconds) == ("cancelled", 1, job_id, 3.0)
    assert [c.path for c in served["registry"].jobs.checkpoints(job_id)] == ["/on/the/worker/checkpoint-1"]
    queue.unregister_worker("box-1")
    assert served["registry"].jobs.live_workers() == []


def test_stored_checkpoints_are_kept_for_the_newest_save_total_limit(served, capsys, tmp_path):
    """A remote worker's checkpoints are uploaded (UploadBlob) and recorded; like the trainer's directories, only the
    newest `save_total_limit` (here 2) keep their stored files, and `reg gc` then removes the older blobs."""
    job_id = submit(capsys, served, write_config(tmp_path / "client"))
    queue, registry = served["remote"]["gpu-box"].jobs, served["registry"]
    queue.register_worker(WorkerInfo("box-1", "box", 1, 1, CPU))
    assert queue.claim("box-1", CPU, lease_s=30).id == job_id
    for step in (1, 2, 3):
        directory = tmp_path / f"checkpoint-{step}"
        directory.mkdir()
        (directory / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        queue.record_checkpoint(job_id, step, str(directory), {"loss": 1.0 / step}, queue.upload_checkpoint(directory))
    checkpoints = registry.jobs.checkpoints(job_id)
    assert [(c.step, len(c.files)) for c in checkpoints] == [(1, 0), (2, 1), (3, 1)]
    digests = {c.step: c.files[0]["sha256"] for c in checkpoints if c.files}
    dropped = hashlib.sha256(b'{"global_step": 1}').hexdigest()
    assert registry.blobs.has(dropped)
    registry.gc(grace_s=0)
    assert all(registry.blobs.has(d) for d in digests.values()) and not registry.blobs.has(dropped)
    with pytest.raises(InvalidInput, match="checkpoint 4"):  # a file list from outside is checked like a version's
        queue.record_checkpoint(job_id, 4, "/x", {}, [{"path": "../escape", "size": 1, "sha256": "0" * 64}])
    assert [c.step for c in registry.jobs.checkpoints(job_id)] == [1, 2, 3]


def test_a_token_without_the_worker_role_claims_nothing(served, capsys, tmp_path, worker_home):
    job_id = submit(capsys, served, write_config(tmp_path / "client"))
    before = snapshot(served["registry"].home)
    log = tmp_path / "worker.log"
    worker = start_remote_worker(served, worker_home, "reader", log, "--max-jobs", "1")
    assert worker.wait(WAIT_S) != 0
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert errors == [f"error: registry {served['url']}: token 'reader' has role(s) read; RegisterWorker needs 'worker'"]
    assert "Traceback" not in log.read_text()
    assert snapshot(served["registry"].home) == before and served["registry"].jobs.get(job_id).state == "queued"


# --- real remote workers ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_remote_worker_trains_a_job_and_pushes_the_version_with_its_lineage(served, capsys, tmp_path, worker_home):
    """The job also holds out a file of its own (`test_datasets`): it travels, is frozen and materialised as the
    training file is, and the run's lineage records it as held out."""
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "held.jsonl").write_text("\n".join(ARITH.read_text().splitlines()[100:108]) + "\n")
    job_id = submit(capsys, served, write_config(tmp_path / "client", test_datasets=[{"path": "held.jsonl",
                                                                                      "type": "alpaca"}]))
    log = tmp_path / "worker.log"
    worker = start_remote_worker(served, worker_home, "gpu-box", log, "--max-jobs", "1")
    assert worker.wait(WAIT_S) == 0, log_tail(log)
    registry = served["registry"]
    job = registry.jobs.get(job_id)
    assert (job.state, job.result_version, job.attempts, job.step) == ("succeeded", "remote-job:1", 1, 2), job.error
    assert job.device_seconds > 0 and job.as_dict()["device_hours"] > 0
    version = registry.resolve("remote-job:1")
    run = registry.run(version.run_id)
    assert run["job_id"] == job_id and run["config"]["lora_r"] == job.config["lora_r"]
    assert [d["sha256"] for d in run["datasets"][:2]] == [f"sha256:{d['sha256']}" for d in job.datasets]
    assert [d["split"] for d in job.datasets] == ["train", "test"] and run["datasets"][1]["split"] == "test"
    assert run["datasets"][-1]["counts"]["val"] == 8
    description = registry.describe("remote-job:1")
    assert [e["name"] for e in description["evaluations"]] == ["heldout"]
    kinds = [e.type for e in registry.jobs.events(job_id)]
    assert {"state", "metrics", "checkpoint", "message"} <= set(kinds)
    [checkpoint] = registry.jobs.checkpoints(job_id)
    assert checkpoint.path.startswith(str(worker_home))  # on the worker's machine, not the registry's
    mine = Registry(worker_home)
    assert mine.list_adapters() == [] and (mine.runs_dir / job_id / "run.json").exists()  # trained there, pushed here
    [entry] = [e for e in registry.audit_entries() if e["action"] == "push"]
    assert entry["token"] == "gpu-box"


@pytest.mark.integration
def test_a_machine_gone_mid_run_another_resumes_from_the_checkpoint_it_stored(served, capsys, tmp_path, worker_home,
                                                                              tiny_base_dir):
    """Worker A (its own home) is SIGKILLed mid-run; worker B, with another home that never saw the job, downloads
    the newest checkpoint A stored in the registry and finishes: one continuous loss curve, the same step count."""
    import shutil
    import signal

    job_id = submit(capsys, served, write_config(tmp_path / "client", name="long-job", max_steps=40, save_steps=5,
                                                 eval_steps=20, val_set_size=8, micro_batch_size=2))
    registry = served["registry"]
    first_log = tmp_path / "a.log"
    first = start_remote_worker(served, worker_home, "gpu-box", first_log)
    _wait(lambda: any(c.step >= 10 and c.files for c in registry.jobs.checkpoints(job_id)), "a stored checkpoint at step 10",
          first, first_log)
    first.send_signal(signal.SIGKILL)
    first.wait()
    shutil.rmtree(worker_home)  # the machine is gone, its disk with it
    stored_at = max(c.step for c in registry.jobs.checkpoints(job_id) if c.files)
    assert all(registry.blobs.has(f["sha256"]) for c in registry.jobs.checkpoints(job_id) for f in c.files)
    other_home = tmp_path / "machine-b"
    Registry(other_home).add_base(str(tiny_base_dir), TINY_BASE)
    second_log = tmp_path / "b.log"
    second = start_remote_worker(served, other_home, "gpu-box", second_log, "--max-jobs", "1")
    assert second.wait(WAIT_S) == 0, log_tail(second_log)
    job = registry.jobs.get(job_id)
    assert (job.state, job.attempts, job.step) == ("succeeded", 2, 40), job.error
    events = registry.jobs.events(job_id)
    assert any(f"resumes from checkpoint {stored_at}, downloaded from the registry" in e.message for e in events)
    starts = [e.data["start_step"] for e in events if "start_step" in e.data]
    assert starts[0] == 0 and starts[1] == stored_at
    run = registry.run(registry.resolve(job.result_version).run_id)
    steps = [s for s, _ in run["metrics"]["train_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # one continuous curve, no repeated steps
    shutil.rmtree(other_home)  # machine B goes too: the registry's stored copies are all that is left
    checkpoints = registry.jobs.checkpoints(job_id)
    assert [c.step for c in checkpoints if c.files] == [35, 40]  # the newest save_total_limit keep their files
    assert not any(c.present for c in checkpoints)
    code, out, _ = run_reg(capsys, "job", "checkpoints", job_id, "--home", str(registry.home))
    assert code == 0 and "stored" in out
    pushed = served["remote"]["submitter"].jobs.push_checkpoint(job_id, 40)  # made from the stored blobs
    assert pushed.created and pushed.version.ref == "long-job:2"
    before = {c.step: c.files for c in registry.jobs.checkpoints(job_id)}
    registry.gc(grace_s=0)  # the stored checkpoints' blobs are kept
    assert all(registry.blobs.has(f["sha256"]) for files in before.values() for f in files)


@pytest.mark.integration
def test_cancelling_a_job_a_remote_worker_runs_stops_its_training(served, capsys, tmp_path, worker_home):
    job_id = submit(capsys, served, write_config(tmp_path / "client", name="long-job", max_steps=400, save_steps=2,
                                                 eval_steps=200, micro_batch_size=2))
    log = tmp_path / "worker.log"
    worker = start_remote_worker(served, worker_home, "gpu-box", log, "--max-jobs", "1")
    registry = served["registry"]
    _wait(lambda: registry.jobs.checkpoints(job_id), "a first checkpoint", worker, log)
    code, out, err = run_reg(capsys, "--registry", served["url"], "--token", served["tokens"]["submitter"], "job",
                             "cancel", job_id)
    assert code == 0 and "stopping" in out, err
    assert worker.wait(WAIT_S) == 0, log_tail(log)
    job = registry.jobs.get(job_id)
    assert job.state == "cancelled" and job.step < 400


@pytest.mark.integration
def test_a_job_whose_base_the_worker_lacks_fails_saying_how_to_add_it(served, capsys, tmp_path):
    job_id = submit(capsys, served, write_config(tmp_path / "client"))
    bare = tmp_path / "bare-worker-home"
    log = tmp_path / "worker.log"
    worker = start_remote_worker(served, bare, "gpu-box", log, "--max-jobs", "1")
    assert worker.wait(WAIT_S) == 0, log_tail(log)
    job = served["registry"].jobs.get(job_id)
    assert job.state == "failed"
    assert f"base '{TINY_BASE}' of job {job_id} is not in this worker's registry ({bare})" in job.error
    assert "reg base fetch" in job.error and "Traceback" not in job.error


def _wait(predicate, what: str, proc: subprocess.Popen, log: Path):
    import time

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited with {proc.returncode} before {what}: {log_tail(log)}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
