"""A/B rollouts: a bare adapter name split between some of its versions, by weight, optionally sticky.

Every change is a new revision in an append-only table (who, when, why), so the history is exact and
`rollback` restores an earlier state by copying it into a new revision. A revision without arms
(`clear`) ends the rollout: the bare name resolves to the latest version again. Servers record every
routed request and every Feedback per arm (`record`); `report` compares the arms, and `check_guard`
routes everything back to the older arms when the newest one breaches its guard.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, astuple

from . import db as dbmod
from .errors import Conflict, InvalidInput, RolloutNotFound, VersionNotFound, shown
from .home import current_actor
from .names import check_version_number, validate_name
from .rollout_records import (  # noqa: F401  (re-exported: the records are part of this module's API)
    GUARD_ACTOR, MAX_ARMS, WEIGHT_TOTAL, Arm, FeedbackRecord, Guard, Outcome, Revision, arm_label, parse_arm,
)



def served_as(conn, request_id: str) -> tuple[str, int | None, int | None, str]:
    """(adapter, version, revision, arm) of the request `request_id` as its outcome or capture recorded it, or
    ("", None, None, "") while neither has reached the registry."""
    row = conn.execute("SELECT adapter, version, revision, arm FROM rollout_events WHERE request_id=? LIMIT 1",
                       (request_id,)).fetchone() or \
        conn.execute("SELECT adapter, version, revision, arm FROM captures WHERE request_id=? LIMIT 1",
                     (request_id,)).fetchone()
    return (row[0], row[1], row[2], row[3] or "") if row else ("", None, None, "")


def place_feedback(conn, request_id: str, adapter: str, version: int | None, revision: int | None, arm: str) -> None:
    """Give feedback that arrived before its request's outcome (through another replica) that request's adapter."""
    conn.execute("UPDATE feedback SET adapter=?, version=?, revision=?, arm=? WHERE request_id=? AND adapter=''",
                 (adapter, version, revision, arm or "", request_id))

class Rollouts:
    """The rollouts of a registry: `registry.rollouts.set("support", [Arm(3, 90), Arm(4, 10)], sticky=True)`."""

    def __init__(self, registry):
        self.registry = registry

    @property
    def conn(self) -> sqlite3.Connection:
        return self.registry.conn

    # --- reading -------------------------------------------------------------------------

    def history(self, name: str) -> list[Revision]:
        """Every revision of `name`'s rollout, oldest first."""
        self._require_adapter(name)
        rows = self.conn.execute("SELECT * FROM rollout_revisions WHERE adapter=? ORDER BY revision", (name,))
        return [Revision.from_row(r) for r in rows]

    def current(self, name: str) -> Revision | None:
        """The revision in force, or None when `name` has no rollout (never set, or cleared)."""
        self._require_adapter(name)
        row = self.conn.execute(
            "SELECT * FROM rollout_revisions WHERE adapter=? ORDER BY revision DESC LIMIT 1", (name,)
        ).fetchone()
        revision = Revision.from_row(row) if row else None
        return revision if revision and revision.arms else None

    def all_current(self) -> dict[str, Revision]:
        """Every adapter's revision in force (what a server routes by)."""
        rows = self.conn.execute(
            "SELECT r.* FROM rollout_revisions r JOIN (SELECT adapter, MAX(revision) AS latest FROM rollout_revisions"
            " GROUP BY adapter) m ON r.adapter = m.adapter AND r.revision = m.latest"
        )
        revisions = (Revision.from_row(r) for r in rows)
        return {r.adapter: r for r in revisions if r.arms}

    def change_id(self) -> int:
        """Grows with every change to any rollout: a server polls it to know when to reload."""
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM rollout_revisions").fetchone()[0]

    def show(self, name: str) -> dict:
        """What `reg rollout show` prints: the revision in force (or what the bare name resolves to) and the history."""
        history = self.history(name)
        current = history[-1] if history and history[-1].arms else None
        live = [] if current else self.registry.list_versions(name, limit=1)
        latest = live[0].ref if live else None
        return {"adapter": name, "current": current.to_dict() if current else None, "resolves_to_latest": latest,
                "history": [r.to_dict() for r in history]}

    def report(self, name: str, since: int | None = None) -> dict:
        """Per arm: requests, errors, latency, tokens, feedback; and each arm against arm A with a significance test."""
        from .rollout_report import build_report

        return build_report(self.conn, name, self.current(name), since or 1)

    # --- changing ------------------------------------------------------------------------

    def set(self, name: str, arms: list[Arm], sticky: bool = False, guard: Guard | None = None, reason: str = "",
            actor: str | None = None) -> Revision:
        """Split the bare `name` between `arms` (live versions, integer weights summing to 100)."""
        self._require_adapter(name)
        arms = self._checked_arms(name, arms)
        if guard is not None and len(arms) < 2:
            raise InvalidInput("a guard needs at least two arms: it routes the traffic back to the older ones")
        return self._append(name, "set", arms, sticky, guard, reason, actor)

    def promote(self, name: str, version: int, reason: str = "", actor: str | None = None) -> Revision:
        """Send 100 % of the bare name to `version` (stays until the next change, even when newer versions are pushed)."""
        self._require_adapter(name)
        current = self.current(name)
        arms = self._checked_arms(name, [Arm(version, WEIGHT_TOTAL)])
        return self._append(name, "promote", arms, bool(current and current.sticky), None, reason, actor)

    def rollback(self, name: str, reason: str = "", actor: str | None = None) -> Revision:
        """Go back to the state before the latest revision (a rollback of a rollback goes further back)."""
        history = self.history(name)
        if not history:
            raise RolloutNotFound(f"adapter {name!r} has no rollout to roll back (see `reg rollout show {name}`)")
        by_number = {r.revision: r for r in history}
        standing = _original(history[-1], by_number)
        target = by_number.get(standing.revision - 1)
        if target is None:
            restored = f" (revision {history[-1].revision} rolled back to its state)" if standing is not history[-1] else ""
            raise Conflict(f"{name}'s rollout has no revision before {standing.revision}{restored} to go back to; "
                           f"`reg rollout clear {name}` ends the rollout")
        arms = self._checked_arms(name, target.arms) if target.arms else []
        return self._append(name, "rollback", arms, target.sticky, target.guard, reason, actor,
                            restores=target.revision, expect=history[-1].revision)

    def clear(self, name: str, reason: str = "", actor: str | None = None) -> Revision:
        """End the rollout: the bare name resolves to the latest version again."""
        current = self.current(name)
        if current is None:
            raise RolloutNotFound(f"adapter {name!r} has no rollout to clear (see `reg rollout show {name}`)")
        return self._append(name, "clear", [], False, None, reason, actor, expect=current.revision)

    def check_guard(self, name: str) -> Revision | None:
        """If the newest arm breaches the guard of the revision in force, route everything back to the older arms.

        Returns the new revision, or None when nothing was breached (or the rollout changed meanwhile).
        """
        from .rollout_report import collect_outcomes, guard_breach

        current = self.current(name)
        if current is None or current.guard is None or len(current.arms) < 2:
            return None
        newest_requests = self.conn.execute(  # an indexed count: below min_requests there is nothing to judge yet
            "SELECT COUNT(*) FROM rollout_events WHERE adapter=? AND revision=? AND version=?",
            (name, current.revision, current.arms[-1].version),
        ).fetchone()[0]
        if newest_requests < current.guard.min_requests:
            return None
        why = guard_breach(current, collect_outcomes(self.conn, name, current.revision, current.revision))
        if why is None:
            return None
        older = _rescaled(current.arms[:-1])
        reason = f"{why}; routed back to {', '.join(f'{name}:{a.version}' for a in older)}"
        try:
            return self._append(name, "guard", older, current.sticky, None, reason, GUARD_ACTOR, expect=current.revision)
        except Conflict:  # someone changed the rollout since we read it; their revision stands
            return None

    def record(self, outcomes: list[Outcome], feedback: list[FeedbackRecord] = ()) -> None:
        """Write a batch of outcomes and feedback in one transaction (a server's writer thread calls this).

        Feedback with no adapter ("") is for a request another replica of a fleet served: it takes
        the adapter, version, revision and arm of that request's outcome or capture, whichever reaches the registry
        first; one still unknown is placed when the other replica's outcome arrives (`place_feedback`)."""
        with dbmod.transaction(self.conn) as conn:
            conn.executemany(
                "INSERT INTO rollout_events (adapter, revision, version, arm, request_id, key_hash, status, latency_ms,"
                " ttft_ms, prompt_tokens, completion_tokens, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [astuple(o) for o in outcomes],
            )
            for o in outcomes:
                place_feedback(conn, o.request_id, o.adapter, o.version, o.revision, o.arm)
            rows = []
            for f in feedback:
                served = (f.adapter, f.version, f.revision, f.arm) if f.adapter else served_as(conn, f.request_id)
                rows.append((f.request_id, *served, f.score, f.label, f.at, f.correction or None))
            conn.executemany(
                "INSERT INTO feedback (request_id, adapter, version, revision, arm, score, label, at, correction)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows,
            )

    # --- helpers -------------------------------------------------------------------------

    def _require_adapter(self, name: str) -> None:
        validate_name(name)
        self.registry._require_adapter(name)

    def _checked_arms(self, name: str, arms: list[Arm]) -> list[Arm]:
        """Arms as stored: sorted by version, each a live version of `name` with a weight of 1..100, summing to 100."""
        if not arms:
            raise InvalidInput("a rollout needs at least one arm, e.g. --arm 3=90 --arm 4=10")
        if len(arms) > MAX_ARMS:
            raise InvalidInput(f"{len(arms)} arms: a rollout has at most {MAX_ARMS}")
        spec = " ".join(f"{a.version}={a.weight}" for a in arms)
        for a in arms:
            check_version_number(a.version, f"arm version {shown(a.version)}")
            if isinstance(a.weight, bool) or not isinstance(a.weight, int) or not 1 <= a.weight <= WEIGHT_TOTAL:
                raise InvalidInput(f"arm {a.version}={a.weight}: a weight is a whole percentage from 1 to {WEIGHT_TOTAL}")
            if sum(b.version == a.version for b in arms) > 1:
                raise InvalidInput(f"version {a.version} is in more than one arm ({spec}); give each version once")
        total = sum(a.weight for a in arms)
        if total != WEIGHT_TOTAL:
            raise InvalidInput(f"weights sum to {total} ({spec}); they must sum to {WEIGHT_TOTAL}")
        bases = {}
        for a in arms:
            row = self.conn.execute("SELECT deleted_at, base_name FROM versions WHERE adapter=? AND number=?",
                                    (name, a.version)).fetchone()
            if row is None:
                raise VersionNotFound(f"arm {a.version}={a.weight}: adapter {name!r} has no version {a.version} "
                                      f"(see `reg ls {name}`)")
            if row["deleted_at"]:
                raise VersionNotFound(f"arm {a.version}={a.weight}: {name}:{a.version} was deleted at {row['deleted_at']}; "
                                      "arms must be live versions")
            bases[a.version] = row["base_name"]
        if len(set(bases.values())) > 1:
            found = ", ".join(f"{name}:{v} on {b}" for v, b in bases.items())
            raise InvalidInput(f"the arms are for different base models ({found}); one server serves one base")
        return sorted(arms, key=lambda a: a.version)

    def _append(self, name: str, action: str, arms: list[Arm], sticky: bool, guard: Guard | None, reason: str,
                actor: str | None, restores: int | None = None, expect: int | None = None) -> Revision:
        actor, now = actor or current_actor(), dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            latest = conn.execute("SELECT COALESCE(MAX(revision), 0) FROM rollout_revisions WHERE adapter=?",
                                  (name,)).fetchone()[0]
            if expect is not None and latest != expect:
                raise Conflict(f"{name}'s rollout changed while this ran (now at revision {latest}); look again and retry")
            conn.execute(
                "INSERT INTO rollout_revisions (adapter, revision, arms_json, sticky, guard_json, action, restores, reason,"
                " actor, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, latest + 1, json.dumps([asdict(a) for a in arms]), int(sticky),
                 json.dumps(asdict(guard)) if guard else None, action, restores, reason, actor, now),
            )
        return Revision(name, latest + 1, arms, sticky, guard, action, restores, reason, actor, now)


def _original(revision: Revision, by_number: dict[int, Revision]) -> Revision:
    """The revision that made the state `revision` holds: a rollback stands for the one it restored."""
    while revision.action == "rollback":
        revision = by_number[revision.restores]
    return revision


def _rescaled(arms: list[Arm]) -> list[Arm]:
    """The same arms with weights scaled up to sum to 100 (largest remainders get the spare points)."""
    total = sum(a.weight for a in arms)
    exact = [a.weight * WEIGHT_TOTAL / total for a in arms]
    weights = [int(x) for x in exact]
    by_remainder = sorted(range(len(arms)), key=lambda i: exact[i] - weights[i], reverse=True)
    for i in by_remainder[: WEIGHT_TOTAL - sum(weights)]:
        weights[i] += 1
    return [Arm(a.version, w) for a, w in zip(arms, weights)]
