"""The registry database: one SQLite file in WAL mode, changed only by numbered migrations.

Reads go through the stdlib connection so that `reg ls` stays fast; the schema is
defined with sqlite-utils (imported only when a migration has to run). Writes happen
inside `transaction()`, which takes the write lock up front (`BEGIN IMMEDIATE`) so
concurrent writers queue on the busy timeout instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import DatabaseCorrupt, InvalidInput
from .failures import from_sqlite_error

BUSY_TIMEOUT_S = 60.0


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _translated(exc: Exception, path: Path) -> Exception:
    """A storage failure as its named error (`registry/failures.py`); a too-large integer as bad input; else `exc`."""
    if isinstance(exc, OverflowError):
        return InvalidInput(f"a number in the request is too large for the registry ({exc}); integers go up to {2**63 - 1}")
    return (from_sqlite_error(exc, path) if isinstance(exc, sqlite3.Error) else None) or exc


@contextmanager
def _named_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OverflowError) as exc:
        raise _translated(exc, path) from None


class _Cursor(sqlite3.Cursor):
    """A cursor whose failures, also those met while stepping through rows, surface as named errors."""

    def execute(self, sql, parameters=()):
        with _named_errors(self.connection.path):
            return super().execute(sql, parameters)

    def executemany(self, sql, seq_of_parameters):
        with _named_errors(self.connection.path):
            return super().executemany(sql, seq_of_parameters)

    def __next__(self):
        with _named_errors(self.connection.path):
            return super().__next__()

    def fetchone(self):
        with _named_errors(self.connection.path):
            return super().fetchone()

    def fetchall(self):
        with _named_errors(self.connection.path):
            return super().fetchall()

    def fetchmany(self, size=None):
        with _named_errors(self.connection.path):
            return super().fetchmany(self.arraysize if size is None else size)


class RegistryConnection(sqlite3.Connection):
    """The registry's connection: a full disk, a read-only home or a damaged file raise named errors naming `path`."""

    path: Path = Path("registry.db")

    def cursor(self, factory=None):
        return super().cursor(factory or _Cursor)

    def execute(self, sql, parameters=()):
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql, seq_of_parameters):
        return self.cursor().executemany(sql, seq_of_parameters)


def connect(path: Path, blobs: Path | None = None) -> RegistryConnection:
    """Open (creating if needed) the registry database and bring its schema up to date.

    `blobs` is the blob store's object directory: when it holds blobs, a missing, empty or schema-less
    database is the registry's lost record of them, never a new registry, and opening it is refused.
    """
    if blobs is not None and holds_a_blob(blobs) and (not path.exists() or (path.is_file() and path.stat().st_size == 0)):
        raise DatabaseCorrupt(_lost_message(path, blobs, "is missing" if not path.exists() else "is empty (0 bytes)"))
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                               factory=RegistryConnection)
    except sqlite3.Error as exc:
        raise _translated(exc, path) from None
    conn.path = path
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        pending = _pending_migrations(conn)
        if pending and pending[0][0] == 1 and blobs is not None and holds_a_blob(blobs):
            raise DatabaseCorrupt(_lost_message(path, blobs, "holds no registry tables"))
        if pending:
            migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def holds_a_blob(objects: Path) -> bool:
    try:
        return any(any(sub.iterdir()) for sub in objects.iterdir() if sub.is_dir())
    except OSError:
        return False


