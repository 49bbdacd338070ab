"""`reg job ...` and `reg worker`: fine-tuning jobs through the queue (logic in `registry/jobs/` and `trainer/jobs/`)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from registry.errors import Conflict, InvalidInput, shown
from registry.fields import help_texts
from registry.jobs.queue import not_claimable
from trainer.jobs.executors.kubernetes import FLAGS as K8S_FLAGS
from trainer.jobs.executors.kubernetes import KubernetesSettings
from trainer.jobs.executors.kubernetes import env_name as k8s_env_name

from .common import Home, Json, _registry, app
from .output import console, err_console, print_json, table

job_app = typer.Typer(
    help="Fine-tuning jobs: submit to the queue (run by `reg worker`s, or launched on Kubernetes or Ray with --executor), "
         "list, show, follow events, cancel, resume, checkpoints.",
    no_args_is_help=True,
)
app.add_typer(job_app, name="job")
JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The job (ftjob-..., see `reg job ls`).")]


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _progress(job) -> str:
    if not job.total_steps:
        return "-"
    return f"{job.step}/{job.total_steps} ({100 * job.step / job.total_steps:.0f}%)"


def _cost(job) -> str:
    cost = job.extra.get("cost") or {}
    return f"${cost['usd']:.2f}" if cost.get("usd") is not None else "-"


_K8S_HELP = help_texts(KubernetesSettings)
# Each executor's `reg job submit` parameters -> the setting each one gives (the executor's own name for it).
_EXECUTOR_PARAMS = {
    "kubernetes": {"k8s_namespace": "namespace", "k8s_image": "image", "k8s_registry_url": "registry_url",
                   "k8s_home": "home", "k8s_token_secret": "token_secret", "k8s_token_key": "token_key",
                   "kueue_queue": "kueue_queue", "node_selector": "node_selector", "toleration": "tolerations",
                   "k8s_cpu": "cpu", "k8s_ttl_s": "ttl_s"},
    "ray": {"ray_address": "address", "ray_num_cpus": "num_cpus"},
}


def _k8s_option(field: str, **kwargs) -> typer.Option:
    """The `reg job submit` option of a Kubernetes setting: its flag, variable and help are the setting's own."""
    return typer.Option(K8S_FLAGS[field], envvar=k8s_env_name(field), show_default=False,
                        help=f"kubernetes: {_K8S_HELP[field]}", **kwargs)


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Training config (YAML, the keys `reg train` takes).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: key=value (dotted for sections).")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first; equal priorities run in submission order.")] = 0,
    gpus: Annotated[int, typer.Option(help="GPUs the job needs (0: any worker, CPU or GPU).")] = 0,
    num_processes: Annotated[int, typer.Option(help="Training processes (`accelerate launch --num_processes`).")] = 1,
    max_attempts: Annotated[int, typer.Option(help="Attempts before a job whose worker keeps vanishing fails.")] = 3,
    executor: Annotated[str, typer.Option(
        help="Where the job runs: local (any `reg worker` claims it), kubernetes (a batch/v1 Job) or ray (a Ray job); "
             "an external executor runs `reg worker --job ID` for it, and no other worker claims it.")] = "local",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the job and print what its executor would be given (the Job's YAML for kubernetes); "
                          "queue and create nothing.")] = False,
    k8s_namespace: Annotated[Optional[str], _k8s_option("namespace")] = None,
    k8s_image: Annotated[Optional[str], _k8s_option("image")] = None,
    k8s_registry_url: Annotated[Optional[str], _k8s_option("registry_url")] = None,
    k8s_home: Annotated[Optional[str], _k8s_option("home")] = None,
    k8s_token_secret: Annotated[Optional[str], _k8s_option("token_secret")] = None,
    k8s_token_key: Annotated[Optional[str], _k8s_option("token_key")] = None,
    kueue_queue: Annotated[Optional[str], _k8s_option("kueue_queue")] = None,
    node_selector: Annotated[Optional[list[str]], _k8s_option("node_selector")] = None,
    toleration: Annotated[Optional[list[str]], _k8s_option("tolerations")] = None,
    k8s_cpu: Annotated[Optional[str], _k8s_option("cpu")] = None,
    k8s_ttl_s: Annotated[Optional[int], _k8s_option("ttl_s")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        envvar="RAY_ADDRESS", show_default=False,
        help="ray: the cluster's dashboard address, http://HOST:8265 (default: $RAY_ADDRESS).")] = None,
    ray_num_cpus: Annotated[Optional[float], typer.Option(
        show_default=False, help="ray: CPUs the job's entrypoint reserves on the cluster.")] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Check a training config and its datasets, freeze them, and queue the job; prints its id (ftjob-...).

    With --executor kubernetes or ray the job is then handed to that executor (the handle it returns is shown by
    `reg job show`); if it cannot be reached or refuses, the job ends failed with the reason."""
    from registry.jobs import SubmitRequest
    from trainer.jobs.submit import preview, submit

    settings = _executor_settings(ctx, executor)
    request = SubmitRequest(config_path=str(config_path), name=config_path.stem.lower().replace(" ", "-"),
                            overrides=set_ or [], priority=priority, gpus=gpus, num_processes=num_processes,
                            max_attempts=max_attempts, source="cli", executor=executor)
    registry = _registry(home)
    if executor == "local":
        if dry_run:
            raise InvalidInput("--dry-run prints what an external executor is given: add --executor kubernetes or ray")
        job = submit(registry, request)
    else:
        from trainer.jobs.executors import executor_named, launch_job

        chosen = executor_named(executor, settings)  # refuses a bad setting before anything is queued
        where = _worker_location(executor, chosen, registry)
        request.extra = {"launch": {"settings": settings, **where}}
        if dry_run:
            from trainer.jobs.executors import Launch, launch_env, worker_argv

            job = preview(registry, request)
            text = chosen.render(Launch(job, worker_argv(job, **where), launch_env()))
            print(text, end="" if text.endswith("\n") else "\n")  # as rendered (YAML, JSON): not through rich
            return
        job = launch_job(registry, submit(registry, request), chosen, **where)
    if json_out:
        print_json(job.as_dict())
        return
    console.print(job.id)


def _executor_settings(ctx: typer.Context, executor: str) -> dict:
    """The settings given for `executor` (flags or variables; unset ones left to its defaults). A flag of another
    executor on the command line is refused, not ignored; its variable, set for the whole environment, is ignored."""
    from registry.jobs import EXECUTORS

    if executor not in EXECUTORS:
        raise InvalidInput(f"--executor {shown(executor)}: expected one of {', '.join(EXECUTORS)}")
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for name, params in _EXECUTOR_PARAMS.items():
        stray = [flags[p] for p in params if name != executor and _on_command_line(ctx, p)]
        if stray:
            raise InvalidInput(f"{', '.join(stray)}: options of the {name} executor, but the job's executor is {executor} "
                               f"(add --executor {name})")
    given = {setting: ctx.params[param] for param, setting in _EXECUTOR_PARAMS.get(executor, {}).items()}
    return {setting: value for setting, value in given.items() if value not in (None, [], ())}


def _on_command_line(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)  # an enum of typer's own vendored click: compared by name
    return source is not None and source.name == "COMMANDLINE"


def _worker_location(executor: str, chosen, registry) -> dict:
    """Where the executor's worker reaches the registry: a pod, over gRPC at its settings' URL, training in its own
    home; a Ray job, in this registry's home (the Ray node shares this machine's disk)."""
    if executor == "kubernetes":
        return {"registry_url": chosen.settings.registry_url, "home": chosen.settings.home}
    return {"registry_url": None, "home": str(registry.home)}


@job_app.command("ls")
def job_ls(
    state: Annotated[Optional[str], typer.Option(help="Only jobs in these states (comma-separated: queued,running,...).")] = None,
    submitter: Annotated[Optional[str], typer.Option(help="Only jobs this user or token submitted.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """List jobs, newest first: id, adapter, state, progress, priority, who, age, device-hours and cost."""
    jobs = _registry(home).jobs.list(state=state, submitter=submitter, limit=limit)
    if json_out:
        print_json([j.as_dict() for j in jobs])
        return
    if not jobs:
        console.print("no jobs: `reg job submit CONFIG.yaml` queues one, `reg worker` runs them")
        return
    t = table("JOB", "ADAPTER", "STATE", "PROGRESS", "PRIORITY", "WHO", "AGE", "DEVICE-H", "COST")
    for j in jobs:
        t.add_row(j.id, j.adapter, j.state, _progress(j), str(j.priority), j.submitter, _age(j.created_at),
                  f"{j.device_hours:.3f}", _cost(j))
    console.print(t)


@job_app.command("show")
def job_show(job_id: JobId, json_out: Json = False, home: Home = None) -> None:
    """A job: state, step/total, ETA, latest metrics, checkpoints, attempts, cost and the version it made."""
    registry = _registry(home)
    job = registry.jobs.get(job_id)
    checkpoints = registry.jobs.checkpoints(job_id)
    if json_out:
        print_json({**job.as_dict(), "checkpoints": [c.__dict__ for c in checkpoints]})
        return
    eta = f", about {job.eta_s:.0f} s left" if job.eta_s is not None else ""
    rows = [
        ("job", f"{job.id} ({job.adapter} on {job.base}, from {job.source})"),
        ("state", job.state + (" (cancellation requested)" if job.cancel_requested else "")),
        ("progress", _progress(job) + eta),
        ("priority", str(job.priority)),
        ("submitted", f"{job.created_at} by {job.submitter}"),
        ("started", job.started_at or "-"), ("finished", job.finished_at or "-"),
        ("attempts", f"{job.attempts} of {job.max_attempts}" + (f", on worker {job.worker_id}" if job.worker_id else "")),
        ("metrics", ", ".join(f"{k} {v:.4g}" for k, v in job.metrics.items()) or "-"),
        ("checkpoints", ", ".join(str(c.step) + ("" if c.present or c.files else " (removed)") for c in checkpoints)
         or "-"),
        ("device-hours", f"{job.device_hours:.4f} on {job.device or '-'}"
                         + (f" x{job.device_count}" if job.device_count > 1 else "")),
        ("cost", _cost(job)),
        ("config", job.config_hash),
        ("datasets", ", ".join(f"{d['name']} ({d['lines']} lines, {'held out, ' if d['split'] == 'test' else ''}"
                               f"sha256:{d['sha256'][:12]})" for d in job.datasets)),
        ("executor", job.executor + (f" ({job.executor_handle})" if job.executor_handle else "")),
        ("run", job.run_id or "-"),
        ("result", job.result_version or "-"),
    ]
    if job.error:
        rows.append(("error", job.error))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        console.print(f"{key:<{width}}  {value}", highlight=False, markup=False)


def _print_event(event) -> None:
    console.print(f"{event.at[:19].replace('T', ' ')}  {event.level:<5}  {event.type:<10}  {event.message}",
                  highlight=False, markup=False)


@job_app.command("events")
def job_events(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")] = False,
    after: Annotated[int, typer.Option(help="Only events numbered above this.")] = 0,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """A job's events, oldest first: state changes, metrics every logging step, checkpoints, warnings."""
    import json

    from registry.jobs import TERMINAL

    registry = _registry(home)
    jobs, collected = registry.jobs, []

    def emit(event) -> None:
        if json_out and not follow:
            collected.append(event.__dict__)
        elif json_out:
            print(json.dumps(event.__dict__), flush=True)  # one object a line while following
        else:
            _print_event(event)

    if follow and not registry.is_local:  # the server streams each new event as it lands, until the job ends
        for event in jobs.follow_events(job_id, after=after):
            emit(event)
        return
    while True:
        state = jobs.get(job_id).state  # read before the events: the last state change is itself an event
        events = jobs.events(job_id, after=after)
        for event in events:
            emit(event)
            after = event.seq
        if events:
            continue  # another page may be waiting
        if not follow or state in TERMINAL:
            break
        time.sleep(0.5)
    if json_out and not follow:
        print_json(collected)


