"""`python -m trainer.jobs.run --home HOME --result FILE JOB_ID`: one attempt of a job, in the worker's child process.

It materialises the job's frozen config and its datasets (from their blobs, verified) under
`<home>/jobs/<job id>/`, then runs `trainer.train.train` -- the loop `reg train` runs -- with the job's
event writer, resuming the job's run from its newest checkpoint when an earlier attempt left one. What
happened goes to FILE as JSON (`version` or `error`) for the worker. Under `accelerate launch` every
process runs this; the first one writes events, pushes and reports. It exits when its worker is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import yaml

from registry import Registry
from registry.errors import LoradockError

logger = logging.getLogger(__name__)


def materialise(registry: Registry, job) -> Path:
    """The job's config file, its datasets beside it, under `<home>/jobs/<id>/`; returns the config's path."""
    job_dir = registry.home / "jobs" / job.id
    (job_dir / "data").mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(job.config))
    for i, (entry, ds) in enumerate(zip(config["datasets"], job.datasets)):
        dest = job_dir / "data" / f"{i}-{Path(ds['name']).name or 'dataset.jsonl'}"
        if not dest.exists():
            registry.blobs.copy_out(ds["sha256"], dest, f"dataset {ds['name']} of job {job.id}")
        entry["path"] = str(dest)
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_attempt(registry: Registry, job_id: str) -> str | None:
    """Train the job once (resuming its run if one exists); returns the version ref it pushed."""
    from ..config import load_config
    from ..train import train
    from .events import JobEvents

    job = registry.jobs.get(job_id)
    config = load_config(materialise(registry, job))
    run_id = job.id
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        registry.jobs.set_run(job.id, run_id)
    resume = (registry.runs_dir / run_id / "run.json").exists()
    result = train(config, registry, resume=resume, run_id=run_id, progress=False, callbacks=[JobEvents(registry.jobs, job.id)],
                   job_id=job.id)
    return result.version_ref


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
    args = parser.parse_args(argv)
    _exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    is_main = int(os.environ.get("RANK", "0")) == 0
    registry = Registry(args.home)
    try:
        outcome = {"version": run_attempt(registry, args.job_id)}
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
