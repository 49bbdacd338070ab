"""`JobQueue`: fine-tuning jobs in the registry database, claimed by workers under leases.

Every change is one write transaction (`BEGIN IMMEDIATE`), so two workers racing for the queue are
serialised by SQLite: a claim moves exactly one `queued` job to `running` under the claiming worker's
id and a lease. A worker renews its lease while the job runs; a lease that lapses (the worker was
killed, its machine is gone) puts the job back in the queue with its attempt counted, and the next
worker resumes it from its newest checkpoint, until `max_attempts` is spent. Every state change,
logged metric and checkpoint is an event: an append-only, numbered list per job.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

from .. import db as dbmod
from ..errors import BlobsMissing, Conflict, InvalidInput, NotFound, PermissionDenied, shown
from ..home import current_actor
from ..manifests import check_file_list
from ..records import FileRecord
from .records import EVENT_LEVELS, EVENT_TYPES, EXECUTORS, TERMINAL, Checkpoint, Job, JobEvent, JobSpec, UploadedFile, WorkerInfo

DEFAULT_LEASE_S = 30.0
MAX_EVENTS_PAGE = 1000
_NO_BOUND = 2**63 - 1  # SQLite's largest integer: `seq < _NO_BOUND` is every event, and no cursor reaches past it
MAX_PRIORITY = 1_000_000
GIB = 1 << 30


class JobNotFound(NotFound):
    pass


class FileNotFound(NotFound):
    pass


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id.startswith("ftjob-") or len(job_id) > 64 or not job_id[6:].isalnum():
        raise InvalidInput(f"job id {shown(job_id)}: expected ftjob-<letters and digits> (see `reg job ls`)")
    return job_id


def check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise InvalidInput(f"executor {shown(name)}: expected one of {', '.join(EXECUTORS)}")
    return name


def newest_page_size(limit: int) -> int:
    """How many of a job's newest events one read returns: `limit`, at most a page. Fewer than one is refused, not
    read as "none": over the wire 0 means "a page", so the remote client checks here too and never sends it."""
    if int(limit) < 1:
        raise InvalidInput(f"limit {limit}: ask for at least 1 event (one read returns at most {MAX_EVENTS_PAGE})")
    return min(int(limit), MAX_EVENTS_PAGE)


def _not_requeued(job_id: str, executor: str, why: str | None) -> str:
    """Why an external executor's job ends `failed` where a local one would go back to the queue: no `reg worker`
    claims it, and its executor ran the one worker it was given."""
    return (f"{why}; a {executor} job is not put back in the queue, where nothing would start its worker: "
            f"`reg job resume {job_id}` launches it again")


def not_claimable(job: Job) -> str | None:
    """Why a worker cannot claim `job` by its id (None: it is queued, it can)."""
    if job.state == "queued":
        return None
    now = f"running on worker {job.worker_id}" if job.state == "running" else f"{job.state}, not queued"
    return f"job {job.id} is {now}: nothing to claim (see `reg job show {job.id}`)"


def fit_problem(resources: dict, capacity: dict) -> str | None:
    """Why a job asking for `resources` cannot run on a worker with `capacity` (None: it can)."""
    gpus_needed, gpus = int(resources.get("gpus") or 0), len(capacity.get("gpus") or [])
    if gpus_needed > gpus:
        return f"it needs {gpus_needed} GPU(s) and the worker has {gpus}"
    need, have = resources.get("memory_bytes") or 0, capacity.get("memory_bytes")
    if have and need > have:
        return (f"its memory estimate is {need / GIB:.1f} GiB (reg plan) and the worker has "
                f"{have / GIB:.1f} GiB per {'GPU' if gpus else 'machine'}")
    return None


class JobQueue:
    """The jobs of a registry: `registry.jobs.submit(spec)`, `.claim(worker)`, `.events(job_id)`..."""

    def __init__(self, registry):
        self.registry = registry

    @property
    def conn(self) -> sqlite3.Connection:
        return self.registry.conn

    # --- submitting and reading ---------------------------------------------------------------

    def submit(self, spec: JobSpec, submitter: str | None = None) -> Job:
        """Store the datasets as blobs, then queue the job in one transaction (with its first events)."""
        if not -MAX_PRIORITY <= spec.priority <= MAX_PRIORITY:
            raise InvalidInput(f"priority {spec.priority}: expected an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        for ds in spec.datasets:
            if ds.path is not None:
                digest, _ = self.registry.blobs.ingest(ds.path)
                if digest != ds.sha256:
                    raise Conflict(f"dataset {ds.name} changed while it was being submitted; submit again")
        datasets = [{"name": d.name, "type": d.type, "sha256": d.sha256, "bytes": d.bytes, "lines": d.lines,
                     "split": d.split} for d in spec.datasets]
        job_id, now = new_job_id(), dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO jobs (id, adapter, state, config_json, config_hash, base_name, datasets_json, priority,"
                " resources_json, submitter, source, created_at, attempts, max_attempts, cancel_requested, step,"
                " total_steps, metrics_json, device_count, device_seconds, extra_json, executor)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0, 0, ?, '{}', 0, 0, ?, ?)",
                (job_id, spec.adapter, json.dumps(spec.config, sort_keys=True), spec.config_hash, spec.base,
                 json.dumps(datasets), spec.priority, json.dumps(spec.resources), submitter or current_actor(),
                 spec.source, now, spec.max_attempts, int(spec.resources.get("total_steps") or 0), json.dumps(spec.extra),
                 check_executor(spec.executor)),
            )
            counts = ", ".join(f"{d['name']} ({d['lines']} lines)" for d in datasets)
            self._event(conn, job_id, "info", "state", "validating files", {"state": "validating_files"})
            self._event(conn, job_id, "info", "message", f"files validated: {counts}", {"datasets": datasets})
            for warning in spec.warnings:
                self._event(conn, job_id, "warn", "message", warning, {})
            on = f", for the {spec.executor} executor" if spec.executor != "local" else ""
            self._event(conn, job_id, "info", "state", f"queued at priority {spec.priority}{on}", {"state": "queued"})
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=?", (check_job_id(job_id),)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} (see `reg job ls`)")
        return Job.from_row(row)

    def list(self, state: str | None = None, submitter: str | None = None, limit: int | None = 100) -> list[Job]:
        """Jobs, newest first; `state` may be several, comma-separated."""
        where, args = [], []
        if state:
            states = state.split(",")
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if submitter:
            where.append("submitter=?")
            args.append(submitter)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at DESC, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Job.from_row(r) for r in self.conn.execute(sql, args)]

    def page(self, after: str | None, limit: int, keep=None, batch: int = 200) -> tuple[list[Job], bool]:
        """Up to `limit` jobs newest first, from the one after job `after` (the first: None), that `keep(job)` accepts;
        and whether more follow. Read `batch` rows at a time, so a page costs the rows it passes over, never all."""
        where, args = "", []
        if after is not None:
            cursor = self.get(after)
            where, args = " WHERE created_at < ? OR (created_at = ? AND id > ?)", [cursor.created_at, cursor.created_at,
                                                                                    cursor.id]
        sql = f"SELECT * FROM jobs{where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        found: list[Job] = []
        offset = 0
        while len(found) <= limit:
            rows = self.conn.execute(sql, [*args, batch, offset]).fetchall()
            found += [job for job in map(Job.from_row, rows) if keep is None or keep(job)]
            if len(rows) < batch:
                break
            offset += batch
        return found[:limit], len(found) > limit

    def events(self, job_id: str, after: int = 0, limit: int = MAX_EVENTS_PAGE) -> list[JobEvent]:
        """The job's events numbered above `after`, oldest first (at most `limit`)."""
        self.get(job_id)
        rows = self.conn.execute("SELECT * FROM job_events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?",
                                 (job_id, int(after), min(int(limit), MAX_EVENTS_PAGE)))
        return [JobEvent.from_row(r) for r in rows]

    def newest_events(self, job_id: str, limit: int, before: int | None = None) -> list[JobEvent]:
        """The job's newest `limit` events (at most a page) numbered below `before` (None: all), oldest first.

        One query from the newest end: a page of "what happened last" (OpenAI's list, the portal's job page) reads
        only the rows it returns, however long the job's log.
        """
        self.get(job_id)
        below = _NO_BOUND if before is None else min(int(before), _NO_BOUND)
        rows = self.conn.execute("SELECT * FROM job_events WHERE job_id=? AND seq<? ORDER BY seq DESC LIMIT ?",
                                 (job_id, below, newest_page_size(limit)))
        return [JobEvent.from_row(r) for r in reversed(rows.fetchall())]

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        self.get(job_id)
        rows = self.conn.execute("SELECT * FROM job_checkpoints WHERE job_id=? ORDER BY step", (job_id,))
        return [Checkpoint(r["step"], r["path"], json.loads(r["metrics_json"] or "{}"), r["at"], Path(r["path"]).is_dir(),
                           json.loads(r["files_json"] or "[]")) for r in rows]

    # --- what submitters do ---------------------------------------------------------------------

    def cancel(self, job_id: str, actor: str | None = None) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker ends it within seconds)."""
        with dbmod.transaction(self.conn) as conn:
            job = self._locked_get(conn, job_id)
            self.check_owner(job, actor)
            if job.state in TERMINAL:
                raise Conflict(f"job {job_id} is already {job.state}: nothing to cancel")
            if job.state == "running":
                conn.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
                self._event(conn, job_id, "info", "message", f"cancellation requested by {actor or current_actor()}", {})
            else:
                self._set_state(conn, job_id, "cancelled", f"cancelled by {actor or current_actor()}")
        return self.get(job_id)

    def resume(self, job_id: str, actor: str | None = None) -> Job:
        """Queue a failed or cancelled job again; its worker continues from the newest checkpoint (a fresh attempt budget).

        A job of an external executor is refused here: queued by this, it would wait for a worker nothing starts.
        `resume_to_launch` resumes it for a caller that launches it again (`reg job resume` on the registry's host)."""
        return self._resume(job_id, actor, relaunch=False)

    def resume_to_launch(self, job_id: str, actor: str | None = None) -> Job:
        """`resume`, for any executor: the caller hands an external executor's job to its executor next."""
        return self._resume(job_id, actor, relaunch=True)

    def _resume(self, job_id: str, actor: str | None, relaunch: bool) -> Job:
        with dbmod.transaction(self.conn) as conn:
            job = self._locked_get(conn, job_id)
            self.check_owner(job, actor)
            if job.state not in ("failed", "cancelled"):
                raise Conflict(f"job {job_id} is {job.state}: only a failed or cancelled job can be resumed")
            if job.executor != "local" and not relaunch:
                raise Conflict(f"job {job_id} runs on {job.executor}: resume it with `reg job resume {job_id}` on the "
                               f"registry's host, which launches it there again")
            conn.execute("UPDATE jobs SET attempts=0, cancel_requested=0, error=NULL, finished_at=NULL, worker_id=NULL,"
                         " lease_expires=NULL WHERE id=?", (job_id,))
            newest = conn.execute("SELECT MAX(step) FROM job_checkpoints WHERE job_id=?", (job_id,)).fetchone()[0]
            where = f"from its checkpoint at step {newest}" if newest else "from the start (no checkpoint was saved)"
            self._set_state(conn, job_id, "queued", f"resumed by {actor or current_actor()}: it continues {where}")
        return self.get(job_id)

    def push_checkpoint(self, job_id: str, step: int, alias: str | None = None):
        """Push the adapter saved at checkpoint `step` as a new version of the job's adapter; returns the PushResult."""
        job = self.get(job_id)
        found = [c for c in self.checkpoints(job_id) if c.step == step]
        if not found:
            steps = ", ".join(str(c.step) for c in self.checkpoints(job_id)) or "none yet"
            raise NotFound(f"job {job_id} has no checkpoint at step {step} (its checkpoints: {steps})")
        message = f"checkpoint at step {step} of job {job_id}"
        adapter_files = ("adapter_config.json", "adapter_model.safetensors")  # not the optimizer's pickles
        stored = [FileRecord(f["path"], f["size"], f["sha256"]) for f in found[0].files if f["path"] in adapter_files]
        if not found[0].present and len(stored) == len(adapter_files):  # a remote worker's, stored here as blobs
            return self.registry.push_stored(stored, job.adapter, base=job.base, alias=alias, allow_duplicate=True,
                                             message=message)
        if not found[0].present:
            raise NotFound(f"checkpoint {step} of job {job_id} was removed by the trainer (save_total_limit); "
                           f"push a newer one (see `reg job checkpoints {job_id}`)")
        source, staging = Path(found[0].path), self.registry.home / "tmp" / f"checkpoint-{job_id}-{step}-{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            for name in adapter_files:
                shutil.copyfile(source / name, staging / name)
            return self.registry.push(staging, job.adapter, base=job.base, alias=alias, allow_duplicate=True,
                                      message=message)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- what workers do --------------------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        with dbmod.transaction(self.conn) as conn:
            conn.execute("INSERT OR REPLACE INTO workers (id, host, pid, slots, resources_json, labels_json, started_at,"
                         " seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (worker.id, worker.host, worker.pid, worker.slots, json.dumps(worker.resources),
                          json.dumps(worker.labels), worker.started_at or dbmod.utcnow(), time.time()))

    def unregister_worker(self, worker_id: str) -> None:
        with dbmod.transaction(self.conn) as conn:
            conn.execute("DELETE FROM workers WHERE id=?", (worker_id,))

    def live_workers(self, max_age_s: float = 3 * DEFAULT_LEASE_S) -> list[WorkerInfo]:
        rows = self.conn.execute("SELECT * FROM workers WHERE seen_at>? ORDER BY id", (time.time() - max_age_s,))
        return [WorkerInfo.from_row(r) for r in rows]

    def claim(self, worker_id: str, free: dict, lease_s: float = DEFAULT_LEASE_S,
              max_running_per_submitter: int | None = None, job_id: str | None = None) -> Job | None:
        """The highest-priority queued job (oldest first within a priority) that fits `free`, now running under a lease.

        `free` is what the worker has free now (`gpus`, `memory_bytes`). Expired leases are returned to the queue
        first. A queued job that fits no live worker gets one warning event saying why. Only `local` jobs are claimed
        so: one for an external executor waits for the worker that executor started, which claims it by `job_id`
        (`reg worker --job ID`; then the job or a one-line error, never None).
        """
        now = time.time()
        with dbmod.transaction(self.conn) as conn:
            conn.execute("UPDATE workers SET seen_at=? WHERE id=?", (now, worker_id))
            self._requeue_expired(conn, now)
            if job_id is not None:
                return self._claim_named(conn, job_id, worker_id, free, lease_s, now)
            capacities = [json.loads(r[0] or "{}") for r in
                          conn.execute("SELECT resources_json FROM workers WHERE seen_at>?", (now - 3 * lease_s,))]
            running = {r[0]: r[1] for r in conn.execute("SELECT submitter, COUNT(*) FROM jobs WHERE state='running'"
                                                         " GROUP BY submitter")}
            for row in conn.execute("SELECT * FROM jobs WHERE state='queued' AND executor='local'"
                                    " ORDER BY priority DESC, created_at, id"):
                job = Job.from_row(row)
                if max_running_per_submitter and running.get(job.submitter, 0) >= max_running_per_submitter:
                    continue
                if fit_problem(job.resources, free) is None:
                    return self._start(conn, job, worker_id, free, lease_s, now)
                self._warn_if_unschedulable(conn, job, capacities)
        return None

    def _claim_named(self, conn, job_id: str, worker_id: str, free: dict, lease_s: float, now: float) -> Job:
        """Claim the queued job `job_id` (whatever its executor, so a local job can be run by id too)."""
        job = self._locked_get(conn, job_id)
        if job.state != "queued":
            raise Conflict(not_claimable(job))
        problem = fit_problem(job.resources, free)
        if problem:
            raise Conflict(f"job {job_id} cannot run on worker {worker_id}: {problem}")
        return self._start(conn, job, worker_id, free, lease_s, now)

    def record_launch(self, job_id: str, handle: str) -> Job:
        """The external executor took the job: keep its handle (what `reg job show` prints, what a cancel stops)."""
        with dbmod.transaction(self.conn) as conn:
            job = self._locked_get(conn, job_id)
            conn.execute("UPDATE jobs SET executor_handle=? WHERE id=?", (handle, job_id))
            self._event(conn, job_id, "info", "message", f"launched on {job.executor}: {handle}",
                        {"executor": job.executor, "handle": handle})
        return self.get(job_id)

    def fail_launch(self, job_id: str, error: str) -> Job:
        """The external executor refused the job or could not be reached: the queued job ends `failed` with why,
        rather than waiting for a worker nothing will start. A job some worker claimed meanwhile is left alone."""
        with dbmod.transaction(self.conn) as conn:
            job = self._locked_get(conn, job_id)
            if job.state == "queued":
                conn.execute("UPDATE jobs SET error=? WHERE id=?", (error, job_id))
                self._set_state(conn, job_id, "failed", f"failed: {error}", level="error", data={"error": error})
        return self.get(job_id)

    def renew(self, job_id: str, worker_id: str, lease_s: float = DEFAULT_LEASE_S, device_seconds: float | None = None,
              cost: dict | None = None) -> str:
        """Extend the lease; returns `running`, `cancel` (the submitter asked to stop) or `lost` (no longer ours)."""
        now = time.time()
        with dbmod.transaction(self.conn) as conn:
            conn.execute("UPDATE workers SET seen_at=? WHERE id=?", (now, worker_id))
            row = conn.execute("SELECT state, worker_id, cancel_requested, extra_json FROM jobs WHERE id=?",
                               (job_id,)).fetchone()
            if row is None or row["state"] != "running" or row["worker_id"] != worker_id:
                return "lost"
            conn.execute("UPDATE jobs SET lease_expires=? WHERE id=?", (now + lease_s, job_id))
            if device_seconds is not None:
                self._account(conn, job_id, row["extra_json"], device_seconds, cost)
            return "cancel" if row["cancel_requested"] else "running"

    def to_stop(self, job_ids: list[str], worker_id: str) -> dict[str, str]:
        """Of the jobs a worker runs, those it must stop now: job id -> `cancel` or `lost` (a read, no write)."""
        if not job_ids:
            return {}
        rows = self.conn.execute(f"SELECT id, state, worker_id, cancel_requested FROM jobs WHERE id IN "
                                 f"({','.join('?' * len(job_ids))})", job_ids).fetchall()
        found = {r["id"]: r for r in rows}
        stop = {}
        for job_id in job_ids:
            row = found.get(job_id)
            if row is None or row["state"] != "running" or row["worker_id"] != worker_id:
                stop[job_id] = "lost"
            elif row["cancel_requested"]:
                stop[job_id] = "cancel"
        return stop

    def finish(self, job_id: str, worker_id: str, state: str, result_version: str | None = None, error: str | None = None,
               device_seconds: float | None = None, cost: dict | None = None) -> bool:
        """End a running job held by `worker_id` as succeeded, failed or cancelled (or back to queued); False if not ours."""
        if state not in (*TERMINAL, "queued"):
            raise InvalidInput(f"state {state!r}: a worker ends a job as succeeded, failed, cancelled or queued")
        with dbmod.transaction(self.conn) as conn:
            row = conn.execute("SELECT state, worker_id, extra_json, executor FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != "running" or row["worker_id"] != worker_id:
                return False
            if device_seconds is not None:
                self._account(conn, job_id, row["extra_json"], device_seconds, cost)
            if state == "queued" and row["executor"] != "local":
                state, error = "failed", _not_requeued(job_id, row["executor"], error)
            conn.execute("UPDATE jobs SET result_version=?, error=?, lease_expires=NULL WHERE id=?",
                         (result_version, error, job_id))
            message = {"succeeded": f"succeeded: {result_version}", "failed": f"failed: {error}",
                       "cancelled": "cancelled", "queued": f"returned to the queue: {error}"}[state]
            self._set_state(conn, job_id, state, message, level="error" if state == "failed" else "info",
                            data={"result_version": result_version, "error": error})
        return True

    def progress(self, job_id: str, step: int, total_steps: int, metrics: dict) -> None:
        """A metrics event, and the job's step, total and latest metrics (what `reg job show` prints)."""
        with dbmod.transaction(self.conn) as conn:
            row = conn.execute("SELECT metrics_json, extra_json FROM jobs WHERE id=?", (job_id,)).fetchone()
            latest = {**json.loads(row["metrics_json"] or "{}"), **metrics}
            extra = json.loads(row["extra_json"] or "{}")
            if "attempt_first_step" not in extra or extra.get("attempt_first_step") is None:
                extra["attempt_first_step"] = step
            conn.execute("UPDATE jobs SET step=?, total_steps=?, metrics_json=?, extra_json=? WHERE id=?",
                         (step, total_steps, json.dumps(latest), json.dumps(extra), job_id))
            shown_metrics = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            self._event(conn, job_id, "info", "metrics", f"step {step}/{total_steps}: {shown_metrics}",
                        {"step": step, "total_steps": total_steps, **metrics})

    def record_checkpoint(self, job_id: str, step: int, path: str, metrics: dict, files: list[dict] | None = None) -> None:
        """A checkpoint saved at `path`; `files` (path, size, sha256), when its files are stored as blobs here too.

        Stored files are kept for the newest `save_total_limit` checkpoints of the job, as the trainer keeps their
        directories; older ones lose theirs (their blobs go at the next `reg gc`)."""
        if files:
            check_file_list([FileRecord(f["path"], f["size"], f["sha256"]) for f in files], InvalidInput,
                            f"checkpoint {step} of job {job_id}")
            missing = [f["path"] for f in files if not self.registry.blobs.has(f["sha256"])]
            if missing:
                raise BlobsMissing(f"checkpoint {step} of job {job_id}: {', '.join(missing)} not uploaded")
        with dbmod.transaction(self.conn) as conn:
            conn.execute("INSERT OR REPLACE INTO job_checkpoints (job_id, step, path, metrics_json, at, files_json)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (job_id, step, path, json.dumps(metrics), dbmod.utcnow(),
                                                        json.dumps(files) if files else None))
            if files:
                config = json.loads(conn.execute("SELECT config_json FROM jobs WHERE id=?", (job_id,)).fetchone()[0])
                keep = max(1, int(config.get("save_total_limit") or 2))
                conn.execute("UPDATE job_checkpoints SET files_json=NULL WHERE job_id=? AND files_json IS NOT NULL AND step"
                             " NOT IN (SELECT step FROM job_checkpoints WHERE job_id=? AND files_json IS NOT NULL"
                             " ORDER BY step DESC LIMIT ?)", (job_id, job_id, keep))
            self._event(conn, job_id, "info", "checkpoint", f"checkpoint at step {step}", {"step": step, **metrics})

    def add_event(self, job_id: str, level: str, type: str, message: str, data: dict | None = None) -> int:
        if level not in EVENT_LEVELS or type not in EVENT_TYPES:
            raise InvalidInput(f"event level {level!r} / type {type!r}: use {EVENT_LEVELS} / {EVENT_TYPES}")
        with dbmod.transaction(self.conn) as conn:
            return self._event(conn, job_id, level, type, message, data or {})

    def set_run(self, job_id: str, run_id: str) -> None:
        with dbmod.transaction(self.conn) as conn:
            conn.execute("UPDATE jobs SET run_id=? WHERE id=?", (run_id, job_id))

    # --- uploaded files ---------------------------------------------------------------------------

    def add_file(self, path: Path, filename: str, purpose: str, lines: int, owner: str | None = None) -> UploadedFile:
        """Store a checked upload as a blob and record it (OpenAI's `POST /v1/files`)."""
        digest, size = self.registry.blobs.ingest(Path(path))
        record = UploadedFile(new_file_id(), filename, purpose, size, digest, lines, owner or current_actor(), dbmod.utcnow())
        with dbmod.transaction(self.conn) as conn:
            conn.execute("INSERT INTO uploaded_files (id, filename, purpose, bytes, sha256, lines, owner, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(record.__dict__.values()))
        return record

    def get_file(self, file_id: str) -> UploadedFile:
        row = self.conn.execute("SELECT * FROM uploaded_files WHERE id=?", (str(file_id),)).fetchone()
        if row is None:
            raise FileNotFound(f"no file {shown(file_id)} (see GET /v1/files)")
        return UploadedFile(**dict(row))

    def list_files(self, purpose: str | None = None, limit: int = 1000) -> list[UploadedFile]:
        sql, args = "SELECT * FROM uploaded_files", []
        if purpose:
            sql, args = sql + " WHERE purpose=?", [purpose]
        rows = self.conn.execute(sql + f" ORDER BY created_at DESC LIMIT {int(limit)}", args)
        return [UploadedFile(**dict(r)) for r in rows]

    # --- internals --------------------------------------------------------------------------------

    def _locked_get(self, conn, job_id: str) -> Job:
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (check_job_id(job_id),)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r} (see `reg job ls`)")
        return Job.from_row(row)

    @staticmethod
    def check_owner(job: Job, actor: str | None) -> None:
        # `actor` is None for a local caller (the registry's owner) or an admin; a remote `train` caller passes its name.
        if actor is not None and job.submitter != actor:
            raise PermissionDenied(f"job {job.id} was submitted by {job.submitter!r}, not {actor!r}: only its submitter "
                                   f"or an admin can change it")

    def _event(self, conn, job_id: str, level: str, type: str, message: str, data: dict) -> int:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id=?", (job_id,)).fetchone()[0]
        conn.execute("INSERT INTO job_events (job_id, seq, at, level, type, message, data_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (job_id, seq, dbmod.utcnow(), level, type, message, json.dumps(data, default=str)))
        return seq

    def _set_state(self, conn, job_id: str, state: str, message: str, level: str = "info", data: dict | None = None) -> None:
        finished = dbmod.utcnow() if state in TERMINAL else None
        conn.execute("UPDATE jobs SET state=?, finished_at=? WHERE id=?", (state, finished, job_id))
        if state != "running":
            conn.execute("UPDATE jobs SET worker_id=NULL WHERE id=? AND state!='running'", (job_id,))
        self._event(conn, job_id, level, "state", message, {"state": state, **(data or {})})

    def _start(self, conn, job: Job, worker_id: str, free: dict, lease_s: float, now: float) -> Job:
        extra = {**job.extra, "attempt_started_at": dbmod.utcnow(), "attempt_first_step": None,
                 "device_seconds_before": job.device_seconds}
        extra.pop("unschedulable", None)
        devices = max(1, int(job.resources.get("gpus") or 0), int(job.resources.get("num_processes") or 0))
        conn.execute("UPDATE jobs SET state='running', worker_id=?, lease_expires=?, attempts=attempts+1,"
                     " started_at=COALESCE(started_at, ?), cancel_requested=0, extra_json=?, device=?, device_count=?"
                     " WHERE id=?", (worker_id, now + lease_s, dbmod.utcnow(), json.dumps(extra),
                                     free.get("device_name") or free.get("device") or "cpu", devices, job.id))
        resumed = f", resuming from step {job.step}" if job.step else ""
        self._event(conn, job.id, "info", "state", f"running on worker {worker_id} (attempt {job.attempts + 1} of "
                    f"{job.max_attempts}{resumed})", {"state": "running", "worker": worker_id, "attempt": job.attempts + 1})
        return self._locked_get(conn, job.id)

    def _requeue_expired(self, conn, now: float) -> None:
        for row in conn.execute("SELECT id, worker_id, attempts, max_attempts, executor FROM jobs WHERE state='running'"
                                " AND lease_expires<?", (now,)).fetchall():
            lost = f"worker {row['worker_id']} stopped renewing its lease"
            if row["executor"] != "local":
                error = _not_requeued(row["id"], row["executor"], lost)
                conn.execute("UPDATE jobs SET error=? WHERE id=?", (error, row["id"]))
                self._set_state(conn, row["id"], "failed", f"failed: {error}", level="error")
            elif row["attempts"] >= row["max_attempts"]:
                conn.execute("UPDATE jobs SET error=? WHERE id=?", (f"{lost} on attempt {row['attempts']} of "
                                                                    f"{row['max_attempts']}", row["id"]))
                self._set_state(conn, row["id"], "failed", f"failed: {lost}, and all {row['max_attempts']} attempts are "
                                f"spent", level="error")
            else:
                self._set_state(conn, row["id"], "queued", f"{lost}: back in the queue (attempt {row['attempts']} of "
                                f"{row['max_attempts']} spent); the next worker resumes it from its newest checkpoint",
                                level="warn")
            conn.execute("UPDATE jobs SET lease_expires=NULL WHERE id=?", (row["id"],))

    def _warn_if_unschedulable(self, conn, job: Job, capacities: list[dict]) -> None:
        problems = [fit_problem(job.resources, c) for c in capacities]
        if not problems or any(p is None for p in problems):
            return
        reason = f"no live worker can run this job: {problems[0]}" + (f" (and {len(problems) - 1} more workers likewise)"
                                                                        if len(problems) > 1 else "")
        if job.extra.get("unschedulable") == reason:
            return
        conn.execute("UPDATE jobs SET extra_json=? WHERE id=?", (json.dumps({**job.extra, "unschedulable": reason}), job.id))
        self._event(conn, job.id, "warn", "message", reason + "; it stays queued", {"reason": reason})

    @staticmethod
    def _account(conn, job_id: str, extra_json: str, device_seconds: float, cost: dict | None) -> None:
        """Device-seconds: those of earlier attempts plus `device_seconds` of this one; `cost` as the worker priced it."""
        extra = json.loads(extra_json or "{}")
        if cost is not None:
            extra["cost"] = cost
        total = extra.get("device_seconds_before", 0.0) + device_seconds
        conn.execute("UPDATE jobs SET device_seconds=?, extra_json=? WHERE id=?", (total, json.dumps(extra), job_id))
