"""`reg worker`: claims queued fine-tuning jobs that fit this machine and runs each in a child process.

A worker registers what it has (CPU or a list of GPUs, memory per device, slots, labels), then loops:
it renews the lease of every job it runs (every third of the lease), stops a job whose submitter cancelled
it (noticed within a poll; SIGTERM, then SIGKILL after a grace period; its checkpoints stay), notices children that
ended and records how (the version they pushed, or the error), and claims the next job while a slot is
free. Killed outright, it renews nothing: the leases lapse and other workers resume its jobs from their
checkpoints; its children exit with it (`run.py`). Stopped with SIGTERM or Ctrl-C, it stops its children
and hands their jobs back to the queue.

Given a job id (`reg worker --job ID`, the command an external executor runs, trainer/jobs/executors/), it claims
exactly that queued job, runs it as above, and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import DeadlineExceeded, LoradockError, Unavailable
from registry.jobs import Job, WorkerInfo
from registry.jobs.queue import DEFAULT_LEASE_S, check_job_id

logger = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # SIGTERM first; SIGKILL after this (a cancel must stop a job within 10 s)
GIB = 1 << 30


class JobNotSucceeded(LoradockError):
    """`reg worker --job ID` ran its job and the job failed or was cancelled: the command fails too, so the executor
    that started it (a K8s Job, a Ray job) records a failed run."""

    exit_code, grpc_status, http_status = 1, "ABORTED", 500


@dataclass
class WorkerOptions:
    slots: int = 1
    gpus: list[int] | None = None  # None: run on the CPU
    memory_gb: float | None = None  # per device; default: what the machine (or each GPU) has
    labels: dict = field(default_factory=dict)
    device_name: str | None = None  # the name in the GPU price table (default: the driver's, or cpu)
    lease_s: float = DEFAULT_LEASE_S
    poll_s: float = 1.0
    max_running_per_submitter: int | None = None
    max_jobs: int | None = None  # exit after this many jobs ended (batch use, tests)
    exit_when_idle: bool = False  # exit once the queue holds nothing this worker can run
    job_id: str | None = None  # run exactly this queued job, then exit (what an external executor starts)

    def __post_init__(self) -> None:
        if self.job_id is not None:
            self.max_jobs = 1  # the one job, however it ends


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    started: float
    result_path: Path
    log_path: Path
    gpus: list[int]
    renewed: float = 0.0
    cancelling_since: float | None = None
    lost: bool = False


def machine_resources(gpus: list[int] | None, memory_gb: float | None) -> dict:
    """What this machine offers a job: device, device_name (the price table's name), memory_bytes per device, gpus."""
    if gpus:
        import torch

        if not torch.cuda.is_available() or max(gpus) >= torch.cuda.device_count():
            from registry.errors import InvalidInput

            raise InvalidInput(f"--gpus {','.join(map(str, gpus))}: this machine has {torch.cuda.device_count()} "
                               f"usable GPU(s); use --cpu or a GPU index below that")
        props = [torch.cuda.get_device_properties(i) for i in gpus]
        memory = min(p.total_memory for p in props)
        name = props[0].name
        device = "cuda"
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        name, device = "cpu", "cpu"
    if memory_gb is not None:
        memory = int(memory_gb * GIB)
    return {"device": device, "device_name": name, "memory_bytes": int(memory), "gpus": list(gpus or [])}


class Worker:
    """One worker process: `Worker(registry, options).run()` until stopped.

    `registry` is the local registry this machine trains in (its home holds the jobs' directories, the runs and
    the bases). `remote`, a `RemoteRegistry`, is the registry whose queue the worker serves when that is another
    machine's: the jobs are claimed, tended and ended there, and their versions pushed there with their lineage."""

    def __init__(self, registry, options: WorkerOptions, worker_id: str | None = None, remote=None):
        self.registry = registry
        self.remote = remote
        self.queue = (remote or registry).jobs
        self.options = options
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.resources = machine_resources(options.gpus, options.memory_gb)
        if options.device_name:
            self.resources["device_name"] = options.device_name
        self.running: dict[str, _Running] = {}
        self.ended = 0
        self.stopping = False
        self.unreachable_since: float | None = None
        self._prices = None  # (GPU price table, where it came from), read once

    def run(self) -> int:
        """Claim and run jobs until SIGTERM/SIGINT (or `max_jobs`, `exit_when_idle`); returns how many jobs ended here."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.queue.register_worker(WorkerInfo(self.id, socket.gethostname(), os.getpid(), self.options.slots,
                                              self.resources, self.options.labels))
        logger.info(f"worker {self.id}: {self.options.slots} slot(s) on {self.resources['device_name']} "
                    f"({self.resources['memory_bytes'] / GIB:.1f} GiB), lease {self.options.lease_s:g} s")
        try:
            while not self.stopping:
                try:
                    self._tend()
                    claimed = self._claim_if_free()
                except (Unavailable, DeadlineExceeded) as exc:  # a remote registry out of reach: its jobs keep training
                    self._unreachable(exc)
                    claimed = False
                else:
                    self.unreachable_since = None
                if self._done(claimed):
                    break
                time.sleep(0.05 if claimed else self.options.poll_s)
        finally:
            self._hand_back()
            try:
                self.queue.unregister_worker(self.id)
            except (Unavailable, DeadlineExceeded):
                pass  # the registry forgets a silent worker by itself
        return self.ended

    def _unreachable(self, exc: Exception) -> None:
        """Warn once per outage; the children go on (a lease that lapses meanwhile is found `lost` on the next renewal)."""
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            logger.warning(f"worker {self.id}: the registry is out of reach ({exc}); retrying every "
                           f"{self.options.poll_s:g} s, the running jobs go on")

    def _stop(self, signum, frame) -> None:
        logger.info(f"worker {self.id}: stopping ({signal.Signals(signum).name}); its jobs go back to the queue")
        self.stopping = True

    def _done(self, claimed: bool) -> bool:
        if self.options.max_jobs is not None and self.ended >= self.options.max_jobs and not self.running:
            return True
        return self.options.exit_when_idle and not claimed and not self.running

    # --- claiming and starting --------------------------------------------------------------------

    def _claim_if_free(self) -> bool:
        if len(self.running) >= self.options.slots:
            return False
        if self.options.max_jobs is not None and self.ended + len(self.running) >= self.options.max_jobs:
            return False
        busy = {g for r in self.running.values() for g in r.gpus}
        free = {**self.resources, "gpus": [g for g in self.resources["gpus"] if g not in busy]}
        job = self.queue.claim(self.id, free, self.options.lease_s, self.options.max_running_per_submitter,
                               job_id=self.options.job_id)
        if job is None:
            return False
        self._start(job, free["gpus"][: int(job.resources.get("gpus") or 0)])
        return True

    def _start(self, job: Job, gpus: list[int]) -> None:
        job_dir = self.registry.home / "jobs" / check_job_id(job.id)  # a remote registry's id names a directory here
        job_dir.mkdir(parents=True, exist_ok=True)
        if self.remote is not None and not self._prepare_remote(job):
            return
        result_path, log_path = job_dir / f"attempt-{job.attempts}.json", job_dir / f"attempt-{job.attempts}.log"
        result_path.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.remote.child_environment() if self.remote else {})}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        elif self.resources["device"] == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(self._command(job, result_path, env), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
        self.running[job.id] = _Running(job, proc, time.monotonic(), result_path, log_path, gpus, renewed=time.monotonic())
        self.queue.add_event(job.id, "info", "message", f"attempt {job.attempts}: training process {proc.pid}, log {log_path}",
                             {"pid": proc.pid, "log": str(log_path), "gpus": gpus})
        logger.info(f"worker {self.id}: running {job.id} ({job.adapter}, attempt {job.attempts})")

    def _prepare_remote(self, job: Job) -> bool:
        """Download a remote job's datasets (and a checkpoint to resume from) here, once, before its processes start;
        False (the job failed, saying why) if that cannot be done."""
        from .run import prepare_remote_attempt

        try:
            prepare_remote_attempt(self.registry, job, self.remote)
            return True
        except (Unavailable, DeadlineExceeded):
            raise  # the registry is out of reach: the loop retries; the lease lapses and the job is requeued
        except LoradockError as exc:
            self.queue.finish(job.id, self.id, "failed", error=f"attempt {job.attempts} on {socket.gethostname()} could "
                              f"not fetch the job's files: {exc}")
            self.ended += 1
            return False

    def _command(self, job: Job, result_path: Path, env: dict) -> list[str]:
        """The child's command: `python -m trainer.jobs.run`, under `accelerate launch` for several processes."""
        run = ["-m", "trainer.jobs.run", "--home", str(self.registry.home), "--result", str(result_path), job.id]
        if self.remote is not None:  # its token and CA travel in the environment, not on a command line
            run += ["--registry", self.remote.url]
        processes = int(job.resources.get("num_processes") or 1)
        if processes <= 1:
            return [sys.executable, *run]
        if self.resources["device"] == "cpu":
            env["ACCELERATE_USE_CPU"] = "1"
        # As README "Training" documents for `reg train`: accelerate's torch.distributed launcher, DDP over gloo on CPUs.
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), *run]

    # --- tending the running jobs -----------------------------------------------------------------

    def _tend(self) -> None:
        """Every poll: record children that ended, stop those cancelled or lost (a read), renew due leases (a write)."""
        now = time.monotonic()
        for job_id, r in list(self.running.items()):
            code = r.proc.poll()
            if code is not None:
                self._ended(r, code)  # raises while a remote registry is out of reach: recorded at a later poll
                del self.running[job_id]
                self.ended += 1
        for job_id, why in self.queue.to_stop(list(self.running), self.id).items():
            self._stop_job(self.running[job_id], why, now)
        for r in self.running.values():
            if r.cancelling_since is not None and now - r.cancelling_since > CANCEL_GRACE_S:
                r.proc.kill()
            if not r.lost and now - r.renewed >= self.options.lease_s / 3:
                seconds = self._device_seconds(r, now)
                state = self.queue.renew(r.job.id, self.id, self.options.lease_s, seconds, self._cost(seconds))
                r.renewed = now
                if state != "running":
                    self._stop_job(r, state, now)

    def _stop_job(self, r: _Running, why: str, now: float) -> None:
        if why == "cancel" and r.cancelling_since is None:
            logger.info(f"worker {self.id}: cancelling {r.job.id}")
            r.cancelling_since = now
            r.proc.terminate()
        elif why == "lost" and not r.lost:
            logger.warning(f"worker {self.id}: {r.job.id} is no longer held by this worker; stopping its training")
            r.lost = True
            r.proc.kill()

    def _ended(self, r: _Running, code: int) -> None:
        if r.lost:
            return
        outcome = _read_json(r.result_path)
        seconds = self._device_seconds(r, time.monotonic())
        finish = dict(device_seconds=seconds, cost=self._cost(seconds))
        if r.cancelling_since is not None:
            self.queue.finish(r.job.id, self.id, "cancelled", **finish)
        elif code == 0 and outcome.get("version"):
            self.queue.finish(r.job.id, self.id, "succeeded", result_version=outcome["version"], **finish)
        else:
            error = outcome.get("error") or f"the training process exited with code {code}: {_last_line(r.log_path)}"
            self.queue.finish(r.job.id, self.id, "failed", error=f"{error} (log: {r.log_path})", **finish)
        logger.info(f"worker {self.id}: {r.job.id} ended (exit code {code})")

    def _hand_back(self) -> None:
        """On a clean stop: end every child and put its job back in the queue (its checkpoints stay)."""
        for r in self.running.values():
            r.proc.terminate()
        deadline = time.monotonic() + CANCEL_GRACE_S
        for r in self.running.values():
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            seconds = self._device_seconds(r, time.monotonic())
            try:
                self.queue.finish(r.job.id, self.id, "queued", error=f"worker {self.id} stopped", device_seconds=seconds,
                                  cost=self._cost(seconds))
            except (Unavailable, DeadlineExceeded) as exc:
                logger.warning(f"worker {self.id}: could not hand {r.job.id} back ({exc}); it returns to the queue "
                               f"when its lease lapses")
        self.running.clear()

    def _device_seconds(self, r: _Running, now: float) -> float:
        devices = max(1, len(r.gpus), int(r.job.resources.get("num_processes") or 1))
        return (now - r.started) * devices

    def _cost(self, device_seconds: float) -> dict:
        from ..costs import job_cost, price_table

        if self._prices is None:
            self._prices = price_table(home=self.registry.home)
        table, source = self._prices
        return job_cost(device_seconds / 3600, self.resources["device_name"], table, price_source=str(source))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:500] if lines else "(the log is empty)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
