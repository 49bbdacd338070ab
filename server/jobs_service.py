"""The fine-tuning jobs a server takes: one transport-free service for the gRPC Jobs service and the HTTP API.

Both fronts parse and authenticate, then call `JobsService` with the caller's identity. The rules are
here once: a `train` caller submits, cancels and resumes its own jobs (the submitter is its token's
name), a `read` caller lists and reads, an `admin` changes anyone's. Checking a submission and a
dataset file is the trainer's work: `reg serve` hands it in as `JobHooks` (the server imports no
trainer), and a server built without them refuses jobs with a message saying so. Every accepted change
is appended to the audit log here, with the caller's token name, whichever front it came through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registry import Registry, audit
from registry.errors import Conflict, LoradockError
from registry.jobs import Job, SubmitRequest, UploadedFile

from .auth import Identity


class JobsUnavailable(LoradockError):
    """This server was started without the trainer's job checks, so it takes no jobs."""

    exit_code, grpc_status, http_status = 1, "UNIMPLEMENTED", 501


class JobNotRunning(Conflict):
    """A worker wrote about a job that is not running (it ended, or went back to the queue)."""


@dataclass(frozen=True)
class JobHooks:
    """What the trainer lends the server: `submit(registry, request, submitter) -> Job` (trainer/jobs/submit.py),
    `check_dataset(path, type) -> lines` (the trainer's line-by-line validation; raises naming file:line) and
    `config_fields(names)`, the config schema's help and defaults for a form, and the portal's other steps."""

    submit: Callable[[Registry, SubmitRequest, str | None], Job]
    check_dataset: Callable[[Path, str], int]
    config_fields: Callable[[list[str]], list[dict]] | None = None  # trainer.config.form_fields: the portal's form
    preview_dataset: Callable[[Path, str], dict] | None = None  # trainer.jobs.submit.preview_dataset: its upload step
    plan: Callable[[Registry, SubmitRequest], dict] | None = None  # trainer.jobs.submit.plan_submission: its estimate
    export_probes: Callable | None = None  # trainer.heldout.held_out_probes: the portal's exports check on held-out data


