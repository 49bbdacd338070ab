"""Fine-tuning jobs through the queue: real `reg worker` processes, a real registry, the tiny Llama.

Submit refusals, priorities, the lineage naming the job, a worker SIGKILLed mid-run and another resuming it,
cancel (queued and running), a job no worker fits, and 8 workers racing for 20 jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY_BASE, run_reg
from registry import Registry
from registry.errors import NotFound

ROOT = Path(__file__).resolve().parent.parent
ARITH = ROOT / "examples" / "arith.jsonl"
WAIT_S = 600  # a backstop for a hung job, never a measure of speed


def write_config(tmp_path: Path, name: str = "tiny-job", **overrides) -> Path:
    config = {
        "base_model": TINY_BASE, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "datasets": [{"path": str(ARITH), "type": "alpaca"}], "val_set_size": 16, "sequence_len": 48,
        "micro_batch_size": 4, "max_steps": 2, "eval_steps": 2, "save_steps": 2, "learning_rate": 0.002, "seed": 3,
        "push": {"name": name}, "evaluation": {"max_examples": 2, "max_new_tokens": 2, "max_general_ppl_ratio": None},
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def reg_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reg"), *args]


def start_worker(home: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "LORADOCK_HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(reg_cmd("worker", "--lease-s", "3", *args), env=env, stdout=out, stderr=subprocess.STDOUT)


def submit(capsys, path: Path, *args: str) -> str:
    code, out, err = run_reg(capsys, "job", "submit", str(path), *args)
    assert code == 0, err
    return out.strip()


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited with {proc.returncode} before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events(registry: Registry, job_id: str) -> list:
    return registry.jobs.events(job_id)


# --- submitting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, needle", [
    (["--set", "lora_rr=4"], "lora_rr"),
    (["--set", "base_model=no-such-base"], "no-such-base"),
])
def test_a_refused_submission_is_one_line_and_queues_nothing(tmp_path, registry, capsys, override, needle):
    path = write_config(tmp_path)
    code, out, err = run_reg(capsys, "job", "submit", str(path), *override)
    assert code == 2 if needle == "lora_rr" else code == 3, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert registry.jobs.list() == []
    assert not list((registry.home / "blobs").glob("sha256/*/*"))


def test_a_bad_dataset_line_is_named_by_file_and_line_and_queues_nothing(tmp_path, registry, capsys):
    data = tmp_path / "bad.jsonl"
    lines = ARITH.read_text().splitlines()[:30]
    lines[6] = '{"instruction": "2+2"'
    data.write_text("\n".join(lines) + "\n")
    path = write_config(tmp_path, datasets=[{"path": str(data), "type": "alpaca"}])
    code, _, err = run_reg(capsys, "job", "submit", str(path))
    assert code == 2 and "bad.jsonl:7" in err and len(err.strip().splitlines()) == 1
    assert registry.jobs.list() == []


def test_submit_freezes_the_config_and_stores_the_datasets_as_blobs(tmp_path, registry, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(ARITH.read_text().splitlines()[:40]) + "\n")
    path = write_config(tmp_path, datasets=[{"path": "data.jsonl", "type": "alpaca"}])
    job_id = submit(capsys, path, "--set", "lora_r=8", "--priority", "5")
    path.write_text(path.read_text().replace("lora_r: 4", "lora_r: 2"))  # later edits change nothing
    data.write_text("")
    job = registry.jobs.get(job_id)
    assert job.state == "queued" and job.priority == 5 and job.config["lora_r"] == 8
    [ds] = job.datasets
    assert job.config["datasets"][0]["path"] == f"blob:{ds['sha256']}" and ds["lines"] == 40
    assert registry.blobs.has(ds["sha256"])
    assert [e.data.get("state") for e in events(registry, job_id) if e.type == "state"] == ["validating_files", "queued"]
    code, out, _ = run_reg(capsys, "job", "ls", "--json")
    [listed] = json.loads(out)
    assert listed["id"] == job_id and listed["state"] == "queued" and listed["device_hours"] == 0
    code, _, _ = run_reg(capsys, "gc", "--grace", "0")
    assert code == 0 and registry.blobs.has(ds["sha256"])  # a queued job's data is not garbage


def test_cancelling_a_queued_job_is_immediate_and_final(tmp_path, registry, capsys):
    job_id = submit(capsys, write_config(tmp_path))
    code, out, _ = run_reg(capsys, "job", "cancel", job_id)
    assert code == 0 and "cancelled" in out
    assert registry.jobs.get(job_id).state == "cancelled"
    code, _, err = run_reg(capsys, "job", "cancel", job_id)
    assert code == 4 and "already cancelled" in err
    code, _, err = run_reg(capsys, "job", "show", "ftjob-nosuchjob")
    assert code == 3 and "no job" in err


# --- scheduling -----------------------------------------------------------------------------------------


def test_claims_follow_priority_then_age_and_respect_a_per_submitter_limit(tmp_path, registry, capsys, monkeypatch):
    """The queue's claim, driven as a worker drives it (no training needed to see the order)."""
    order = []
    for user, name, priority in [("ann", "a1", 1), ("ann", "a2", 9), ("ann", "a3", 9), ("bob", "b1", 1)]:
        monkeypatch.setenv("LORADOCK_USER", user)
        order.append((name, submit(capsys, write_config(tmp_path, name=name), "--priority", str(priority))))
    ids = dict(order)
    free = {"device": "cpu", "device_name": "cpu", "memory_bytes": 64 << 30, "gpus": []}
    claimed = [registry.jobs.claim("w1", free, max_running_per_submitter=1).id]
    claimed.append(registry.jobs.claim("w1", free, max_running_per_submitter=1).id)  # ann has one running: bob's
    assert registry.jobs.claim("w1", free, max_running_per_submitter=1) is None
    assert claimed == [ids["a2"], ids["b1"]]
    assert registry.jobs.finish(ids["a2"], "w1", "succeeded", result_version="a2:1")
    assert not registry.jobs.finish(ids["a2"], "w1", "failed")  # only a running job held by the worker ends
    assert registry.jobs.claim("w2", free, max_running_per_submitter=1).id == ids["a3"]  # FIFO within priority 9
    assert registry.jobs.renew(ids["a3"], "w1") == "lost" and registry.jobs.renew(ids["a3"], "w2") == "running"


