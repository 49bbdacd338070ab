"""The job queue's overheads: submit -> running, and how fast job events are written under 4 concurrent jobs.

    python load_tests/bench_jobs.py [--home DIR] [--jobs 4] [--steps 20] [--json out.json]

It starts one real `reg worker --slots JOBS` on a registry home (the default base, fetched once), submits
JOBS copies of examples/arith.yaml (fewer steps and evaluation examples), and reports from the jobs' own
events: how long `submit` took, how long each job waited from submit to `running` (the worker polls
every second, so this is mostly the poll interval), and how many events per second the running jobs
wrote. Then JOBS processes append events to one job as fast as they can: the queue's write capacity
with that many concurrent writers, and the latency of one append (a write transaction in SQLite); and
the same over the wire, as remote workers (`reg --registry URL worker`) write through the JobWorkers
service of a registry server on this machine (`--remote-only`: that part alone).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REG = str(Path(sys.executable).parent / "reg")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def run_jobs(home: Path, jobs: int, steps: int) -> dict:
    """JOBS real jobs on one worker with JOBS slots; overheads and event rates from their events."""
    from registry import Registry
    from registry.jobs import SubmitRequest
    from trainer.jobs.submit import submit

    registry = Registry(home)
    registry.fetch_default_base()
    env = {**os.environ, "LORADOCK_HOME": str(home)}
    log = open(home / "bench-worker.log", "w")
    worker = subprocess.Popen([REG, "worker", "--slots", str(jobs), "--max-jobs", str(jobs)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        while not registry.jobs.live_workers():
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see {home / 'bench-worker.log'}")
            time.sleep(0.1)
        submitted, submit_s = {}, []
        for i in range(jobs):
            request = SubmitRequest(config_path=str(ROOT / "examples" / "arith.yaml"), name="arith",
                                    overrides=[f"max_steps={steps}", "eval_steps=10", "save_steps=10",
                                               "evaluation.max_examples=8", f"push.name=bench-{i}"])
            started = time.time()
            job = submit(registry, request)
            submit_s.append(time.time() - started)
            submitted[job.id] = time.time()
        if worker.wait(3600) != 0:
            raise SystemExit(f"the worker failed; see {home / 'bench-worker.log'}")
    finally:
        if worker.poll() is None:
            worker.terminate()
    waits, rates, counts, states = [], [], [], []
    window_events, first, last = 0, None, None
    for job_id, at in submitted.items():
        job = registry.jobs.get(job_id)
        states.append(job.state)
        events = registry.jobs.events(job_id)
        running = next(e for e in events if e.data.get("state") == "running")
        waits.append(_ts(running.at) - at)
        training = [e for e in events if e.type in ("metrics", "checkpoint")]
        counts.append(len(events))
        if len(training) > 1:
            span = _ts(training[-1].at) - _ts(training[0].at)
            rates.append(len(training) / span if span > 0 else float("nan"))
        window_events += len(training)
        first = min(first or 1e300, _ts(training[0].at))
        last = max(last or 0, _ts(training[-1].at))
    return {
        "jobs": jobs, "steps": steps, "states": states,
        "submit_s": {"median": statistics.median(submit_s), "max": max(submit_s)},
        "submit_to_running_s": {"median": statistics.median(waits), "max": max(waits), "all": waits},
        "events_per_job": counts,
        "training_events_per_s_per_job": {"median": statistics.median(rates)},
        "training_events_per_s_all_jobs": window_events / (last - first) if last and first and last > first else None,
    }


def _append(home: str, job_id: str, count: int, out, url: str | None = None) -> None:
    """Append `count` events to the job: to the registry at `home`, or over the wire to the one served at `url`."""
    from registry import Registry
    from registry.remote.client import RemoteRegistry

    jobs = (RemoteRegistry(url, home=home) if url else Registry(home)).jobs
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        jobs.add_event(job_id, "info", "metrics", f"step {i}", {"step": i, "loss": 1.0 / (i + 1)})
        latencies.append(time.perf_counter() - started)
    out.put(latencies)


def write_capacity(home: Path, writers: int, per_writer: int) -> dict:
    """`writers` processes appending `per_writer` events each to one job at once: events/s and one append's latency."""
    from registry import Registry

    registry = Registry(home)
    job = registry.jobs.list(limit=1)[0]
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_append, args=(str(home), job.id, per_writer, out))
             for _ in range(writers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    latencies = [x for _ in procs for x in out.get()]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"writers": writers, "events": len(latencies), "elapsed_s": elapsed, "events_per_s": len(latencies) / elapsed,
            "append_ms": {"p50": 1000 * latencies[len(latencies) // 2], "p99": 1000 * latencies[int(len(latencies) * 0.99)]}}


def remote_write_capacity(home: Path, writers: int, per_writer: int) -> dict:
    """As `write_capacity`, but as remote workers write: each process appends over the JobWorkers service of a
    registry server on this machine (a job must be running to take events, so one is submitted and claimed)."""
    from registry import Registry
    from registry.jobs import SubmitRequest, WorkerInfo
    from server.app import create_registry_server
    from server.jobs_service import JobHooks
    from server.options import ServerOptions
    from trainer.jobs.submit import check_dataset, submit

    registry = Registry(home)
    registry.fetch_default_base()
    job = submit(registry, SubmitRequest(config_path=str(ROOT / "examples" / "arith.yaml"), name="remote-bench"))
    free = {"device": "cpu", "device_name": "cpu", "memory_bytes": 1 << 40, "gpus": []}
    registry.jobs.register_worker(WorkerInfo("bench-remote", "localhost", os.getpid(), 1, free))
    claimed = registry.jobs.claim("bench-remote", free, lease_s=3600)
    assert claimed is not None and claimed.id == job.id, "another job was queued in this home"
    server, port, _ = create_registry_server(ServerOptions(port=0), home,
                                             job_hooks=JobHooks(submit=submit, check_dataset=check_dataset))
    try:
        url = f"grpc://127.0.0.1:{port}"
        context = multiprocessing.get_context("spawn")
        out = context.Queue()
        procs = [context.Process(target=_append, args=(str(home / f"client-{i}"), job.id, per_writer, out, url))
                 for i in range(writers)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        latencies = sorted(x for _ in procs for x in out.get())
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - started
    finally:
        registry.jobs.finish(job.id, "bench-remote", "cancelled")
        server.stop(0)
    return {"writers": writers, "events": len(latencies), "elapsed_s": elapsed, "events_per_s": len(latencies) / elapsed,
            "append_ms": {"p50": 1000 * latencies[len(latencies) // 2], "p99": 1000 * latencies[int(len(latencies) * 0.99)]}}


def main(argv: list[str] | None = None) -> int:
    from load_tests import use_offline_hub

    use_offline_hub()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="Registry home (default: a new temporary one; the base is fetched into it).")
    parser.add_argument("--jobs", type=int, default=4, help="Concurrent jobs (worker slots).")
    parser.add_argument("--steps", type=int, default=20, help="Training steps per job.")
    parser.add_argument("--appends", type=int, default=500, help="Events each writer appends in the capacity test.")
    parser.add_argument("--json", type=Path, help="Write the results here as JSON.")
    parser.add_argument("--remote-only", action="store_true",
                        help="Only the write capacity over the wire (as remote workers write events), no training.")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="loradock-bench-jobs-"))
    results = {} if args.remote_only else {"queue": run_jobs(home, args.jobs, args.steps),
                                           "capacity": write_capacity(home, args.jobs, args.appends)}
    results["remote_capacity"] = remote_write_capacity(home, args.jobs, args.appends)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
