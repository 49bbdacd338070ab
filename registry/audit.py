"""The audit log: every write a remote registry accepted, with the name of the token that made it.

Rows are appended by the Registry service (`server/registry_service.py`) right after the write
commits; `reg audit` lists them. Tokens themselves are never stored, only their names.
"""

from __future__ import annotations

import json
import sqlite3

from .db import transaction, utcnow


def record(conn: sqlite3.Connection, action: str, target: str, token: str = "", actor: str = "", peer: str = "",
           detail: dict | None = None) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO audit_log (at, token, actor, action, target, detail_json, peer) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (utcnow(), token, actor, action, target, json.dumps(detail or {}, sort_keys=True), peer),
        )


def entries(conn: sqlite3.Connection, limit: int | None = None) -> list[dict]:
    """Audit entries, oldest first (the newest `limit` of them when given)."""
    sql = "SELECT * FROM audit_log ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
    out = []
    for row in reversed(conn.execute(sql).fetchall()):
        d = dict(row)
        d["detail"] = json.loads(d.pop("detail_json") or "{}")
        out.append(d)
    return out