def test_a_page_of_jobs_reads_a_batch_at_a_time_and_continues_after_its_cursor(tmp_path, registry, capsys):
    ids = [submit(capsys, write_config(tmp_path, name=f"p{i}"), "--priority", str(i % 2)) for i in range(7)]
    newest_first = [j.id for j in registry.jobs.list(limit=None)]
    assert sorted(newest_first) == sorted(ids)
    odd = lambda job: job.priority == 1  # noqa: E731 - ids[1], ids[3], ids[5]
    seen, after = [], None
    while True:
        page, more = registry.jobs.page(after, 2, odd, batch=2)
        seen += [j.id for j in page]
        if not more:
            break
        after = page[-1].id
    assert seen == [i for i in newest_first if i in (ids[1], ids[3], ids[5])]
    assert registry.jobs.page(newest_first[-1], 5) == ([], False)
    with pytest.raises(NotFound):
        registry.jobs.page("ftjob-0000", 5)


@pytest.mark.integration
def test_a_job_too_big_for_every_worker_is_refused_and_one_that_fits_none_waits_with_a_warning(tmp_path, registry, capsys):
    queued = submit(capsys, write_config(tmp_path, name="early"))  # before any worker: queued, with a warning
    worker = start_worker(registry.home, "--memory-gb", "0.25")
    try:
        wait_for(lambda: any(e.level == "warn" and "no live worker can run this job" in e.message
                             for e in events(registry, queued)), "the unschedulable warning", worker)
        assert registry.jobs.get(queued).state == "queued"
        code, _, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path, name="late")))
        assert code == 2 and "no live worker can run this job" in err and "GiB" in err
        assert [j.id for j in registry.jobs.list()] == [queued]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


@pytest.mark.integration
def test_a_worker_runs_jobs_by_priority_and_the_version_names_its_job(tmp_path, registry, capsys):
    low = submit(capsys, write_config(tmp_path, name="low"), "--priority", "1")
    first = submit(capsys, write_config(tmp_path, name="first"), "--priority", "5")
    second = submit(capsys, write_config(tmp_path, name="second"), "--priority", "5")
    worker = start_worker(registry.home, "--max-jobs", "3", log=tmp_path / "worker.log")
    assert worker.wait(WAIT_S) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    jobs = {j.id: j for j in registry.jobs.list()}
    order = sorted(jobs.values(), key=lambda j: j.started_at)
    assert [j.id for j in order] == [first, second, low]
    for job in jobs.values():
        assert job.state == "succeeded" and job.attempts == 1 and job.result_version == f"{job.adapter}:1"
        version = registry.resolve(job.result_version)
        assert registry.run(version.run_id)["job_id"] == job.id
        assert job.step == job.total_steps == 2 and job.device_seconds > 0
        kinds = {e.type for e in events(registry, job.id)}
        assert {"state", "metrics", "checkpoint", "message"} <= kinds
    code, out, _ = run_reg(capsys, "job", "show", first)
    assert "succeeded" in out and "first:1" in out and "2/2" in out
    code, out, _ = run_reg(capsys, "job", "events", first, "--json")
    assert [e["seq"] for e in json.loads(out)] == list(range(1, len(events(registry, first)) + 1))