@job_app.command("cancel")
def job_cancel(job_id: JobId, home: Home = None) -> None:
    """Cancel a job: a queued one at once, a running one within seconds (its checkpoints are kept).

    A job an external executor holds that no worker has claimed yet is also stopped there (its K8s Job deleted,
    its Ray job stopped); a running one is stopped by its own worker, as any worker's is."""
    job = _registry(home).jobs.cancel(job_id)
    console.print(f"{job.id}: {'cancelled' if job.state == 'cancelled' else 'stopping (cancellation requested)'}")
    if job.state == "cancelled" and job.executor_handle:
        from registry.errors import LoradockError
        from trainer.jobs.executors import stored_executor

        try:
            executor, _ = stored_executor(job)
            executor.stop(job.executor_handle)
        except LoradockError as exc:  # the job is cancelled all the same: a worker started later finds nothing to claim
            err_console.print(f"warning: {job.id} is cancelled, but {job.executor_handle} was not stopped on "
                              f"{job.executor}: {exc}", markup=False, highlight=False)
            return
        console.print(f"{job.id}: stopped {job.executor_handle} on {job.executor}")


@job_app.command("resume")
def job_resume(job_id: JobId, home: Home = None) -> None:
    """Queue a failed or cancelled job again; it continues from its newest checkpoint.

    A job of an external executor is launched there again, with the settings it was submitted with."""
    registry = _registry(home)
    # a remote registry refuses to resume an external executor's job: only its host launches it again
    job = registry.jobs.resume_to_launch(job_id) if registry.is_local else registry.jobs.resume(job_id)
    if job.executor != "local":
        from trainer.jobs.executors import launch_job, stored_executor

        executor, where = stored_executor(job)
        job = launch_job(registry, job, executor, **where)
    console.print(f"{job.id}: {job.state}" + (f" ({job.executor_handle} on {job.executor})" if job.executor_handle else ""))


