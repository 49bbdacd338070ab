"""The registry: adapters, their immutable versions, aliases, and base models.

A push hashes and copies files into the blob store first, then allocates the version and
records it in one transaction, so a crash at any point leaves no half version visible.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from . import db as dbmod
from .export import records as exports_mod
from .adapters import AdapterInfo, check_fits_base, inspect_adapter_dir, inspect_adapter_files
from .base_catalog import BaseCatalog
from .bases import Base
from .blobs import BlobStore
from .errors import (
    AdapterNotFound, AliasNotFound, BlobsMissing, Conflict, IntegrityError, InvalidAdapter,
    InvalidInput, InvalidRef, TooLarge, VersionNotFound, shown,
)
from .failures import from_os_error
from .home import current_actor, default_home  # noqa: F401  (re-exported)
from .manifests import check_file_list, manifest_digest, write_version_dir  # noqa: F401  (re-exported)
from .names import MAX_VERSION, Ref, check_version_number, parse_ref, validate_name
from .records import AdapterSummary, AliasEvent, FileRecord, PushResult, Version
from .rollouts import Rollouts

BLOB_STORE_ENV = "LORADOCK_BLOB_STORE"


class Registry(BaseCatalog):
    """A registry rooted at a home directory (`$LORADOCK_HOME`, else `~/.loradock`)."""

    is_local = True

    def __init__(self, home: Path | str | None = None, blob_store: str | None = None):
        """`blob_store`: `s3://bucket/prefix` to keep the blobs in object storage (default: `$LORADOCK_BLOB_STORE`,
        else what the home recorded when it was first opened with one, else local files under `home/blobs`)."""
        self.home = Path(home) if home else default_home()
        self._blob_store = blob_store
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise (from_os_error(exc, "creating the registry home", self.home) or exc) from None
        self.bases_dir = self.home / "bases"
        self.runs_dir = self.home / "runs"
        self._conn: sqlite3.Connection | None = None
        self._blobs: BlobStore | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = dbmod.connect(self.home / "registry.db", blobs=self.home / "blobs" / "sha256")
        return self._conn

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            url, recorded = self._blob_store_url()
            try:
                if url is None:
                    self._blobs = BlobStore(self.home / "blobs")
                else:
                    from .s3_blobs import S3BlobStore

                    store = S3BlobStore(url, self.home / "blobs")
                    store.check_access()  # before the home records the store: a refused first open changes nothing
                    if not recorded:
                        self._record_blob_store(url)
                    self._blobs = store
            except OSError as exc:
                raise (from_os_error(exc, "opening the blob store", self.home / "blobs") or exc) from None
        return self._blobs

    def _blob_store_url(self) -> tuple[str | None, bool]:
        """(the object store this home keeps its blobs in, or None for local files; whether the home records it).

        The first open with a store records it in the database; later opens use the recorded one, and one naming
        another store is refused, as is moving a home that already holds local blobs: a registry's blobs live in
        one place, so nothing is ever half here and half there.
        """
        configured = self._blob_store if self._blob_store is not None else os.environ.get(BLOB_STORE_ENV, "")
        configured = configured.strip().rstrip("/") or None
        if configured is not None:
            from .s3_blobs import parse_s3_url

            parse_s3_url(configured)
        row = self.conn.execute("SELECT value FROM settings WHERE key='blob_store'").fetchone()
        if row is not None:
            if configured is not None and configured != row[0]:
                raise Conflict(f"the registry at {self.home} keeps its blobs in {row[0]}, not {configured}: "
                               f"unset {BLOB_STORE_ENV} / --blob-store, or point it at {row[0]}")
            return row[0], True
        if configured is not None and dbmod.holds_a_blob(local := self.home / "blobs" / "sha256"):
            raise Conflict(f"the registry at {self.home} already keeps blobs on local disk ({local}); it cannot "
                           f"move them to {configured}: use a new --home for the object store")
        return configured, False

    def _record_blob_store(self, url: str) -> None:
        # INSERT OR IGNORE: of two first opens racing, one records its store and the other is checked against it
        record = "INSERT OR IGNORE INTO settings (key, value, actor, updated_at) VALUES ('blob_store', ?, ?, ?)"
        values = (url, current_actor(), dbmod.utcnow())
        if self.conn.in_transaction:  # first reached inside a write: the row joins it
            self.conn.execute(record, values)
        else:
            with dbmod.transaction(self.conn) as conn:
                conn.execute(record, values)
        if self._blob_store_url()[0] != url:
            raise Conflict(f"another process recorded a different blob store for {self.home} meanwhile")

    @property
    def rollouts(self) -> Rollouts:
        """A/B rollouts of bare names between versions (`registry/rollouts.py`)."""
        return Rollouts(self)

    @property
    def captures(self):
        """Captured traffic of adapters with capture on, and its configs (`registry/capture.py`)."""
        from .capture import Captures

        return Captures(self)

    @property
    def loops(self):
        """Continuous fine-tuning loops and the record of their runs (`registry/loops.py`)."""
        from .loops import Loops

        return Loops(self)

    @property
    def jobs(self):
        """Fine-tuning jobs: the queue, events, checkpoints, workers and uploaded files (`registry/jobs/`)."""
        from .jobs import JobQueue

        return JobQueue(self)

    def new_connection(self) -> "Registry":
        """Another handle on the same home with its own SQLite connection (for a background thread)."""
        return Registry(self.home)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- resolving -----------------------------------------------------------------------

    def resolve(self, ref: str | Ref) -> Version:
        """The version a reference names: `NAME:N` and `NAME@ALIAS` exactly, bare `NAME` its latest."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        self._require_adapter(ref.name)
        if ref.version is not None:
            row = self.conn.execute("SELECT * FROM versions WHERE adapter=? AND number=?", (ref.name, ref.version)).fetchone()
            if row is None:
                raise VersionNotFound(f"adapter {ref.name!r} has no version {ref.version} (see `reg ls {ref.name}`)")
            if row["deleted_at"]:
                raise VersionNotFound(f"{ref} was deleted at {row['deleted_at']}")
        elif ref.alias is not None:
            alias = self.conn.execute("SELECT version FROM aliases WHERE adapter=? AND alias=?", (ref.name, ref.alias)).fetchone()
            if alias is None:
                raise AliasNotFound(f"adapter {ref.name!r} has no alias {ref.alias!r} (see `reg show {ref.name}`)")
            row = self.conn.execute("SELECT * FROM versions WHERE adapter=? AND number=?", (ref.name, alias[0])).fetchone()
        else:
            row = self.conn.execute(
                "SELECT * FROM versions WHERE adapter=? AND deleted_at IS NULL ORDER BY number DESC LIMIT 1", (ref.name,)
            ).fetchone()
            if row is None:
                raise VersionNotFound(f"adapter {ref.name!r} has no live versions")
        return self._with_files(Version.from_row(row))

    def _require_adapter(self, name: str) -> None:
        if self.conn.execute("SELECT 1 FROM adapters WHERE name=?", (name,)).fetchone() is None:
            raise AdapterNotFound(f"no adapter named {name!r} (see `reg ls`)")

    def _with_files(self, version: Version) -> Version:
        rows = self.conn.execute("SELECT path, size, sha256 FROM files WHERE version_id=? ORDER BY path", (version.id,))
        version.files = [FileRecord(*r) for r in rows]
        return version

    # --- push / pull ---------------------------------------------------------------------

    def push(
        self, directory: Path | str, name: str, base: str | None = None, message: str = "", alias: str | None = None,
        allow_duplicate: bool = False, run_id: str | None = None, creator: str | None = None, parent: int | None = None,
    ) -> PushResult:
        """Store a PEFT adapter directory as the next version of `name`.

        Every check happens before anything is written. Content identical to a live
        version returns that version (`created=False`) unless `allow_duplicate`. `parent`: the live version of `name`
        it was made from (default: the latest), as the loop records a candidate's champion.
        """
        validate_name(name)
        if alias is not None:
            validate_name(alias, "alias")
        info = inspect_adapter_dir(directory)
        base_record = self._base_for_adapter(info, base)
        check_fits_base(info, base_record.name, base_record.tensors, base_record.config)

        files = []
        for rel in info.files:
            digest, size = self.blobs.ingest(info.directory / rel)
            files.append(FileRecord(rel, size, digest))
        return self._record_version(info, files, name, base_record, message, alias, allow_duplicate, run_id, creator,
                                    parent)

    def push_stored(
        self, files: list[FileRecord], name: str, base: str | None = None, message: str = "", alias: str | None = None,
        allow_duplicate: bool = False, creator: str | None = None, run_id: str | None = None, parent: int | None = None,
    ) -> PushResult:
        """Commit a version from blobs already in the store (a remote push: the blobs were uploaded and verified first).

        `run_id` names the recorded training run that made it (its lineage), as `push` takes it.

        The files get the same checks as a local push (layout, pickles, safetensors, fit to the base),
        read from the stored blobs; a blob that is not stored raises `BlobsMissing` naming it.
        """
        validate_name(name)
        if alias is not None:
            validate_name(alias, "alias")
        check_file_list(files, InvalidAdapter, "the pushed file list")
        missing = [f"{f.path} (sha256:{f.sha256})" for f in files if not self.blobs.has(f.sha256)]
        if missing:
            raise BlobsMissing(f"blobs not uploaded yet: {', '.join(missing)}; upload them, then commit again")
        for f in files:
            stored = self.blobs.size(f.sha256)
            if stored != f.size:
                raise IntegrityError(f"{f.path}: declared {f.size} bytes, but blob sha256:{f.sha256} holds {stored}")
        with self.blobs.local_files({f.path: f.sha256 for f in files}, "the pushed file") as stored:
            try:
                info = inspect_adapter_files(Path("the pushed files"), stored)
            except InvalidAdapter as exc:  # name the pushed file, not the blob that holds its bytes
                message = str(exc)
                for name, blob in stored.items():
                    message = message.replace(str(blob), name)
                raise type(exc)(message) from None
        base_record = self._base_for_adapter(info, base)
        check_fits_base(info, base_record.name, base_record.tensors, base_record.config)
        return self._record_version(info, files, name, base_record, message, alias, allow_duplicate, run_id, creator,
                                    parent)

    def _record_version(
        self, info: AdapterInfo, files: list[FileRecord], name: str, base_record: Base, message: str, alias: str | None,
        allow_duplicate: bool, run_id: str | None, creator: str | None, parent: int | None = None,
    ) -> PushResult:
        """One transaction: allocate the next number and record the version (or return an identical live one)."""
        manifest = manifest_digest(files)
        actor = creator or current_actor()
        check_push_text(message, actor)
        now = dbmod.utcnow()

        with dbmod.transaction(self.conn) as conn:
            conn.execute("INSERT OR IGNORE INTO adapters (name, next_version, created_at) VALUES (?, 1, ?)", (name, now))
            if not allow_duplicate:
                row = conn.execute(
                    "SELECT * FROM versions WHERE adapter=? AND manifest_digest=? AND deleted_at IS NULL"
                    " ORDER BY number LIMIT 1",
                    (name, manifest),
                ).fetchone()
                if row is not None:
                    existing = Version.from_row(row)
                    if alias is not None:
                        self._set_alias_in(conn, name, alias, existing.number, actor)
                    return PushResult(self._with_files(existing), created=False, warnings=info.warnings)
            missing = [f.path for f in files if not self.blobs.has(f.sha256)]
            if missing:  # only a gc racing this push can do that; nothing is recorded, so a retry is safe
                raise IntegrityError(f"blobs of {', '.join(missing)} vanished before the version was recorded; push again")
            number = conn.execute("SELECT next_version FROM adapters WHERE name=?", (name,)).fetchone()[0]
            if parent is None:
                parent = conn.execute(
                    "SELECT MAX(number) FROM versions WHERE adapter=? AND deleted_at IS NULL", (name,)
                ).fetchone()[0]
            elif conn.execute("SELECT 1 FROM versions WHERE adapter=? AND number=? AND deleted_at IS NULL",
                              (name, check_version_number(parent, "parent"))).fetchone() is None:
                raise VersionNotFound(f"parent {name}:{parent}: no live version of {name} with that number")
            cur = conn.execute(
                "INSERT INTO versions (adapter, number, manifest_digest, base_name, base_digest, peft_type, task_type, rank,"
                " alpha, target_modules, adapter_config, size_bytes, creator, message, parent, run_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name, number, manifest, base_record.name, base_record.weights_digest, info.peft_type, info.task_type,
                    info.rank, info.alpha, json.dumps(info.target_modules) if info.target_modules is not None else None,
                    json.dumps(info.config, sort_keys=True), sum(f.size for f in files), actor, message, parent, run_id, now,
                ),
            )
            conn.executemany(
                "INSERT INTO files (version_id, path, size, sha256) VALUES (?, ?, ?, ?)",
                [(cur.lastrowid, f.path, f.size, f.sha256) for f in files],
            )
            conn.execute("UPDATE adapters SET next_version=? WHERE name=?", (number + 1, name))
            if alias is not None:
                self._set_alias_in(conn, name, alias, number, actor)
        return PushResult(self.resolve(Ref(name, version=number)), created=True, warnings=info.warnings)

    def pull(self, ref: str | Ref, out: Path | str | None = None, force: bool = False) -> tuple[Version, Path]:
        """Write a version as a plain PEFT directory, verifying every digest; nothing partial is left on failure."""
        version = self.resolve(ref)
        write = lambda f, dest: self.blobs.copy_out(f.sha256, dest, label=f"{version.ref} {f.path}")  # noqa: E731
        return version, write_version_dir(version, out, force, write, home=self.home)

    # --- listing -------------------------------------------------------------------------

    def list_adapters(self) -> list[AdapterSummary]:
        rows = self.conn.execute(
            "SELECT a.name, COUNT(v.id) AS n, MAX(v.number) AS latest, MAX(v.created_at) AS updated"
            " FROM adapters a LEFT JOIN versions v ON v.adapter = a.name AND v.deleted_at IS NULL"
            " GROUP BY a.name ORDER BY a.name"
        ).fetchall()
        aliases: dict[str, dict[str, int]] = {}
        for adapter, alias, number in self.conn.execute("SELECT adapter, alias, version FROM aliases ORDER BY alias"):
            aliases.setdefault(adapter, {})[alias] = number
        return [AdapterSummary(r["name"], r["n"], r["latest"], aliases.get(r["name"], {}), r["updated"]) for r in rows]

    def list_versions(self, name: str, include_deleted: bool = False, limit: int | None = None) -> list[Version]:
        """Versions of `name`, newest first."""
        validate_name(name)
        self._require_adapter(name)
        sql = "SELECT * FROM versions WHERE adapter=?" + ("" if include_deleted else " AND deleted_at IS NULL")
        sql += " ORDER BY number DESC" + _limit_sql(limit)
        return [Version.from_row(r) for r in self.conn.execute(sql, (name,))]

    def version_summaries(self, name: str, include_deleted: bool = False, limit: int | None = None) -> list[dict]:
        """Like `list_versions` but only the listing columns, undecoded: cheap at 10,000 versions."""
        validate_name(name)
        self._require_adapter(name)
        sql = (
            "SELECT adapter || ':' || number AS ref, number, manifest_digest, base_name AS base, peft_type, rank, alpha,"
            " target_modules, size_bytes, creator, message, parent, run_id, created_at, deleted_at"
            " FROM versions WHERE adapter=?" + ("" if include_deleted else " AND deleted_at IS NULL")
            + " ORDER BY number DESC" + _limit_sql(limit)
        )
        rows = [dict(r) for r in self.conn.execute(sql, (name,))]
        for r in rows:
            r["target_modules"] = json.loads(r["target_modules"]) if r["target_modules"] else None
        return rows

    def count_versions(self, name: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM versions WHERE adapter=? AND deleted_at IS NULL", (name,)).fetchone()[0]

    # --- aliases -------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        rows = self.conn.execute("SELECT alias, version FROM aliases WHERE adapter=? ORDER BY alias", (name,))
        return {alias: number for alias, number in rows}

    def set_alias(self, name: str, alias: str, number: int, actor: str | None = None) -> int | None:
        """Point `name@alias` at version `number`; return the version it pointed at before (or None)."""
        validate_name(name)
        validate_name(alias, "alias")
        check_version_number(number)
        with dbmod.transaction(self.conn) as conn:
            self._require_adapter(name)
            row = conn.execute("SELECT deleted_at FROM versions WHERE adapter=? AND number=?", (name, number)).fetchone()
            if row is None:
                raise VersionNotFound(f"adapter {name!r} has no version {number} (see `reg ls {name}`)")
            if row[0]:
                raise VersionNotFound(f"{name}:{number} was deleted at {row[0]}; an alias must point at a live version")
            return self._set_alias_in(conn, name, alias, number, actor or current_actor())

    def _set_alias_in(self, conn: sqlite3.Connection, name: str, alias: str, number: int, actor: str) -> int | None:
        now = dbmod.utcnow()
        old = conn.execute("SELECT version FROM aliases WHERE adapter=? AND alias=?", (name, alias)).fetchone()
        old_version = old[0] if old else None
        conn.execute(
            "INSERT INTO aliases (adapter, alias, version, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (adapter, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
            (name, alias, number, now),
        )
        conn.execute(
            "INSERT INTO alias_events (adapter, alias, action, old_version, new_version, actor, at) VALUES (?, ?, 'set', ?, ?, ?, ?)",
            (name, alias, old_version, number, actor, now),
        )
        return old_version

    def remove_alias(self, name: str, alias: str, actor: str | None = None) -> int:
        validate_name(name)
        validate_name(alias, "alias")
        with dbmod.transaction(self.conn) as conn:
            self._require_adapter(name)
            row = conn.execute("SELECT version FROM aliases WHERE adapter=? AND alias=?", (name, alias)).fetchone()
            if row is None:
                raise AliasNotFound(f"adapter {name!r} has no alias {alias!r}")
            self._remove_alias_in(conn, name, alias, row[0], actor or current_actor())
            return row[0]

    def _remove_alias_in(self, conn: sqlite3.Connection, name: str, alias: str, old: int, actor: str) -> None:
        conn.execute("DELETE FROM aliases WHERE adapter=? AND alias=?", (name, alias))
        conn.execute(
            "INSERT INTO alias_events (adapter, alias, action, old_version, new_version, actor, at) VALUES (?, ?, 'rm', ?, NULL, ?, ?)",
            (name, alias, old, actor, dbmod.utcnow()),
        )

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        validate_name(name)
        self._require_adapter(name)
        sql, args = "SELECT * FROM alias_events WHERE adapter=?", [name]
        if alias:
            sql, args = sql + " AND alias=?", args + [alias]
        return [AliasEvent(**dict(r)) for r in self.conn.execute(sql + " ORDER BY id", args)]

    # --- deleting ------------------------------------------------------------------------

    def remove_version(self, ref: str, force: bool = False, actor: str | None = None) -> Version:
        """Soft-delete a version: it stops resolving, its number is never reused, its blobs become gc-able."""
        parsed = parse_ref(ref)
        if parsed.version is None and parsed.alias is None:
            raise InvalidRef(f"`reg rm` needs one version, as NAME:N or NAME@ALIAS, not the bare name {ref!r}")
        version = self.resolve(parsed)
        actor = actor or current_actor()
        with dbmod.transaction(self.conn) as conn:
            pointing = [a for a, n in self.aliases(version.adapter).items() if n == version.number]
            if pointing and not force:
                raise Conflict(
                    f"{version.ref} is the target of alias(es) {', '.join(pointing)}; move them first or pass --force"
                )
            rollout = self.rollouts.current(version.adapter)
            if rollout and any(a.version == version.number for a in rollout.arms):
                raise Conflict(f"{version.ref} is an arm of {version.adapter}'s rollout (revision {rollout.revision}); "
                               f"change or clear the rollout first (`reg rollout show {version.adapter}`)")
            for alias in pointing:
                self._remove_alias_in(conn, version.adapter, alias, version.number, actor)
            conn.execute("UPDATE versions SET deleted_at=? WHERE id=?", (dbmod.utcnow(), version.id))
        return version

    # --- lineage -------------------------------------------------------------------------

    def run(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for key in ("config_json", "datasets_json", "libraries_json", "hardware_json", "metrics_json"):
            out[key.removesuffix("_json")] = json.loads(out.pop(key) or "null")
        return out

    def record_run(
        self, run_id: str, adapter: str, config: dict, config_hash: str, base: Base, datasets: list[dict], seed: int,
        libraries: dict, hardware: dict, metrics: dict, started_at: str, finished_at: str, duration_s: float,
        run_dir: str | None, status: str = "succeeded", job_id: str | None = None,
    ) -> None:
        """Record a training run (its resolved config, data, base, environment and metric curves; the job that ran it)."""
        validate_name(adapter)
        with dbmod.transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO runs (id, adapter, status, config_json, config_hash, base_name, base_digest, datasets_json,"
                " seed, libraries_json, hardware_json, metrics_json, started_at, finished_at, duration_s, run_dir, job_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, adapter, status, json.dumps(config, sort_keys=True), config_hash, base.name, base.weights_digest,
                    json.dumps(datasets), seed, json.dumps(libraries), json.dumps(hardware), json.dumps(metrics),
                    started_at, finished_at, duration_s, run_dir, job_id,
                ),
            )

    def record_evaluation(
        self, version: Version, name: str, split: str, metrics: dict, base_metrics: dict | None = None,
        run_id: str | None = None, passed: bool | None = None, failures: list[str] | None = None,
    ) -> None:
        """Attach evaluation results (and the base model's, for comparison) to a version.

        `passed=False` with `failures` marks a version that missed a threshold; it stays usable.
        """
        with dbmod.transaction(self.conn) as conn:
            conn.execute(
                "INSERT INTO evaluations (version_id, run_id, name, split, metrics_json, base_metrics_json, created_at,"
                " passed, failures_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version.id, run_id, name, split, json.dumps(metrics), json.dumps(base_metrics), dbmod.utcnow(),
                    None if passed is None else int(passed), json.dumps(failures or []),
                ),
            )

    def evaluations(self, version_id: int) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM evaluations WHERE version_id=? ORDER BY id", (version_id,))
        out = []
        for r in rows:
            d = dict(r)
            d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
            d["base_metrics"] = json.loads(d.pop("base_metrics_json") or "null")
            d["failures"] = json.loads(d.pop("failures_json") or "[]")
            d["passed"] = None if d["passed"] is None else bool(d["passed"])
            out.append(d)
        return out

    def record_export(self, sources: list[dict], actor: str | None = None, **fields) -> int:
        """Record a `reg export` attempt (see `registry.export.records.record_export`); returns its id."""
        return exports_mod.record_export(self.conn, sources, actor=actor or current_actor(), **fields)

    def exports(self, version_id: int) -> list[dict]:
        """Exports made from a version (alone or in a merge), oldest first."""
        return exports_mod.exports_for_version(self.conn, version_id)

    def diff(self, ref_a: str, ref_b: str) -> dict:
        """`reg diff`: see `registry.diff.diff_versions`."""
        from .diff import diff_versions

        return diff_versions(self, ref_a, ref_b)

    def verify(self, ref: str | None = None):
        """`reg verify`: see `registry.maintenance.verify`."""
        from .maintenance import verify

        return verify(self, ref)

    def gc(self, dry_run: bool = False, grace_s: float | None = None, all_unreferenced: bool = False):
        """`reg gc`: see `registry.maintenance.gc`."""
        from .maintenance import DEFAULT_GC_GRACE_S, gc

        return gc(self, dry_run=dry_run, grace_s=DEFAULT_GC_GRACE_S if grace_s is None else grace_s,
                  all_unreferenced=all_unreferenced)

    def audit_entries(self, limit: int | None = None) -> list[dict]:
        """The audit log of remote writes, oldest first (`registry/audit.py`)."""
        from .audit import entries

        return entries(self.conn, limit)

    def describe(self, ref: str) -> dict:
        """Everything `reg show` prints: the version, its files, aliases, lineage, evaluations and exports."""
        version = self.resolve(ref)
        aliases = self.aliases(version.adapter)
        return {
            "version": version.to_dict(),
            "adapter": {
                "name": version.adapter,
                "live_versions": self.count_versions(version.adapter),
                "recent_versions": [v.number for v in self.list_versions(version.adapter, limit=10)],
                "aliases": aliases,
            },
            "aliases_here": sorted(a for a, n in aliases.items() if n == version.number),
            "run": self.run(version.run_id) if version.run_id else None,
            "evaluations": self.evaluations(version.id),
            "exports": self.exports(version.id),
        }


# Every field of a version travels in one gRPC message (a remote `reg show`, `ls`, `pull`), so each is bounded:
# the config by `registry.adapters.MAX_CONFIG_BYTES`, these two here.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CREATOR_BYTES = 256


def _limit_sql(limit: int | None) -> str:
    if not limit:
        return ""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_VERSION:
        raise InvalidInput(f"--limit {shown(limit)}: give a count from 1 to {MAX_VERSION} (0 shows all)")
    return f" LIMIT {limit}"


def check_push_text(message: str, creator: str) -> None:
    """A push's free text within its bounds (a remote client checks before it uploads; the registry again at commit)."""
    for what, text, limit in (("--message", message, MAX_MESSAGE_BYTES), ("the creator", creator, MAX_CREATOR_BYTES)):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise TooLarge(f"{what} is {size:,} bytes ({shown(text, 60)}); at most {limit:,} bytes are accepted: shorten it")