@pytest.mark.integration
def test_a_sigkilled_worker_s_job_is_resumed_by_another_with_one_continuous_loss_curve(tmp_path, registry, capsys):
    job_id = submit(capsys, write_config(tmp_path, name="long", max_steps=40, save_steps=5, eval_steps=20,
                                         val_set_size=8, micro_batch_size=2))
    first = start_worker(registry.home, log=tmp_path / "first.log")
    wait_for(lambda: any(c.step >= 10 for c in registry.jobs.checkpoints(job_id)), "a checkpoint at step 10", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = max(c.step for c in registry.jobs.checkpoints(job_id))
    assert registry.jobs.get(job_id).state == "running" and killed_at < 40
    second = start_worker(registry.home, "--max-jobs", "1", log=tmp_path / "second.log")
    assert second.wait(WAIT_S) == 0, (tmp_path / "second.log").read_text()[-3000:]
    job = registry.jobs.get(job_id)
    assert job.state == "succeeded" and job.attempts == 2 and job.step == 40, job.error
    messages = [e.message for e in events(registry, job_id)]
    assert any("stopped renewing its lease" in m for m in messages)
    starts = [e.data["start_step"] for e in events(registry, job_id) if "start_step" in e.data]
    assert starts[0] == 0 and starts[1] >= killed_at  # the second attempt resumed from the newest checkpoint
    run = registry.run(registry.resolve(job.result_version).run_id)
    steps = [s for s, _ in run["metrics"]["train_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # one continuous curve, no repeated steps


@pytest.mark.integration
def test_cancelling_a_running_job_stops_its_training_and_keeps_its_checkpoints(tmp_path, registry, capsys):
    job_id = submit(capsys, write_config(tmp_path, name="cancelme", max_steps=400, save_steps=2, eval_steps=200,
                                         micro_batch_size=2))
    worker = start_worker(registry.home, "--max-jobs", "1", log=tmp_path / "worker.log")
    wait_for(lambda: registry.jobs.checkpoints(job_id), "a first checkpoint", worker)
    code, out, _ = run_reg(capsys, "job", "cancel", job_id)
    assert code == 0 and "stopping" in out
    assert worker.wait(WAIT_S) == 0
    job = registry.jobs.get(job_id)
    assert job.state == "cancelled" and job.step < 400
    pid = next(e.data["pid"] for e in events(registry, job_id) if "pid" in e.data)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert [c for c in registry.jobs.checkpoints(job_id) if c.present]
    code, out, _ = run_reg(capsys, "job", "resume", job_id)
    assert code == 0 and registry.jobs.get(job_id).state == "queued"
    assert any("continues from its checkpoint at step" in e.message for e in events(registry, job_id))


@pytest.mark.integration
def test_eight_workers_racing_for_twenty_jobs_run_each_exactly_once(tmp_path, registry, capsys):
    ids = [submit(capsys, write_config(tmp_path, name=f"race-{i}", max_steps=1, val_set_size=4, save_steps=1,
                                       eval_steps=1)) for i in range(20)]
    workers = [start_worker(registry.home, "--exit-when-idle", log=tmp_path / f"worker-{i}.log") for i in range(8)]
    for i, worker in enumerate(workers):
        assert worker.wait(WAIT_S) == 0, (tmp_path / f"worker-{i}.log").read_text()[-3000:]
    claims = {job_id: [e.data["worker"] for e in events(registry, job_id) if e.data.get("state") == "running"]
              for job_id in ids}
    assert all(len(c) == 1 for c in claims.values()), claims
    jobs = [registry.jobs.get(job_id) for job_id in ids]
    assert all(j.state == "succeeded" and j.attempts == 1 for j in jobs), [(j.id, j.state, j.error) for j in jobs]
    assert sorted(j.result_version for j in jobs) == sorted(f"race-{i}:1" for i in range(20))
    assert len({w for c in claims.values() for w in c}) > 1  # the work was shared


@pytest.mark.integration
def test_a_job_asking_for_two_processes_trains_under_accelerate_launch(tmp_path, registry, capsys):
    job_id = submit(capsys, write_config(tmp_path, name="ddp", max_steps=2), "--num-processes", "2")
    worker = start_worker(registry.home, "--max-jobs", "1", log=tmp_path / "worker.log")
    assert worker.wait(WAIT_S) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    job = registry.jobs.get(job_id)
    assert job.state == "succeeded", job.error
    run = registry.run(registry.resolve(job.result_version).run_id)
    assert run["hardware"]["processes"] == 2 and run["job_id"] == job_id
    log = next((registry.home / "jobs" / job_id).glob("attempt-1.log")).read_text()
    assert log.count("trainable parameters:") == 2  # both processes trained
    assert job.device_count == 2