class JobsService:
    """Jobs and uploaded files of the registry at `home`, for callers identified by the fronts."""

    def __init__(self, home: Path, hooks: JobHooks | None):
        self.home = Path(home)
        self.hooks = hooks
        self._local = threading.local()

    @property
    def registry(self) -> Registry:
        """This thread's handle on the registry (SQLite connections stay in the thread that opened them)."""
        registry = getattr(self._local, "registry", None)
        if registry is None:
            registry = self._local.registry = Registry(self.home)
        return registry

    def config_fields(self, names: list[str]) -> list[dict]:
        """The training config keys `names` with their types, defaults and help, from the trainer's one schema."""
        hooks = self._hooks()
        if hooks.config_fields is None:
            raise JobsUnavailable("this server was started without the trainer's config schema; use `reg job submit`")
        return hooks.config_fields(names)

    def preview_dataset(self, path: Path, dataset_type: str) -> dict:
        """Counts, every bad line, duplicates and the first rows of a dataset file, as the trainer reads it."""
        hooks = self._hooks()
        if hooks.preview_dataset is None:
            raise JobsUnavailable("this server was started without the trainer's dataset preview; use `reg job submit`")
        return hooks.preview_dataset(Path(path), dataset_type)

    def plan(self, request: SubmitRequest) -> dict:
        """`reg plan`'s memory and cost estimate for the job `request` would queue (nothing is queued)."""
        hooks = self._hooks()
        if hooks.plan is None:
            raise JobsUnavailable("this server was started without the trainer's planner; use `reg plan`")
        return hooks.plan(self.registry, request)

    def _hooks(self) -> JobHooks:
        if self.hooks is None:
            raise JobsUnavailable("this server takes no fine-tuning jobs (it was started without the trainer's checks); "
                                  "submit on the registry's host with `reg job submit`")
        return self.hooks

    @staticmethod
    def submitter(caller: Identity | None) -> str | None:
        """The name a caller's jobs are recorded under: its token's name (None with auth off: the local user)."""
        return caller.token_name if caller is not None and caller.token_name else None

    @staticmethod
    def actor(caller: Identity | None) -> str | None:
        """None (may change any job) for an admin or with auth off; else the token name that must own the job."""
        if caller is None or not caller.token_name or "admin" in caller.roles:
            return None
        return caller.token_name

    def _audit(self, caller: Identity | None, claimed: str, action: str, target: str, **detail) -> None:
        """An accepted change in the audit log: the caller's token name, peer, and what the client claims to be."""
        audit.record(self.registry.conn, action, target, token=caller.token_name if caller else "", actor=claimed,
                     peer=caller.peer if caller else "", detail=detail)

    # --- jobs ---------------------------------------------------------------------------------------
    # `claimed` is the actor the client says it is (gRPC's loradock-actor metadata): recorded, never trusted.

    def submit(self, request: SubmitRequest, caller: Identity | None, claimed: str = "") -> Job:
        job = self._hooks().submit(self.registry, request, self.submitter(caller))
        self._audit(caller, claimed, "job.submit", job.id, adapter=job.adapter, config_hash=job.config_hash,
                    datasets=[d["sha256"] for d in job.datasets], source=job.source)
        return job

    def list(self, state: str | None = None, submitter: str | None = None, limit: int | None = 100) -> list[Job]:
        return self.registry.jobs.list(state=state, submitter=submitter, limit=limit)

    def page(self, after: str | None, limit: int, keep=None) -> tuple[list[Job], bool]:
        """A page of jobs newest first after job `after`, those `keep(job)` accepts; and whether more follow."""
        return self.registry.jobs.page(after, limit, keep)

    def get(self, job_id: str) -> Job:
        return self.registry.jobs.get(job_id)

    def events(self, job_id: str, after: int = 0, limit: int = 1000):
        return self.registry.jobs.events(job_id, after=after, limit=limit)

    def newest_events(self, job_id: str, limit: int, before: int | None = None):
        return self.registry.jobs.newest_events(job_id, limit, before=before)

    def checkpoints(self, job_id: str):
        return self.registry.jobs.checkpoints(job_id)

    def cancel(self, job_id: str, caller: Identity | None, claimed: str = "") -> Job:
        job = self.registry.jobs.cancel(job_id, actor=self.actor(caller))
        self._audit(caller, claimed, "job.cancel", job.id, state=job.state)
        return job

    def resume(self, job_id: str, caller: Identity | None, claimed: str = "") -> Job:
        job = self.registry.jobs.resume(job_id, actor=self.actor(caller))
        self._audit(caller, claimed, "job.resume", job.id, state=job.state)
        return job

    def push_checkpoint(self, job_id: str, step: int, alias: str | None, caller: Identity | None, claimed: str = ""):
        job = self.registry.jobs.get(job_id)
        self.registry.jobs.check_owner(job, self.actor(caller))
        result = self.registry.jobs.push_checkpoint(job_id, step, alias=alias)
        self._audit(caller, claimed, "job.push-checkpoint", result.version.ref, job=job_id, step=step,
                    created=result.created, alias=alias)
        return result

    # --- the worker side (a `worker` caller: `reg worker --registry URL` on another machine) -------------------
    # The queue holds the lease rules (claim, renew, finish check the worker holds the job); what a worker writes
    # about a job besides (events, progress, checkpoints, its run) is taken only while the job runs.

    def running(self, job_id: str) -> Job:
        """The job, if it is running; else Conflict (a worker writes only about the jobs it runs)."""
        job = self.registry.jobs.get(job_id)
        if job.state != "running":
            raise JobNotRunning(f"job {job_id} is {job.state}, not running: a worker writes only about a running job")
        return job

    # --- files (OpenAI's /v1/files) -------------------------------------------------------------------

    def add_file(self, path: Path, filename: str, purpose: str, dataset_type: str, caller: Identity | None) -> UploadedFile:
        """Check an uploaded JSONL file line by line with the trainer's parser, then store it as a blob."""
        lines = self._hooks().check_dataset(Path(path), dataset_type)
        record = self.registry.jobs.add_file(Path(path), filename, purpose, lines, owner=self.submitter(caller))
        self._audit(caller, "", "file.upload", record.id, filename=filename, sha256=record.sha256, lines=record.lines)
        return record

    def get_file(self, file_id: str) -> UploadedFile:
        return self.registry.jobs.get_file(file_id)

    def list_files(self, purpose: str | None = None) -> list[UploadedFile]:
        return self.registry.jobs.list_files(purpose)

    def file_bytes(self, file_id: str) -> bytes:
        record = self.get_file(file_id)
        return self.registry.blobs.read_bytes(record.sha256, f"uploaded file {record.id}")