@job_app.command("checkpoints")
def job_checkpoints(job_id: JobId, json_out: Json = False, home: Home = None) -> None:
    """A job's checkpoints: step, metrics when it was saved, and whether its directory is still there."""
    checkpoints = _registry(home).jobs.checkpoints(job_id)
    if json_out:
        print_json([c.__dict__ for c in checkpoints])
        return
    if not checkpoints:
        console.print(f"{job_id} has saved no checkpoint yet")
        return
    t = table("STEP", "SAVED", "LOSS", "EVAL LOSS", "PRESENT", "PATH")
    for c in checkpoints:
        loss, eval_loss = c.metrics.get("loss"), c.metrics.get("eval_loss")
        t.add_row(str(c.step), c.at[:19].replace("T", " "), f"{loss:.4f}" if loss is not None else "-",
                  f"{eval_loss:.4f}" if eval_loss is not None else "-", _where(c), c.path)
    console.print(t)


def _where(checkpoint) -> str:
    """Where a checkpoint's files are: on the registry's host, stored in the registry (a remote worker's), or gone."""
    return "yes" if checkpoint.present else "stored" if checkpoint.files else "removed"


@job_app.command("push-checkpoint")
def job_push_checkpoint(
    job_id: JobId,
    step: Annotated[int, typer.Argument(help="The checkpoint's step (see `reg job checkpoints`).")],
    alias: Annotated[Optional[str], typer.Option(help="Point this alias at the new version.")] = None,
    home: Home = None,
) -> None:
    """Make a job's intermediate checkpoint a version of its adapter (to serve or compare it)."""
    result = _registry(home).jobs.push_checkpoint(job_id, step, alias=alias)
    console.print(str(result.version.ref) if hasattr(result.version, "ref") else str(result.version))


