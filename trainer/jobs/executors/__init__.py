"""Executors: where a job's worker runs when it is not a `reg worker` already polling the queue.

A job submitted with `--executor kubernetes|ray` waits in the queue, skipped by ordinary workers, while its executor
is handed one command to run: `reg worker --job ID` (`worker_argv`, the one definition of it), which claims exactly
that job and tends it as any worker does (lease, heartbeat, cancel, result). The queue stays the system of record;
an executor only starts, reports on and stops that one process. Each executor is a module here (`kubernetes.py`,
`ray.py`) implementing `Executor`, imported only when named (`executor_named`), so neither client is needed to run
jobs locally. The interface itself (`Launch`, `ExecutorStatus`, `Executor`) is in `interface.py`, re-exported here:
an executor module imports it from there, not from this package, which imports the executor modules.

`launch_job` is the one path from a queued job to its executor: it records the handle the executor returns on the
job, or, when the executor cannot be reached or refuses, ends the job `failed` with that one-line reason, so no job
is left queued that nothing will run.
"""

from __future__ import annotations

from registry.errors import InvalidInput, LoradockError, shown
from registry.jobs import Job

from .interface import Executor, ExecutorStatus, Launch

__all__ = ["EXTERNAL", "Executor", "ExecutorStatus", "Launch", "executor_named", "launch_env", "launch_job",
           "stored_executor", "worker_argv"]

EXTERNAL = ("kubernetes", "ray")  # the executors besides `local` (registry.jobs.EXECUTORS)


def worker_argv(job: Job, registry_url: str | None, home: str | None) -> list[str]:
    """`reg worker --job ID`, against the registry at `registry_url` (gRPC) or the local `home`, or both: with a
    registry URL, `home` is where the worker trains. A GPU job runs on the first GPUs the executor gave it."""
    argv = ["reg"]
    if registry_url:
        argv += ["--registry", registry_url]
    argv += ["worker", "--job", job.id]
    if home:
        argv += ["--home", str(home)]
    gpus = int(job.resources.get("gpus") or 0)
    if gpus:
        argv += ["--gpus", ",".join(str(i) for i in range(gpus))]
    return argv


def launch_env() -> dict[str, str]:
    """The worker's environment besides what its executor adds (the token, named by reference)."""
    return {"PYTHONUNBUFFERED": "1"}


def executor_named(name: str, settings: dict) -> Executor:
    """The executor `name` with `settings` (unset ones dropped: the executor's defaults apply); imports its client."""
    given = {key: value for key, value in settings.items() if value is not None}
    if name == "kubernetes":
        from .kubernetes import KubernetesExecutor, KubernetesSettings

        return KubernetesExecutor(KubernetesSettings.from_dict(given))
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(**given)
    raise InvalidInput(f"executor {shown(name)}: expected one of {', '.join(EXTERNAL)}")


def launch_job(registry, job: Job, executor: Executor, registry_url: str | None, home: str | None) -> Job:
    """Hand the queued `job` to `executor`; the job with its handle recorded. If the executor fails, the job ends
    `failed` with the reason and the error is raised again (the CLI prints it and exits with its code)."""
    launch = Launch(job, worker_argv(job, registry_url, home), launch_env())
    try:
        handle = executor.launch(launch)
    except LoradockError as exc:
        registry.jobs.fail_launch(job.id, f"{executor.name} did not start the job's worker: {exc}")
        raise
    return registry.jobs.record_launch(job.id, handle)


def stored_executor(job: Job) -> tuple[Executor, dict]:
    """The executor a job was launched with, rebuilt from what its submission recorded (`extra["launch"]`), and
    where its worker reaches the registry (`registry_url`, `home`); for a cancel or a resume."""
    launch = job.extra.get("launch") or {}
    where = {"registry_url": launch.get("registry_url"), "home": launch.get("home")}
    return executor_named(job.executor, launch.get("settings") or {}), where