def _lost_message(path: Path, blobs: Path, state: str) -> str:
    return (f"the registry database {path} {state}, but the blob store {blobs} holds blobs: the record of what they "
            f"belong to was lost; restore registry.db from a backup (nothing was changed; to really start over, move "
            f"the home aside)")


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's `PRAGMA integrity_check` finds wrong with the database (empty when it is sound)."""
    try:
        rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except DatabaseCorrupt as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _retry_locked(fn: Callable[[], object], attempts: int = 200) -> object:
    # Switching to WAL needs an exclusive lock for an instant and does not use the busy
    # handler; a few short retries cover several processes opening a new home at once.
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01 + 0.002 * attempt)
    return None


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds the write lock from its first statement."""
    _retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some failures (a full disk); a ROLLBACK then fails with "cannot rollback -
        # no transaction is active", which must not hide the failure that matters.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the original failure is re-raised below
                pass
        raise


# --- migrations ---------------------------------------------------------------------------
# Each migration is a numbered function that receives a sqlite_utils.Database. They run in
# order, each in its own transaction, and are recorded in the `migrations` table. Never edit
# one that has shipped; add the next number.


def _m001_initial(db) -> None:
    db["bases"].create(
        {
            "name": str, "source": str, "path": str, "hub_id": str, "weights_digest": str,
            "architecture": str, "config_json": str, "tensors_json": str,
            "num_parameters": int, "size_bytes": int, "created_at": str,
        },
        pk="name",
    )
    db["adapters"].create({"name": str, "next_version": int, "created_at": str}, pk="name")
    db["runs"].create(
        {
            "id": str, "adapter": str, "status": str, "config_json": str, "config_hash": str,
            "base_name": str, "base_digest": str, "datasets_json": str, "seed": int,
            "libraries_json": str, "hardware_json": str, "metrics_json": str,
            "started_at": str, "finished_at": str, "duration_s": float, "run_dir": str,
        },
        pk="id",
    )
    db["versions"].create(
        {
            "id": int, "adapter": str, "number": int, "manifest_digest": str,
            "base_name": str, "base_digest": str, "peft_type": str, "task_type": str,
            "rank": int, "alpha": float, "target_modules": str, "adapter_config": str,
            "size_bytes": int, "creator": str, "message": str, "parent": int,
            "run_id": str, "created_at": str, "deleted_at": str,
        },
        pk="id",
        not_null={"adapter", "number", "manifest_digest", "created_at"},
        foreign_keys=[("adapter", "adapters", "name"), ("run_id", "runs", "id")],
    )
    db["versions"].create_index(["adapter", "number"], unique=True)
    db["versions"].create_index(["adapter", "manifest_digest"])
    db["files"].create(
        {"version_id": int, "path": str, "size": int, "sha256": str},
        pk=("version_id", "path"),
        foreign_keys=[("version_id", "versions", "id")],
    )
    db["files"].create_index(["sha256"])
    db["aliases"].create(
        {"adapter": str, "alias": str, "version": int, "updated_at": str},
        pk=("adapter", "alias"),
        foreign_keys=[("adapter", "adapters", "name")],
    )
    db["alias_events"].create(
        {
            "id": int, "adapter": str, "alias": str, "action": str, "old_version": int,
            "new_version": int, "actor": str, "at": str,
        },
        pk="id",
    )
    db["alias_events"].create_index(["adapter", "id"])
    db["evaluations"].create(
        {
            "id": int, "version_id": int, "run_id": str, "name": str, "split": str,
            "metrics_json": str, "base_metrics_json": str, "created_at": str,
        },
        pk="id",
        foreign_keys=[("version_id", "versions", "id"), ("run_id", "runs", "id")],
    )
    db["evaluations"].create_index(["version_id"])


def _m002_evaluation_verdicts(db) -> None:
    # A version whose evaluation fails a configured threshold is still pushed, but marked.
    db["evaluations"].add_column("passed", int)
    db["evaluations"].add_column("failures_json", str)


def _m003_manifest_lookup_index(db) -> None:
    # push's duplicate check looks up (adapter, manifest) and wants the lowest number: without the
    # number in the index SQLite walks every version of the adapter on each push.
    db["versions"].create_index(["adapter", "manifest_digest", "number"], index_name="idx_versions_adapter_manifest_number")


def _m004_rollouts(db) -> None:
    # A/B rollouts. Revisions are append-only, so history and rollback are exact; a revision with no arms
    # (`clear`) ends the rollout. Outcomes and feedback are written in batches by a server, per arm.
    db["rollout_revisions"].create(
        {
            "id": int, "adapter": str, "revision": int, "arms_json": str, "sticky": int, "guard_json": str,
            "action": str, "restores": int, "reason": str, "actor": str, "at": str,
        },
        pk="id",
        not_null={"adapter", "revision", "arms_json", "action", "at"},
        foreign_keys=[("adapter", "adapters", "name")],
    )
    db["rollout_revisions"].create_index(["adapter", "revision"], unique=True)
    db["rollout_events"].create(
        {
            "id": int, "adapter": str, "revision": int, "version": int, "arm": str, "request_id": str,
            "key_hash": str, "status": str, "latency_ms": float, "ttft_ms": float, "prompt_tokens": int,
            "completion_tokens": int, "at": str,
        },
        pk="id",
    )
    db["rollout_events"].create_index(["adapter", "revision", "version"])
    db["feedback"].create(
        {
            "id": int, "request_id": str, "adapter": str, "version": int, "revision": int, "arm": str,
            "score": float, "label": str, "at": str,
        },
        pk="id",
    )
    db["feedback"].create_index(["adapter", "revision", "version"])


def _m005_exports(db) -> None:
    # `reg export`: one row per attempt (passed or failed), linked to every source version.
    db["exports"].create(
        {
            "id": int, "sources_json": str, "method": str, "format": str, "dtype": str, "out_path": str,
            "base_name": str, "base_digest": str, "files_json": str, "fidelity_json": str, "status": str,
            "reason": str, "hub_repo": str, "actor": str, "created_at": str,
        },
        pk="id",
        not_null={"status", "created_at"},
    )
    db["export_sources"].create(
        {"export_id": int, "position": int, "version_id": int, "weight": float},
        pk=("export_id", "position"),
        foreign_keys=[("export_id", "exports", "id"), ("version_id", "versions", "id")],
    )
    db["export_sources"].create_index(["version_id"])


def _m006_audit_log(db) -> None:
    # Every write a remote registry accepts (push, alias move, rollout change, delete, gc), with the
    # name of the token that made it (never the token), what the client said it was, and its address.
    db["audit_log"].create(
        {
            "id": int, "at": str, "token": str, "actor": str, "action": str, "target": str, "detail_json": str,
            "peer": str,
        },
        pk="id",
        not_null={"at", "action"},
    )
    db["audit_log"].create_index(["at"])


def _m007_jobs(db) -> None:
    # Fine-tuning jobs (registry/jobs/): the queue, each job's numbered events and checkpoints, the workers that
    # claim jobs under a lease, and the files uploaded for them (content-addressed blobs). A run names its job.
    db["jobs"].create(
        {
            "id": str, "adapter": str, "state": str, "config_json": str, "config_hash": str, "base_name": str,
            "datasets_json": str, "priority": int, "resources_json": str, "submitter": str, "source": str,
            "created_at": str, "started_at": str, "finished_at": str, "attempts": int, "max_attempts": int,
            "worker_id": str, "lease_expires": float, "cancel_requested": int, "run_id": str, "result_version": str,
            "error": str, "step": int, "total_steps": int, "metrics_json": str, "device": str, "device_count": int,
            "device_seconds": float, "extra_json": str,
        },
        pk="id",
        not_null={"adapter", "state", "config_json", "created_at"},
    )
    db["jobs"].create_index(["state", "priority", "created_at"])
    db["job_events"].create(
        {"job_id": str, "seq": int, "at": str, "level": str, "type": str, "message": str, "data_json": str},
        pk=("job_id", "seq"),
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["job_checkpoints"].create(
        {"job_id": str, "step": int, "path": str, "metrics_json": str, "at": str},
        pk=("job_id", "step"),
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["workers"].create(
        {"id": str, "host": str, "pid": int, "slots": int, "resources_json": str, "labels_json": str,
         "started_at": str, "seen_at": float},
        pk="id",
    )
    db["uploaded_files"].create(
        {"id": str, "filename": str, "purpose": str, "bytes": int, "sha256": str, "lines": int, "owner": str,
         "created_at": str},
        pk="id",
    )
    db["runs"].add_column("job_id", str)


def _m008_stored_checkpoints(db) -> None:
    db["job_checkpoints"].add_column("files_json", str)  # a remote worker's checkpoint, stored as blobs here


def _m009_continuous_fine_tuning(db) -> None:
    # Capture (opt-in per adapter): the served requests kept as data, and the corrections feedback may carry.
    db["capture_configs"].create(
        {"adapter": str, "sample": float, "retain_s": int, "max_bytes": int, "redact_json": str, "actor": str,
         "updated_at": str},
        pk="adapter", not_null={"sample", "retain_s", "max_bytes", "redact_json", "updated_at"},
        foreign_keys=[("adapter", "adapters", "name")],
    )
    db["captures"].create(
        {"id": int, "adapter": str, "version": int, "revision": int, "arm": str, "request_id": str, "key_hash": str,
         "prompt": str, "messages_json": str, "response": str, "status": str, "latency_ms": float, "bytes": int,
         "at": str},
        pk="id", not_null={"adapter", "request_id", "response", "bytes", "at"},
    )
    db["captures"].create_index(["adapter", "at"])
    db["captures"].create_index(["request_id"])
    db["feedback"].add_column("correction", str)  # an optional corrected response (kept only while capture is on)
    # The loop (`reg loop`): one per adapter, and every turn of it, step by step.
    db["loops"].create(
        {"adapter": str, "config_json": str, "enabled": int, "actor": str, "created_at": str, "updated_at": str},
        pk="adapter", not_null={"config_json", "enabled", "created_at", "updated_at"},
        foreign_keys=[("adapter", "adapters", "name")],
    )
    db["loop_runs"].create(
        {"id": int, "adapter": str, "trigger": str, "state": str, "champion": int, "candidate": int, "job_id": str,
         "dataset_sha256": str, "steps_json": str, "reason": str, "started_at": str, "updated_at": str,
         "ended_at": str},
        pk="id", not_null={"adapter", "trigger", "state", "steps_json", "started_at", "updated_at"},
    )
    db["loop_runs"].create_index(["adapter", "id"])


def _m010_settings(db) -> None:
    # One row per setting that belongs to the registry rather than to a process: `blob_store` (s3://...) binds a home
    # to the bucket its blobs are in, so no later command can open it on the wrong store.
    db["settings"].create({"key": str, "value": str, "actor": str, "updated_at": str}, pk="key",
                          not_null={"value", "updated_at"})


def _m011_job_executors(db) -> None:
    # Where a job runs: `local` (claimed by any `reg worker`) or an external executor (`kubernetes`, `ray`) that was
    # handed the job and runs `reg worker --job ID` for it; its handle (the K8s Job's name, the Ray submission id)
    # is how the executor is asked about the job, or told to stop it. Columns, not `extra`: the claim filters on them.
    db["jobs"].add_column("executor", str, not_null_default="local")
    db["jobs"].add_column("executor_handle", str)


def _m012_feedback_by_request(db) -> None:
    # A fleet's feedback may reach a replica that did not serve the request: the registry places it by request id,
    # with the outcome (or capture) the serving replica recorded (registry/rollouts.py:served_as, place_feedback).
    db["rollout_events"].create_index(["request_id"])
    db["feedback"].create_index(["request_id"])


MIGRATIONS: list[tuple[int, str, Callable]] = [
    (1, "initial schema", _m001_initial),
    (2, "evaluation pass/fail verdicts", _m002_evaluation_verdicts),
    (3, "index for push's duplicate lookup", _m003_manifest_lookup_index),
    (4, "A/B rollouts: revisions, per-arm outcomes, feedback", _m004_rollouts),
    (5, "exports (reg export) linked to their source versions", _m005_exports),
    (6, "audit log of remote writes, by token name", _m006_audit_log),
    (7, "fine-tuning jobs: queue, events, checkpoints, workers, uploaded files", _m007_jobs),
    (8, "job checkpoints stored as blobs (remote workers)", _m008_stored_checkpoints),
    (9, "continuous fine-tuning: captured traffic, feedback corrections, loops and their runs", _m009_continuous_fine_tuning),
    (10, "registry settings (the blob store a home keeps its blobs in)", _m010_settings),
    (11, "job executors: where a job runs (local, kubernetes, ray) and the executor's handle", _m011_job_executors),
    (12, "feedback and rollout outcomes by request id (feedback through another replica)", _m012_feedback_by_request),
]


def _applied(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='migrations'").fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT id FROM migrations")}


def _pending_migrations(conn: sqlite3.Connection) -> list[tuple[int, str, Callable]]:
    applied = _applied(conn)
    return [m for m in MIGRATIONS if m[0] not in applied]


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply pending migrations, each in its own write transaction; return the numbers applied."""
    import sqlite_utils

    db = sqlite_utils.Database(conn, execute_plugins=False)
    done = []
    for number, name, apply in MIGRATIONS:
        with transaction(conn):
            # Checked again under the write lock: another process may have just applied it.
            conn.execute("CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
            if number in _applied(conn):
                continue
            apply(db)
            conn.execute("INSERT INTO migrations (id, name, applied_at) VALUES (?, ?, ?)", (number, name, utcnow()))
            done.append(number)
    return done
