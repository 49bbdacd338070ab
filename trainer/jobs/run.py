"""`python -m trainer.jobs.run --home HOME --result FILE [--registry URL] JOB_ID`: one attempt of a job, in the
worker's child process.

It materialises the job's frozen config and its datasets (from their blobs, verified) under
`<home>/jobs/<job id>/`, then runs `trainer.train.train` -- the loop `reg train` runs -- with the job's
event writer, resuming the job's run from its newest checkpoint when an earlier attempt left one. What
happened goes to FILE as JSON (`version` or `error`) for the worker. Under `accelerate launch` every
process runs this; the first one writes events, pushes and reports. It exits when its worker is gone.

With `--registry URL` the job is that remote registry's (a worker on another machine, token in
$LORADOCK_TOKEN): its datasets are downloaded, its events written there, and the version is pushed there
with the run's lineage; the training itself runs in HOME, whose registry must hold the job's base.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import yaml

from registry import Registry
from registry.errors import LoradockError

logger = logging.getLogger(__name__)


def materialise(registry: Registry, job, remote=None) -> Path:
    """The job's config file, its datasets beside it, under `<home>/jobs/<id>/`; returns the config's path.

    The datasets come from `registry`'s blobs, or downloaded (and verified) from `remote`, for the worker that
    holds the job there."""
    job_dir = registry.home / "jobs" / job.id
    (job_dir / "data").mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(job.config))
    for i, (entry, ds) in enumerate(zip(config["datasets"] + config.get("test_datasets", []), job.datasets)):
        dest = job_dir / "data" / f"{i}-{Path(ds['name']).name or 'dataset.jsonl'}"
        if remote is not None:  # goes on from a download an earlier attempt cut off, and verifies the whole file
            remote.jobs.fetch_job_file(job.id, job.worker_id, ds["sha256"], ds["bytes"], dest,
                                       f"dataset {ds['name']} of job {job.id}")
        elif not dest.exists():
            registry.blobs.copy_out(ds["sha256"], dest, f"dataset {ds['name']} of job {job.id}")
        entry["path"] = str(dest)
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prepare_remote_attempt(registry: Registry, job, remote) -> None:
    """Before a remote job's training process starts (in the worker, once): its datasets, and, when this machine
    has no run of the job yet, the newest checkpoint an earlier attempt stored in the registry, set out as the run
    to resume (`<home>/runs/<job id>/checkpoint-N/`)."""
    from registry.errors import InvalidInput
    from registry.paths import check_file_name

    from ..runs import write_run_json
    from .events import STORED_CURVES

    materialise(registry, job, remote)
    run_dir = registry.runs_dir / job.id
    stored = [c for c in remote.jobs.checkpoints(job.id) if c.files]
    if (run_dir / "run.json").exists() or not stored:
        return  # this machine's own checkpoints, or none to resume from
    newest = max(stored, key=lambda c: c.step)
    checkpoints = run_dir / "checkpoints"  # where trainer.fit looks (the Trainer's output_dir)
    dest, staging = checkpoints / f"checkpoint-{newest.step}", checkpoints / f".checkpoint-{newest.step}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for f in newest.files:
        name = check_file_name(f["path"], InvalidInput, f"checkpoint {newest.step} of job {job.id}")
        remote.jobs.fetch_job_file(job.id, job.worker_id, f["sha256"], f["size"], staging / name,
                                   f"checkpoint {newest.step} of job {job.id}: {name}")
    if (staging / STORED_CURVES).is_file():
        (staging / STORED_CURVES).rename(run_dir / "curves.json")
    staging.rename(dest)
    write_run_json(run_dir, run_id=job.id, status="interrupted", resumed_from_registry=newest.step)
    remote.jobs.add_event(job.id, "info", "message", f"attempt {job.attempts} resumes from checkpoint {newest.step}, "
                          f"downloaded from the registry to {socket.gethostname()}", {"step": newest.step})


def run_attempt(registry: Registry, job_id: str, remote=None) -> str | None:
    """Train the job once (resuming its run if one exists); returns the version ref it pushed.

    `remote`: the `RemoteRegistry` whose job it is (a worker on another machine); else `registry`'s own."""
    from ..config import load_config
    from ..train import train
    from .events import JobEvents

    queue = (remote or registry).jobs
    job = queue.get(job_id)
    if remote is not None:
        _check_base_here(registry, job)
    config = load_config(materialise(registry, job, remote))
    run_id = job.id
    is_main = int(os.environ.get("RANK", "0")) == 0
    resume = (registry.runs_dir / run_id / "run.json").exists()
    if is_main:
        queue.set_run(job.id, run_id)
        if not resume and queue.checkpoints(job.id):
            queue.add_event(job.id, "warn", "message", f"no checkpoint of an earlier attempt is on this machine "
                            f"({socket.gethostname()}) or stored in the registry: this attempt trains from step 0")
    events = JobEvents(queue, job.id, store_checkpoints=remote is not None)
    result = train(config, registry, resume=resume, run_id=run_id, progress=False, callbacks=[events], job_id=job.id,
                   publish=remote)
    return result.version_ref


def _check_base_here(registry: Registry, job) -> None:
    """A remote job's base must be in this machine's registry too (as the same files), to train on."""
    from registry.errors import BaseNotFound

    try:
        registry.get_base(job.base)
    except BaseNotFound:
        raise BaseNotFound(f"base {job.base!r} of job {job.id} is not in this worker's registry ({registry.home}): "
                           f"add it here (`reg base fetch`, or `reg base add PATH --name {job.base}`)") from None


def _exit_with_parent() -> None:
    """Stop this process (and so its training) as soon as the worker that started it is gone, even if it was SIGKILLed."""
    parent = os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(137)

    threading.Thread(target=watch, name="exit-with-worker", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.jobs.run", description=__doc__.splitlines()[0])
    parser.add_argument("job_id")
    parser.add_argument("--home", required=True, help="The registry home the job is in.")
    parser.add_argument("--result", required=True, help="Where to write what happened (JSON).")
    parser.add_argument("--registry", help="The remote registry whose job it is (token: $LORADOCK_TOKEN).")
    args = parser.parse_args(argv)
    _exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    is_main = int(os.environ.get("RANK", "0")) == 0
    registry = Registry(args.home)
    remote = None
    try:
        if args.registry:
            from registry.remote.client import RemoteRegistry

            remote = RemoteRegistry(args.registry, token=os.environ.get("LORADOCK_TOKEN"),
                                    tls_ca=os.environ.get("LORADOCK_TLS_CA"), home=args.home)
        outcome = {"version": run_attempt(registry, args.job_id, remote)}
        code = 0
    except LoradockError as exc:
        outcome, code = {"error": " ".join(str(exc).split())}, 1
    except Exception as exc:  # noqa: BLE001 - any failure ends the attempt; its traceback goes to the job's log
        logger.exception("the training failed")
        outcome, code = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]}, 1
    if is_main:
        Path(args.result).write_text(json.dumps(outcome))
    return code


if __name__ == "__main__":
    sys.exit(main())
