"""The Ray executor against a real local Ray cluster (`ray start --head --num-cpus 2`, tests/ray_cluster.py).

A tiny-base job handed to Ray, through the executor interface and through `reg job submit --executor ray`, runs as a
Ray job (`reg worker --job ID` is its entrypoint, its log shows the worker) and its version lands in the registry;
a stopped Ray job ends its worker and its training; a cluster that is not there, or an address that is not a
dashboard's, is one line naming it. Rendering (`--dry-run`) and the address checks need no cluster.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_reg
from ray_cluster import free_ports, start_ray_cluster, stop_ray_cluster
from registry.errors import InvalidInput, Unavailable
from registry.jobs import SubmitRequest
from test_jobs import events, wait_for, write_config
from trainer.jobs.executors import Launch, executor_named, launch_env, launch_job, worker_argv
from trainer.jobs.executors.ray import RayExecutor
from trainer.jobs.submit import submit

VENV_BIN = Path(os.path.abspath(sys.executable)).parent
REG = str(VENV_BIN / "reg")  # the worker's command, as this virtualenv has it: its shebang is this Python
logger = logging.getLogger(__name__)  # the timings (`--log-cli-level=INFO` shows them)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head with 2 CPUs for this module; every one of its processes is gone when the module ends.

    Its nodes find `reg` on their PATH, as on a cluster whose image has loradock installed."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    cluster = start_ray_cluster(num_cpus=2, env=env)
    logger.info(f"ray head: the Jobs API answered {cluster.start_s:.1f} s after `ray start`")
    yield cluster
    stop_ray_cluster(cluster)  # raises if any of its processes survived
    assert not cluster.pids()


def submit_ray_job(registry, tmp_path: Path, name: str, **overrides):
    path = write_config(tmp_path, name=name, **overrides)
    return submit(registry, SubmitRequest(config_path=str(path), name=name, executor="ray"))


def wait_for_ray(executor: RayExecutor, handle: str, states: set[str]):
    return wait_for(lambda: (s := executor.status(handle)).state in states and s, f"ray job {handle} to be {states}")


# --- no cluster needed ------------------------------------------------------------------------------


def test_render_is_the_jobs_api_submission_with_the_worker_as_entrypoint(tmp_path, registry):
    job = submit_ray_job(registry, tmp_path, "rendered")
    job.resources["gpus"] = 2
    executor = executor_named("ray", {"address": "http://10.0.0.5:8265/", "num_cpus": 4,
                                      "runtime_env": {"env_vars": {"HF_HOME": "/models"}}, "reg": REG})
    body = json.loads(executor.render(Launch(job, worker_argv(job, None, str(registry.home)), launch_env())))
    assert body["address"] == "http://10.0.0.5:8265"
    assert body["entrypoint"] == f"{REG} worker --job {job.id} --home {registry.home} --gpus 0,1"
    assert body["submission_id"].startswith(f"loradock-{job.id}-1-")
    assert body["runtime_env"] == {"env_vars": {"HF_HOME": "/models", "PYTHONUNBUFFERED": "1"}}
    assert body["metadata"] == {"loradock_job": job.id, "loradock_adapter": "rendered"}
    assert body["entrypoint_num_cpus"] == 4 and body["entrypoint_num_gpus"] == 2


def test_reg_job_submit_dry_run_prints_the_submission_and_queues_nothing(tmp_path, registry, capsys):
    code, out, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path, name="dry")), "--executor", "ray",
                             "--ray-address", "http://127.0.0.1:8265", "--dry-run")
    assert code == 0, err
    body = json.loads(out)
    assert body["entrypoint"].startswith("reg worker --job ftjob-") and body["entrypoint_num_cpus"] == 1
    assert "entrypoint_num_gpus" not in body and registry.jobs.list() == []


@pytest.mark.parametrize("address, env, needle", [
    (None, None, "RAY_ADDRESS"),
    ("127.0.0.1:6379", None, "'127.0.0.1:6379': expected the Ray dashboard's URL"),  # a GCS address, not the dashboard
    (None, "ray://head:10001", "RAY_ADDRESS 'ray://head:10001'"),
])
def test_an_address_that_is_not_a_dashboard_url_is_refused_in_one_line(monkeypatch, address, env, needle):
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(InvalidInput) as refused:
        RayExecutor(address=address)
    assert needle in str(refused.value) and "\n" not in str(refused.value)


def test_an_unreachable_cluster_fails_the_job_in_one_line_naming_the_address(tmp_path, registry, capsys):
    [port] = free_ports(1)  # nothing listens there
    address = f"http://127.0.0.1:{port}"
    code, _, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path, name="nowhere")), "--executor", "ray",
                           "--ray-address", address)
    assert code == Unavailable.exit_code and address in err and "unreachable" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    [job] = registry.jobs.list()
    assert job.state == "failed" and address in job.error  # nothing would ever start its worker
    with pytest.raises(Unavailable, match=address):
        RayExecutor(address=address).status("loradock-anything")


def test_an_address_that_answers_but_is_no_ray_dashboard_is_one_line_naming_it(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))  # 404: no api/version
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(Unavailable) as refused:
            RayExecutor(address=address).status("loradock-anything")
    finally:
        server.shutdown()
        server.server_close()
    message = str(refused.value)
    assert f"{address} is not a Ray dashboard" in message and "--ray-address" in message and "\n" not in message


# --- a real Ray cluster -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_job_launched_on_ray_runs_there_and_its_version_lands_in_the_registry(tmp_path, registry, capsys, ray_cluster):
    executor = RayExecutor(address=ray_cluster.address, reg=REG)  # argv[0] absolute: whatever the nodes' PATH says
    job = submit_ray_job(registry, tmp_path, "on-ray")
    started = time.monotonic()
    job = launch_job(registry, job, executor, registry_url=None, home=str(registry.home))
    handle = job.executor_handle
    assert handle.startswith(f"loradock-{job.id}-1-") and job.state == "queued"
    status = wait_for_ray(executor, handle, {"succeeded", "failed"})
    logger.info(f"ray job end to end (launch -> SUCCEEDED): {time.monotonic() - started:.1f} s")
    logs = executor.logs(handle)
    assert status.state == "succeeded", (status, logs[-3000:])
    assert f"{REG} worker --job {job.id}" in logs and f"{job.id}: succeeded, on-ray:1" in logs
    job = registry.jobs.get(job.id)
    assert job.state == "succeeded" and job.result_version == "on-ray:1" and job.attempts == 1, job.error
    assert any(e.data.get("handle") == handle for e in events(registry, job.id))
    code, out, _ = run_reg(capsys, "show", "on-ray:1")
    assert code == 0 and "on-ray:1" in out
    assert registry.run(registry.resolve("on-ray:1").run_id)["job_id"] == job.id


@pytest.mark.integration
def test_reg_job_submit_executor_ray_runs_the_job_on_the_cluster(tmp_path, registry, capsys, ray_cluster):
    code, out, err = run_reg(capsys, "job", "submit", str(write_config(tmp_path, name="cli-ray")), "--executor", "ray",
                             "--ray-address", ray_cluster.address)
    assert code == 0, err
    job = registry.jobs.get(out.strip())
    assert job.executor == "ray" and job.executor_handle.startswith(f"loradock-{job.id}-1-")
    executor = RayExecutor(address=ray_cluster.address)
    status = wait_for_ray(executor, job.executor_handle, {"succeeded", "failed"})  # the worker has exited by then
    job = registry.jobs.get(job.id)
    assert status.state == "succeeded", (status, executor.logs(job.executor_handle)[-3000:])
    assert job.state == "succeeded" and job.result_version == "cli-ray:1", job.error
    code, out, _ = run_reg(capsys, "job", "show", job.id)
    assert code == 0 and f"ray ({job.executor_handle})" in out and "cli-ray:1" in out


@pytest.mark.integration
def test_stopping_a_running_ray_job_ends_its_worker_and_its_training(tmp_path, registry, ray_cluster):
    executor = RayExecutor(address=ray_cluster.address, reg=REG)
    job = submit_ray_job(registry, tmp_path, "stopme", max_steps=400, save_steps=2, eval_steps=200, micro_batch_size=2)
    handle = launch_job(registry, job, executor, registry_url=None, home=str(registry.home)).executor_handle
    wait_for(lambda: registry.jobs.checkpoints(job.id), "a first checkpoint (the training runs)")
    assert executor.status(handle).state == "running"
    pid = next(e.data["pid"] for e in events(registry, job.id) if "pid" in e.data)  # the training process
    executor.stop(handle)
    status = wait_for_ray(executor, handle, {"succeeded", "failed"})
    assert status.state == "failed" and "stopped" in status.message, status
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(),
             f"training process {pid} to end")
    ended = wait_for(lambda: (j := registry.jobs.get(job.id)).state != "running" and j, "the job to leave running")
    # the worker, SIGTERMed by Ray, handed the job back; not requeued, as nothing would start another worker for it
    assert ended.state == "failed" and "stopped" in ended.error, ended.error
    assert max(c.step for c in registry.jobs.checkpoints(job.id)) < 400
    executor.stop(handle)  # a worker already gone is no error


@pytest.mark.integration
def test_a_handle_the_cluster_does_not_know_is_unknown_and_stopping_it_is_no_error(ray_cluster):
    executor = RayExecutor(address=ray_cluster.address)
    status = executor.status("loradock-ftjob-nosuch-1-abcdef")
    assert status.state == "unknown" and "not on the cluster" in status.message
    executor.stop("loradock-ftjob-nosuch-1-abcdef")
