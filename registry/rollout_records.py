"""What a rollout is made of: arms, guards, revisions, and the outcomes and feedback recorded per arm.

Plain records with their own validation, shared by the rollout logic (`registry/rollouts.py`), its report
(`registry/rollout_report.py`), the server's router and the remote client; they import nothing of those.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import asdict, dataclass, field, fields

from .errors import InvalidInput, shown
from .names import VERSION_PATTERN, check_version_number

WEIGHT_TOTAL = 100
MAX_ARMS = 26  # arms are labelled A, B, C ... in version order
GUARD_ACTOR = "guard"


@dataclass(frozen=True)
class Arm:
    version: int
    weight: int  # percent of the traffic


def arm_label(index: int) -> str:
    """A, B, C ...: an arm's label is its place in version order (A is the oldest version)."""
    return chr(ord("A") + index)


def parse_arm(text: str) -> Arm:
    """`3=90` -> Arm(version=3, weight=90)."""
    version, sep, weight = (part.strip() for part in text.partition("="))
    if not sep or not VERSION_PATTERN.fullmatch(version):
        raise InvalidInput(f"arm {shown(text)}: expected VERSION=WEIGHT in ASCII digits, e.g. 3=90")
    if not re.fullmatch(r"[0-9]{1,3}", weight):
        raise InvalidInput(f"arm {shown(text)}: weight {shown(weight)} is not a whole number; weights are integer percentages")
    return Arm(check_version_number(int(version), f"arm {text}"), int(weight))


def _guard_key(default, kind: type, rule: str, check, help: str):
    return field(default=default, metadata={"kind": kind, "rule": rule, "check": check, "help": help})


@dataclass(frozen=True)
class Guard:
    """Limits on the newest arm; when it breaches one after `min_requests`, traffic goes back to the older arms."""

    max_error_rate: float | None = _guard_key(None, float, "a number from 0 to 1", lambda v: 0 <= v <= 1,
                                              "highest share of the newest arm's requests that may fail")
    max_p95_ratio: float | None = _guard_key(None, float, "a number of at least 1", lambda v: v >= 1,
                                             "highest p95 latency of the newest arm, as a multiple of the other arms' p95")
    min_requests: int = _guard_key(100, int, "a whole number of at least 1", lambda v: v >= 1,
                                   "requests the newest arm serves in a revision before the guard judges it")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None and f.default is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (meta["kind"] is int and not isinstance(value, int)) or not meta["check"](value):
                raise InvalidInput(f"guard {f.name}={value!r}: must be {meta['rule']}")
        if self.max_error_rate is None and self.max_p95_ratio is None:
            raise InvalidInput("the guard sets no limit: give max_error_rate and/or max_p95_ratio")

    @classmethod
    def parse(cls, text: str) -> "Guard":
        """`max_error_rate=0.05,max_p95_ratio=1.5,min_requests=200`; a bad key or value is named in the error."""
        known = {f.name: f for f in fields(cls)}
        values: dict = {}
        for item in (part.strip() for part in text.split(",")):
            key, sep, raw = (part.strip() for part in item.partition("="))
            if not sep:
                raise InvalidInput(f"guard {item!r}: expected KEY=VALUE, e.g. max_error_rate=0.05")
            if key not in known:
                raise InvalidInput(f"unknown guard key {key!r}: use {', '.join(known)}")
            if key in values:
                raise InvalidInput(f"guard key {key!r} is given twice")
            meta = known[key].metadata
            try:
                values[key] = meta["kind"](raw)
            except ValueError:
                raise InvalidInput(f"guard {key}={raw!r}: must be {meta['rule']}") from None
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in asdict(self).items() if v is not None)


@dataclass
class Revision:
    """One state of an adapter's rollout. No arms: no rollout (the bare name resolves to the latest version)."""

    adapter: str
    revision: int
    arms: list[Arm]             # sorted by version
    sticky: bool                # a routing key always gets the same arm
    guard: Guard | None
    action: str                 # set, promote, rollback, clear or guard
    restores: int | None        # rollback: the revision whose state it copies
    reason: str
    actor: str
    at: str

    def labelled(self) -> list[tuple[str, Arm]]:
        return [(arm_label(i), arm) for i, arm in enumerate(self.arms)]

    def describe_arms(self) -> str:
        return " ".join(f"{label}={self.adapter}:{a.version}:{a.weight}%" for label, a in self.labelled()) or "none"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["arms"] = [{"arm": label, "version": a.version, "ref": f"{self.adapter}:{a.version}", "weight": a.weight}
                       for label, a in self.labelled()]
        out["guard"] = asdict(self.guard) if self.guard else None
        return out

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Revision":
        guard = json.loads(row["guard_json"]) if row["guard_json"] else None
        return cls(
            adapter=row["adapter"], revision=row["revision"], arms=[Arm(**a) for a in json.loads(row["arms_json"])],
            sticky=bool(row["sticky"]), guard=Guard(**guard) if guard else None, action=row["action"],
            restores=row["restores"], reason=row["reason"] or "", actor=row["actor"] or "", at=row["at"],
        )


@dataclass
class Outcome:
    """One request a rollout routed to an arm, as a server saw it finish."""

    adapter: str
    revision: int
    version: int
    arm: str
    request_id: str
    key_hash: str | None        # sha256 of the routing key (never the key itself), or None without one
    status: str                 # the gRPC status name: OK, CANCELLED, DATA_LOSS ...
    latency_ms: float | None
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    at: str


@dataclass
class FeedbackRecord:
    """A `Feedback(request_id, score or label)` on a served request; `version` is None for the base or a merge."""

    request_id: str
    adapter: str
    version: int | None
    revision: int | None
    arm: str
    score: float | None         # None when only a label was given
    label: str
    at: str
    correction: str = ""        # a corrected response, kept (redacted) only while the adapter's capture is on
