"""Capture: an adapter's served traffic kept as data, opt-in per adapter (`reg capture set NAME`), off by default.

A server with capture on for an adapter keeps a sample of its requests: the prompt (or chat messages), the response,
the version and rollout arm that served it, its latency, the routing key's hash. Feedback given later for the
request id (score, label, an optional corrected response) is the rollout feedback already recorded; a correction is
kept beside it only while capture is on. Everything passes the capture config's redaction patterns on the server,
before it is buffered, and again here before it is written. Stored rows are bounded per adapter: older than the
retention are deleted, and past `max_bytes` the oldest go first. `reg capture clear` deletes an adapter's captured
requests and corrections.

Curating a dataset from captured traffic is the trainer's (`trainer/curate.py`); this module only stores and reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from .db import transaction, utcnow
from .rollouts import place_feedback
from .errors import InvalidInput, NotFound, shown
from .fields import documented
from .names import validate_name

DEFAULT_REDACTIONS = (
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",  # e-mail addresses
    r"\b(?:\d[ -]?){13,19}\b",  # card-like numbers (13 to 19 digits, spaced or not)
)
REDACTED = "[redacted]"
MAX_PATTERNS = 32
MAX_PATTERN_CHARS = 512
MAX_TEXT_CHARS = 64 * 1024  # a prompt or response longer than this is cut (and marked) before it is stored
MAX_BYTES_LIMIT = 64 * 2**30


@dataclass(frozen=True)
class CaptureConfig:
    """How much of an adapter's traffic is kept, for how long, and what is removed from it first."""

    sample: float = documented(1.0, "Share of the adapter's requests kept, 0 < sample <= 1.")
    retain_s: int = documented(30 * 86400, "Captured requests older than this are deleted (seconds; `--retain 30d`).")
    max_bytes: int = documented(256 * 2**20, "Most bytes of captured text kept for the adapter; past it the oldest go.")
    redact: tuple[str, ...] = documented(DEFAULT_REDACTIONS, "Regular expressions whose matches are replaced by "
                                         f"{REDACTED} in prompts, responses and corrections before anything is stored.")

    def __post_init__(self) -> None:
        if not (isinstance(self.sample, (int, float)) and 0 < self.sample <= 1):
            raise InvalidInput(f"--sample {shown(self.sample)}: expected a share of requests, 0 < sample <= 1")
        if not (isinstance(self.retain_s, int) and self.retain_s >= 60):
            raise InvalidInput(f"--retain {shown(self.retain_s)} s: keep captured requests at least a minute")
        if not (isinstance(self.max_bytes, int) and 1024 <= self.max_bytes <= MAX_BYTES_LIMIT):
            raise InvalidInput(f"--max-bytes {shown(self.max_bytes)}: expected 1KB to 64GiB")
        if len(self.redact) > MAX_PATTERNS:
            raise InvalidInput(f"--redact: {len(self.redact)} patterns, more than {MAX_PATTERNS}")
        for pattern in self.redact:
            if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
                raise InvalidInput(f"--redact {shown(pattern)}: expected a regular expression of 1 to {MAX_PATTERN_CHARS} characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InvalidInput(f"--redact {shown(pattern)}: not a regular expression ({exc})") from None

    def redactor(self) -> "Redactor":
        return Redactor(self.redact)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "redact": list(self.redact)})

    @classmethod
    def from_json(cls, text: str) -> "CaptureConfig":
        d = json.loads(text)
        return cls(d["sample"], d["retain_s"], d["max_bytes"], tuple(d["redact"]))


class Redactor:
    """The redaction patterns of a capture config, compiled once, applied to every text before it is kept."""

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = [re.compile(p) for p in patterns]

    def __call__(self, text: str) -> str:
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS] + " [cut]"
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text