def _labels(items: list[str]) -> dict:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--labels {shown(item)}: expected key=value")
        labels[key.strip()] = value.strip()
    return labels


def _gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput(f"--gpus {shown(text)}: expected GPU indices, e.g. 0,1") from None
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise InvalidInput(f"--gpus {shown(text)}: expected distinct GPU indices >= 0, e.g. 0,1")
    return gpus


@app.command()
def worker(
    slots: Annotated[int, typer.Option(help="Jobs this worker runs at once.")] = 1,
    gpus: Annotated[Optional[str], typer.Option(help="GPUs to run jobs on, e.g. 0,1 (default: --cpu).")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run jobs on the CPU (the default without --gpus).")] = False,
    memory_gb: Annotated[Optional[float], typer.Option(help="Memory per device offered to jobs (default: what it has).")] = None,
    labels: Annotated[Optional[list[str]], typer.Option("--labels", help="key=value describing this worker (repeatable).")] = None,
    device_name: Annotated[Optional[str], typer.Option(
        help="The device's name in the GPU price table, for job costs (default: the name the driver reports, or cpu).")] = None,
    lease_s: Annotated[float, typer.Option(help="Seconds a claimed job stays ours without a heartbeat.")] = 30.0,
    max_running_per_submitter: Annotated[Optional[int], typer.Option(
        help="Claim no job of a submitter who already has this many running (all workers).")] = None,
    max_jobs: Annotated[Optional[int], typer.Option(help="Exit after this many jobs ended.")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Exit once the queue holds nothing this worker can run.")] = False,
    job: Annotated[Optional[str], typer.Option(
        "--job", metavar="JOB_ID", show_default=False,
        help="Run exactly this queued job (whatever its executor: what a Kubernetes or Ray executor starts), then exit: "
             "0 if it succeeded, else the exit code of its end.")] = None,
    home: Home = None,
) -> None:
    """Run queued fine-tuning jobs on this machine: claim by priority, heartbeat, stream events, stop on cancel.

    With --registry URL (and a token with the `worker`, `read` and `push` roles) it runs that registry's jobs from
    another machine: it trains in --home, whose registry must hold the jobs' bases, and pushes the versions there."""
    from registry import Registry
    from trainer.jobs.worker import JobNotSucceeded, Worker, WorkerOptions

    from .common import _REMOTE, _registry

    if gpus and cpu:
        raise InvalidInput("give --gpus LIST or --cpu, not both")
    for name, value, low in (("--slots", slots, 1), ("--lease-s", lease_s, 1), ("--max-jobs", max_jobs or 1, 1),
                             ("--max-running-per-submitter", max_running_per_submitter or 1, 1)):
        if value < low:
            raise InvalidInput(f"{name} {value}: expected at least {low}")
    if memory_gb is not None and memory_gb <= 0:
        raise InvalidInput(f"--memory-gb {memory_gb}: expected a positive number")
    remote = _registry(home) if _REMOTE.get("url") else None
    if job is not None:  # refused before this worker registers; the claim checks again, atomically
        problem = not_claimable((remote or Registry(home)).jobs.get(job))
        if problem:
            raise Conflict(problem)
    options = WorkerOptions(slots=slots, gpus=_gpu_list(gpus) if gpus else None, memory_gb=memory_gb,
                            labels=_labels(labels or []), lease_s=lease_s, max_running_per_submitter=max_running_per_submitter,
                            max_jobs=max_jobs, exit_when_idle=exit_when_idle, device_name=device_name, job_id=job)
    ended = Worker(Registry(home), options, remote=remote).run()
    if job is None:
        console.print(f"worker stopped after {ended} job(s)")
        return
    ran = (remote or Registry(home)).jobs.get(job)
    if ran.state != "succeeded":
        raise JobNotSucceeded(f"job {job} ended {ran.state}" + (f": {ran.error}" if ran.error else ""))
    console.print(f"{job}: succeeded, {ran.result_version}")
