"""Exports: every `reg export` attempt, passed or failed, linked to the versions it was made from.

Merging, writing and the fidelity check need torch and live in `exporter.py` beside it; this module only
records and lists, so `reg show` stays torch-free. A row keeps the sources (version, ref, weight),
the method, format and dtype, where the result went, the sha256 of every file written, the fidelity
check's numbers, and whether it passed (and why not).
"""

from __future__ import annotations

import json
import sqlite3

from ..db import transaction, utcnow
from ..errors import InvalidInput, NotFound

EXPORT_STATUSES = ("passed", "failed")
EXPORT_FORMATS = ("merged", "peft")


def record_export(
    conn: sqlite3.Connection, sources: list[dict], *, method: str, fmt: str, dtype: str, out_path: str,
    base_name: str, base_digest: str, files: list[dict], fidelity: dict | None, status: str, actor: str,
    reason: str | None = None,
) -> int:
    """Record one export; `sources` are `{version_id, ref, weight, manifest_digest}`. Returns the export id."""
    if status not in EXPORT_STATUSES:
        raise InvalidInput(f"export status {status!r}: use one of {', '.join(EXPORT_STATUSES)}")
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if not sources:
        raise InvalidInput("an export needs at least one source version")
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO exports (sources_json, method, format, dtype, out_path, base_name, base_digest, files_json,"
            " fidelity_json, status, reason, actor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                json.dumps(sources), method, fmt, dtype, out_path, base_name, base_digest, json.dumps(files),
                json.dumps(fidelity), status, reason, actor, utcnow(),
            ),
        )
        conn.executemany(
            "INSERT INTO export_sources (export_id, position, version_id, weight) VALUES (?, ?, ?, ?)",
            [(cur.lastrowid, i, s["version_id"], s["weight"]) for i, s in enumerate(sources)],
        )
    return cur.lastrowid


def set_hub_repo(conn: sqlite3.Connection, export_id: int, hub_repo: str) -> None:
    """Note that a passed export was uploaded to `hub_repo`."""
    with transaction(conn):
        cur = conn.execute("UPDATE exports SET hub_repo=? WHERE id=? AND status='passed'", (hub_repo, export_id))
        if cur.rowcount != 1:
            raise NotFound(f"no passed export with id {export_id}")


def exports_for_version(conn: sqlite3.Connection, version_id: int) -> list[dict]:
    """Every export that used the version (alone or in a merge), oldest first."""
    rows = conn.execute(
        "SELECT DISTINCT e.* FROM exports e JOIN export_sources s ON s.export_id = e.id WHERE s.version_id=? ORDER BY e.id",
        (version_id,),
    )
    return [_decoded(r) for r in rows]


def _decoded(row: sqlite3.Row) -> dict:
    d = dict(row)
    for key in ("sources_json", "files_json", "fidelity_json"):
        d[key.removesuffix("_json")] = json.loads(d.pop(key) or "null")
    return d
