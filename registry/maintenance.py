"""Keeping the store honest: `verify` re-hashes what versions reference, `gc` removes what none does."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .db import integrity_problems, transaction
from .errors import Conflict, NotFound
from .records import Version

if TYPE_CHECKING:  # a local registry; at run time it is the caller (store.py imports this module)
    from .store import Registry

DEFAULT_GC_GRACE_S = 3600.0


@dataclass
class Problem:
    ref: str
    path: str
    sha256: str
    problem: str


@dataclass
class VerifyReport:
    versions: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    database_problems: list[str] = field(default_factory=list)  # what SQLite's integrity_check found

    @property
    def ok(self) -> bool:
        return not self.problems and not self.database_problems


def verify(registry: Registry, ref: str | None = None) -> VerifyReport:
    """Check the database (SQLite's integrity_check), then re-hash every blob one version (`ref`) or every live one references."""
    database_problems = integrity_problems(registry.conn)
    if ref is not None:
        versions = [registry.resolve(ref)]
    else:
        rows = registry.conn.execute("SELECT * FROM versions WHERE deleted_at IS NULL ORDER BY adapter, number")
        versions = [registry._with_files(Version.from_row(r)) for r in rows]
    report = VerifyReport(database_problems=database_problems)
    checked: dict[str, str | None] = {}  # digest -> problem (None when good), so shared blobs hash once
    for version in versions:
        report.versions += 1
        for f in version.files:
            report.files += 1
            if f.sha256 not in checked:
                checked[f.sha256] = _check_blob(registry, f.sha256, f.size)
                report.bytes += f.size
            if checked[f.sha256]:
                report.problems.append(Problem(version.ref, f.path, f.sha256, checked[f.sha256]))
    return report


def _check_blob(registry: Registry, digest: str, size: int) -> str | None:
    """What is wrong with stored blob `digest`, recorded as `size` bytes (None when it is whole), on any blob store.

    The bytes are hashed as they stream, so an object in a bucket is checked without a local copy.
    """
    store = registry.blobs
    actual_size = store.size(digest)
    if actual_size is None:
        return "missing from the blob store"
    if actual_size != size:
        return f"size {actual_size} bytes, recorded {size}"
    h = hashlib.sha256()
    try:
        for data in store.read_chunks(digest):
            h.update(data)
    except NotFound:
        return "missing from the blob store"
    actual = h.hexdigest()
    return None if actual == digest else f"content hashes to {actual}"


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    kept_recent: int = 0
    temp_removed: int = 0
    dry_run: bool = False


def gc(registry: Registry, dry_run: bool = False, grace_s: float = DEFAULT_GC_GRACE_S,
       all_unreferenced: bool = False) -> GcReport:
    """Remove blobs no live version, uploaded file or fine-tuning job references, and stale temp files.

    Blobs younger than `grace_s` are kept: a push in flight has written its blobs but not
    yet committed the version that references them. A database that records no version at all
    next to stored blobs looks like a lost or replaced registry.db: then nothing is removed
    unless `all_unreferenced` says that every blob really is garbage.
    """
    report = GcReport(dry_run=dry_run)
    registry.blobs  # opened (and an object store's access checked) before the write lock is taken
    # Under the write lock no push can commit between deciding a blob is unused and removing it;
    # a push that ingested it meanwhile finds it missing at commit time and fails cleanly.
    with transaction(registry.conn) as conn:
        if not dry_run and not all_unreferenced:
            _refuse_if_the_record_looks_lost(registry, conn)
        live = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT f.sha256 FROM files f JOIN versions v ON v.id = f.version_id WHERE v.deleted_at IS NULL"
                " UNION SELECT sha256 FROM uploaded_files"
                " UNION SELECT json_extract(d.value, '$.sha256') FROM jobs, json_each(jobs.datasets_json) d"
                " UNION SELECT json_extract(f.value, '$.sha256') FROM job_checkpoints c, json_each(c.files_json) f"
                " WHERE c.files_json IS NOT NULL"
            )
        }
        cutoff = time.time() - grace_s
        for blob in registry.blobs.iter_blobs():
            if blob.digest in live:
                continue
            if blob.mtime > cutoff:
                report.kept_recent += 1
                continue
            report.removed.append(blob.digest)
            report.removed_bytes += blob.size
            if not dry_run:
                registry.blobs.remove(blob.digest)
    for tmp in registry.blobs.iter_temp_files():
        try:
            if tmp.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        report.temp_removed += 1
        if not dry_run:
            tmp.unlink(missing_ok=True)
    report.temp_removed += registry.blobs.abort_stale_uploads(cutoff, dry_run)  # an object store's unfinished uploads
    return report


def _refuse_if_the_record_looks_lost(registry: Registry, conn) -> None:
    records = "SELECT 1 FROM versions UNION ALL SELECT 1 FROM jobs UNION ALL SELECT 1 FROM uploaded_files LIMIT 1"
    if conn.execute(records).fetchone() is not None:
        return
    stored = sum(1 for _ in registry.blobs.iter_blobs())
    if stored:
        raise Conflict(
            f"the registry database {registry.home / 'registry.db'} records no versions at all, but the blob store "
            f"holds {stored} blobs: a lost or replaced database looks like this, so gc removed nothing; restore "
            f"registry.db, or pass --all-unreferenced if every one of those blobs really is garbage"
        )