@dataclass
class CapturedRequest:
    """One served request as capture keeps it (texts already redacted)."""

    adapter: str
    version: int
    revision: int | None         # the rollout revision that routed it, if any
    arm: str                     # its rollout arm ("" for none)
    request_id: str
    key_hash: str                # the routing key's hash ("" for none)
    prompt: str                  # a raw prompt, or "" for chat messages
    messages: list[dict] = field(default_factory=list)  # chat messages [{role, content}], or [] for a raw prompt
    response: str = ""
    status: str = "OK"
    latency_ms: float | None = None
    at: str = ""

    @property
    def bytes(self) -> int:
        return len(self.prompt.encode()) + len(self.response.encode()) + sum(len(m["content"].encode()) for m in self.messages)


class Captures:
    """Capture configs and captured requests of one registry (local; the server writes through its own connection)."""

    def __init__(self, registry):
        self.registry = registry

    @property
    def conn(self):
        return self.registry.conn

    def _require_adapter(self, name: str) -> None:
        validate_name(name)
        self.registry._require_adapter(name)

    # --- configs ---------------------------------------------------------------------------------------

    def set(self, adapter: str, config: CaptureConfig, actor: str | None = None) -> CaptureConfig:
        self._require_adapter(adapter)  # NotFound for an unknown adapter: nothing written
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO capture_configs (adapter, sample, retain_s, max_bytes, redact_json, actor, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(adapter) DO UPDATE SET sample=excluded.sample,"
                " retain_s=excluded.retain_s, max_bytes=excluded.max_bytes, redact_json=excluded.redact_json,"
                " actor=excluded.actor, updated_at=excluded.updated_at",
                (adapter, config.sample, config.retain_s, config.max_bytes, json.dumps(list(config.redact)),
                 actor or "", utcnow()))
        return config

    def get(self, adapter: str) -> CaptureConfig | None:
        row = self.conn.execute("SELECT * FROM capture_configs WHERE adapter=?", (adapter,)).fetchone()
        return None if row is None else _config(row)

    def all(self) -> dict[str, CaptureConfig]:
        """Every adapter with capture on, and its config (what a server polls)."""
        return {row["adapter"]: _config(row) for row in self.conn.execute("SELECT * FROM capture_configs")}

    def change_id(self) -> str:
        """Changes whenever a capture config is set or turned off (a cheap poll for servers)."""
        row = self.conn.execute("SELECT COUNT(*), MAX(updated_at) FROM capture_configs").fetchone()
        return f"{row[0]}:{row[1]}"

    def off(self, adapter: str) -> bool:
        """Stop capturing `adapter` (what was captured stays until `clear` or its retention). Whether it was on."""
        with transaction(self.conn):
            return self.conn.execute("DELETE FROM capture_configs WHERE adapter=?", (adapter,)).rowcount > 0

    # --- captured requests ------------------------------------------------------------------------------

    def record(self, requests: list[CapturedRequest]) -> int:
        """Store a server's batch (of adapters with capture on; texts redacted again with the config in force),
        then apply each touched adapter's retention and size bound. Returns the requests stored."""
        configs, stored, touched = self.all(), 0, set()
        redactors = {adapter: config.redactor() for adapter, config in configs.items()}  # compiled once a batch
        with transaction(self.conn):
            for r in requests:
                redact = redactors.get(r.adapter)
                if redact is None:  # capture was turned off since the server sampled it
                    continue
                kept = CapturedRequest(r.adapter, r.version, r.revision, r.arm, r.request_id, r.key_hash,
                                       redact(r.prompt), [{"role": m["role"], "content": redact(m["content"])}
                                                          for m in r.messages], redact(r.response), r.status,
                                       r.latency_ms, r.at or utcnow())
                self.conn.execute(
                    "INSERT INTO captures (adapter, version, revision, arm, request_id, key_hash, prompt, messages_json,"
                    " response, status, latency_ms, bytes, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (kept.adapter, kept.version, kept.revision, kept.arm, kept.request_id, kept.key_hash, kept.prompt,
                     json.dumps(kept.messages), kept.response, kept.status, kept.latency_ms, kept.bytes, kept.at))
                place_feedback(self.conn, kept.request_id, kept.adapter, kept.version, kept.revision, kept.arm)
                stored += 1
                touched.add(r.adapter)
            for adapter in touched:
                self._bound(adapter, configs[adapter])
        return stored

    def _bound(self, adapter: str, config: CaptureConfig) -> None:
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=config.retain_s)).isoformat(timespec="milliseconds")
        self.conn.execute("DELETE FROM captures WHERE adapter=? AND at < ?", (adapter, cutoff))  # utcnow's format
        total = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM captures WHERE adapter=?", (adapter,)).fetchone()[0]
        if total > config.max_bytes:  # the oldest go first, until the rest fit
            over, doomed = total - config.max_bytes, []
            for row in self.conn.execute("SELECT id, bytes FROM captures WHERE adapter=? ORDER BY id", (adapter,)):
                if over <= 0:
                    break
                doomed.append((row["id"],))
                over -= row["bytes"]
            self.conn.executemany("DELETE FROM captures WHERE id=?", doomed)

    def expire(self) -> int:
        """Apply every adapter's retention now (a server calls it now and then; `record` does it per batch)."""
        removed = 0
        with transaction(self.conn):
            for adapter, config in self.all().items():
                before = self.conn.total_changes
                self._bound(adapter, config)
                removed += self.conn.total_changes - before
        return removed

    def clear(self, adapter: str) -> int:
        """Delete everything captured of `adapter` (requests and corrections); returns the requests deleted."""
        self._require_adapter(adapter)
        with transaction(self.conn):
            self.conn.execute("UPDATE feedback SET correction=NULL WHERE adapter=?", (adapter,))
            return self.conn.execute("DELETE FROM captures WHERE adapter=?", (adapter,)).rowcount

    def rows(self, adapter: str, since: str | None = None, limit: int | None = None) -> list[dict]:
        """Captured requests of `adapter` (at or after `since`, an ISO time), oldest first, each with its newest
        feedback (score, label, correction) where one was given."""
        rows = self.conn.execute(
            "SELECT c.*, f.score AS feedback_score, f.label AS feedback_label, f.correction AS correction"
            " FROM captures c LEFT JOIN feedback f ON f.id = (SELECT MAX(id) FROM feedback WHERE request_id = c.request_id)"
            " WHERE c.adapter=? AND c.at >= ? ORDER BY c.id" + (" LIMIT ?" if limit else ""),
            (adapter, since or "", *((limit,) if limit else ())))
        return [_captured(r) for r in rows]

    def summary(self, adapter: str) -> dict:
        """What `reg capture show` prints: the config, and how much is captured."""
        config = self.get(adapter)
        row = self.conn.execute(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(bytes), 0) AS bytes, MIN(at) AS oldest, MAX(at) AS newest,"
            " SUM(EXISTS(SELECT 1 FROM feedback f WHERE f.request_id = c.request_id)) AS with_feedback"
            " FROM captures c WHERE adapter=?", (adapter,)).fetchone()
        return {"adapter": adapter, "on": config is not None, "config": None if config is None else {
                    **asdict(config), "redact": list(config.redact)},
                "requests": row["requests"], "bytes": row["bytes"], "with_feedback": row["with_feedback"] or 0,
                "oldest": row["oldest"], "newest": row["newest"]}


def require_capture(captures: Captures, adapter: str) -> CaptureConfig:
    config = captures.get(adapter)
    if config is None:
        raise NotFound(f"no capture for {adapter!r}: `reg capture set {adapter}` first")
    return config


def _config(row) -> CaptureConfig:
    return CaptureConfig(row["sample"], row["retain_s"], row["max_bytes"], tuple(json.loads(row["redact_json"])))


def _captured(row) -> dict:
    d = dict(row)
    d["messages"] = json.loads(d.pop("messages_json") or "[]")
    return d
