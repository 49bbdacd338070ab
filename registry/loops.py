"""Continuous fine-tuning loops (`reg loop`): what a loop is, how it is set, and the record of every turn of it.

A loop belongs to one adapter whose traffic is captured (`reg capture set`). Each turn captures, curates, trains a
candidate, gates it against the champion, canaries it behind a rollout guard and decides (issue 17). This module
holds the loop's settings (`LoopConfig`, with the parsers for `--schedule`, `--gate` and `--guard`), and `Loops`:
setting and showing a loop, and the low-level run records (`start_run`, `add_step`, `end_run`) the loop runner
writes as it goes. It runs no step itself and imports no torch and no trainer.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from . import db as dbmod
from .errors import Conflict, InvalidInput, NotFound, shown
from .fields import documented, flag_name
from .home import current_actor
from .names import validate_name
from .rollout_records import Guard


class LoopNotFound(NotFound):
    pass


class RunNotFound(NotFound):
    pass


# --- schedule ------------------------------------------------------------------------------------

NAMED_SCHEDULES = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
MANUAL = "manual"  # no schedule: a turn starts only by hand (`reg loop run`) or on a degrade trigger
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
MIN_SCHEDULE_S = 5 * 60  # a turn trains and evaluates a candidate: more often than this only queues them up
MAX_SCHEDULE_S = 366 * 86400  # keeps `last + interval` a date
_EVERY = re.compile(r"every\s+([0-9]{1,9})\s*([mhd])")


def parse_schedule(text: str) -> int | None:
    """`--schedule`: hourly | daily | weekly | every N(m|h|d) | manual -> seconds between turns (None: manual)."""
    spec = text.strip().lower() if isinstance(text, str) else ""
    if spec == MANUAL:
        return None
    if spec in NAMED_SCHEDULES:
        return NAMED_SCHEDULES[spec]
    every = _EVERY.fullmatch(spec)
    if every is None:
        raise InvalidInput(f"--schedule {shown(text)}: use hourly, daily, weekly, every N(m|h|d) (e.g. every 6h) or manual")
    count, unit = int(every[1]), every[2]
    seconds = count * UNIT_SECONDS[unit]
    if count < 1:
        raise InvalidInput(f"--schedule {shown(text)}: N must be at least 1")
    if not MIN_SCHEDULE_S <= seconds <= MAX_SCHEDULE_S:
        raise InvalidInput(f"--schedule {shown(text)}: the interval must be from {MIN_SCHEDULE_S // 60}m to "
                           f"{MAX_SCHEDULE_S // 86400}d")
    return seconds


# --- gate ----------------------------------------------------------------------------------------

GATE_METRICS = ("exact_match", "rouge_l", "bleu", "distinct_1", "distinct_2", "task_score", "loss", "perplexity",
                "general_perplexity")
"""The numbers trainer/evaluate.py:measure records for a model (tests/test_loops.py checks them against a real run)."""

FORGETTING_METRIC = "general_perplexity"
FORGETTING_RULE = f"{FORGETTING_METRIC}<=champion*1.05"
"""Always in the gate unless the gate has its own rule on FORGETTING_METRIC: the candidate's general-text perplexity
may rise at most 5 % over the champion's, so a candidate that forgets general English stops at the gate."""

DEFAULT_GATE = "task_score>champion"
GATE_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
_NUMBER = r"[0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?"
_RULE = re.compile(rf"([a-z0-9_]+)\s*(>=|<=|>|<)\s*(?:champion(?:\s*\*\s*({_NUMBER}))?(?:\s*([-+])\s*({_NUMBER}))?"
                   rf"|({_NUMBER}))", re.IGNORECASE)
RULE_SYNTAX = "METRIC OP champion[*FACTOR][+-MARGIN] or METRIC OP NUMBER, OP one of >=, <=, >, <"


@dataclass(frozen=True)
class GateRule:
    """One condition a candidate's evaluation must meet: against a fixed number, or against the champion's value
    scaled by `factor` and shifted by `margin` (`exact_match>=champion+0.01`, `loss<=champion*0.98`)."""

    metric: str
    op: str
    value: float | None = None  # a fixed threshold; None: relative to the champion
    factor: float = 1.0
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in GATE_METRICS:
            raise InvalidInput(f"gate metric {shown(self.metric)}: not one the evaluation records; use "
                               f"{', '.join(GATE_METRICS)}")
        if self.op not in GATE_OPS:
            raise InvalidInput(f"gate operator {shown(self.op)}: use {', '.join(GATE_OPS)}")
        if not all(math.isfinite(x) for x in (self.factor, self.margin, 0.0 if self.value is None else self.value)):
            raise InvalidInput(f"gate rule {self}: its numbers must be finite")

    @classmethod
    def parse(cls, text: str) -> "GateRule":
        match = _RULE.fullmatch(text.strip())
        if match is None:
            raise InvalidInput(f"gate rule {shown(text)}: expected {RULE_SYNTAX}, e.g. exact_match>=champion+0.01")
        metric, op, factor, sign, margin, value = match.groups()
        if value is not None:
            return cls(metric.lower(), op, value=float(value))
        return cls(metric.lower(), op, factor=float(factor or 1), margin=float(margin or 0) * (-1 if sign == "-" else 1))

    def __str__(self) -> str:
        if self.value is not None:
            return f"{self.metric}{self.op}{self.value:g}"
        return f"{self.metric}{self.op}champion{self._adjustment()}"

    def _adjustment(self) -> str:
        """What is done to the champion's value: `*1.05`, `+0.01`, `*0.9-0.1` or nothing."""
        return (f"*{self.factor:g}" if self.factor != 1 else "") + (f"{self.margin:+g}" if self.margin else "")

    def check(self, candidate: dict, champion: dict) -> tuple[bool, str]:
        """(passed, a line with the numbers): `exact_match: candidate 0.62 >= 0.61 (champion 0.6+0.01): passed`.

        A value that is missing or not a finite number fails: a rule that cannot be checked never lets a candidate by.
        """
        mine = _finite(candidate.get(self.metric))
        if mine is None:
            return False, f"{self.metric}: the candidate's evaluation has no finite {self.metric} ({self}): failed"
        if self.value is not None:
            threshold, where = self.value, ""
        else:
            theirs = _finite(champion.get(self.metric))
            if theirs is None:
                return False, f"{self.metric}: the champion's evaluation has no finite {self.metric} ({self}): failed"
            threshold = theirs * self.factor + self.margin
            where = f" (champion {theirs:.4g}{self._adjustment()})"
        passed = GATE_OPS[self.op](mine, threshold)
        return passed, f"{self.metric}: candidate {mine:.4g} {self.op} {threshold:.4g}{where}: {'passed' if passed else 'failed'}"


def _finite(value) -> float | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) else None


def parse_gate(text: str) -> list[GateRule]:
    """`--gate`: comma-separated rules; the forgetting rule is added unless one of them is on FORGETTING_METRIC."""
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise InvalidInput(f"--gate {shown(text)}: give at least one rule, {RULE_SYNTAX}")
    return with_forgetting_rule([GateRule.parse(item) for item in items])


def parse_floor(text: str) -> list[GateRule]:
    """`--eval-floor`: comma-separated `METRIC OP NUMBER` rules the champion must keep meeting (no forgetting rule)."""
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise InvalidInput(f"--eval-floor {shown(text)}: give at least one rule, METRIC OP NUMBER (e.g. exact_match>=0.6)")
    return [GateRule.parse(item) for item in items]


def with_forgetting_rule(rules: list[GateRule]) -> list[GateRule]:
    if any(rule.metric == FORGETTING_METRIC for rule in rules):
        return list(rules)
    return [*rules, GateRule.parse(FORGETTING_RULE)]


def check_gate(rules: list[GateRule], candidate: dict, champion: dict) -> tuple[bool, list[str]]:
    """Every rule checked (not only up to the first failure), so the recorded reason shows all the numbers."""
    results = [rule.check(candidate, champion) for rule in rules]
    return all(passed for passed, _ in results), [line for _, line in results]


# --- guard ---------------------------------------------------------------------------------------

DEFAULT_GUARD = "error_rate<=0.02,p95_ratio<=1.5"
_GUARD_LIMITS = {"error_rate": "max_error_rate", "p95_ratio": "max_p95_ratio"}


def parse_guard(text: str) -> Guard:
    """`--guard`: `error_rate<=0.02,p95_ratio<=1.5[,min_requests=200]`, or Guard's own `max_error_rate=0.02,...`."""
    items = []
    for item in (part.strip() for part in text.split(",")):
        key, sep, raw = (part.strip() for part in item.partition("<="))
        if sep and key in _GUARD_LIMITS:
            items.append(f"{_GUARD_LIMITS[key]}={raw}")
        elif sep or re.search(r"[<>]", item):
            raise InvalidInput(f"guard {shown(item)}: a limit is {' or '.join(f'{k}<=NUMBER' for k in _GUARD_LIMITS)}, "
                               "or KEY=VALUE (min_requests=200)")
        else:
            items.append(item)
    return Guard.parse(",".join(items))


# --- the loop's settings -------------------------------------------------------------------------

MODES = ("retrain", "continue")
MAX_CANARY_PERCENT = 50  # beyond half the traffic a canary is a switch-over, not a test


@dataclass
class LoopConfig:
    """One adapter's loop: when a turn starts, what data it trains on, what a candidate must beat, how it goes live."""

    schedule: str = documented("weekly", "When a turn is due: hourly, daily, weekly, every N(m|h|d) (at least 5m), "
                                         "or manual (only by hand or a degrade trigger).")
    min_new_examples: int = documented(500, "Curated examples, new since the champion's training, a turn needs before it "
                                            "trains; with fewer it is skipped.")
    gate: list[GateRule] = documented(
        help=f"What the candidate must meet, against the champion on the same gate set: comma-separated "
             f"{RULE_SYNTAX}; metrics: {', '.join(GATE_METRICS)}. {FORGETTING_RULE} is always added unless you give a "
             f"rule on {FORGETTING_METRIC}.", factory=lambda: parse_gate(DEFAULT_GATE))
    canary: int = documented(10, f"Percent of routing keys (sticky) the candidate serves in its canary, 1 to "
                                 f"{MAX_CANARY_PERCENT}.")
    promote_after: int = documented(2000, "Requests the candidate's arm serves before the promote-or-roll-back decision.")
    guard: Guard = documented(parse_guard(DEFAULT_GUARD), "The canary's rollout guard (rolls back at any time): "
                                                          "error_rate<=X,p95_ratio<=Y[,min_requests=N] "
                                                          "(or max_error_rate=X,...).")
    min_score: float = documented(0.5, "Curation keeps captured responses whose feedback score is at least this.")
    holdout: float = documented(0.1, "Fraction of the curated examples held out as a fresh slice of the gate set, 0 to <1.")
    mode: str = documented("retrain", "retrain: from the base, on the champion's data plus the curated data; "
                                      "continue: from the champion's weights, on the curated data.")
    confidence: float = documented(0.95, "Confidence of the two-proportion test that decides the canary (0.5 to <1).")
    max_error_rate: float | None = documented(None, "Degrade trigger: start a turn when the champion's live error rate "
                                                    "rises above this (0 to 1).")
    max_negative_rate: float | None = documented(None, "Degrade trigger: start a turn when the share of the champion's "
                                                       "feedback that is negative rises above this (0 to 1).")
    eval_every: str | None = documented(None, "Degrade trigger: evaluate the champion this often (hourly, daily, "
                                              "weekly, every N(m|h|d)) on --eval-data, and start a turn when it falls "
                                              "below --eval-floor.")
    eval_data: str | None = documented(None, "The fixed evaluation set of --eval-every: a JSONL file (alpaca, "
                                             "sharegpt, chat or completion; see --eval-type), read at each evaluation.")
    eval_type: str = documented("alpaca", "The format of --eval-data.")
    eval_floor: list[GateRule] = documented(help="What the champion must keep scoring on --eval-data: comma-separated "
                                                 "METRIC OP NUMBER rules, e.g. exact_match>=0.6.", factory=list)

    def __post_init__(self) -> None:
        parse_schedule(self.schedule)
        self._check("min_new_examples", int, lambda v: v >= 1, "a whole number of at least 1")
        self._check("canary", int, lambda v: 1 <= v <= MAX_CANARY_PERCENT, f"a whole percent from 1 to {MAX_CANARY_PERCENT}")
        self._check("promote_after", int, lambda v: v >= 1, "a whole number of at least 1")
        self._check("min_score", float, lambda v: True, "a number")
        self._check("holdout", float, lambda v: 0 <= v < 1, "a fraction from 0 to less than 1")
        self._check("confidence", float, lambda v: 0.5 <= v < 1, "from 0.5 to less than 1")
        for name in ("max_error_rate", "max_negative_rate"):
            if getattr(self, name) is not None:
                self._check(name, float, lambda v: 0 <= v <= 1, "a rate from 0 to 1")
        if self.mode not in MODES:
            raise InvalidInput(f"--mode {shown(self.mode)}: use {' or '.join(MODES)}")
        if not isinstance(self.guard, Guard):
            raise InvalidInput(f"--guard {shown(self.guard)}: not a guard")
        if not self.gate or not all(isinstance(rule, GateRule) for rule in self.gate):
            raise InvalidInput(f"--gate {shown(self.gate)}: give at least one rule, {RULE_SYNTAX}")
        self.gate = with_forgetting_rule(self.gate)
        if self.eval_every is not None:
            if parse_schedule(self.eval_every) is None:
                raise InvalidInput(f"--eval-every {shown(self.eval_every)}: give an interval (daily, every 6h, ...), not manual")
            if not self.eval_data or not self.eval_floor:
                raise InvalidInput("--eval-every needs --eval-data FILE and --eval-floor RULES (e.g. exact_match>=0.6)")
        relative = [str(rule) for rule in self.eval_floor if rule.value is None]
        if relative:
            raise InvalidInput(f"--eval-floor {relative[0]}: a floor is a fixed number (METRIC OP NUMBER), not the champion")

    def _check(self, name: str, kind: type, ok, rule: str) -> None:
        value = getattr(self, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (kind is int and not isinstance(value, int)) or not ok(value):
            raise InvalidInput(f"{flag_name(self.__dataclass_fields__[name])} {shown(value)}: must be {rule}")

    @property
    def interval_s(self) -> int | None:
        """Seconds between scheduled turns; None for a manual loop."""
        return parse_schedule(self.schedule)

    def next_due(self, last: datetime, now: datetime) -> datetime | None:
        """When the next scheduled turn is due after one at `last`: `now` if that time has passed; None when manual."""
        interval = self.interval_s
        return None if interval is None else max(last + timedelta(seconds=interval), now)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["gate"] = [str(rule) for rule in self.gate]
        out["eval_floor"] = [str(rule) for rule in self.eval_floor]
        out["guard"] = asdict(self.guard)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LoopConfig":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidInput(f"unknown loop setting {shown(unknown[0])}: use {', '.join(known)}")
        values = dict(data)
        if "gate" in values:
            values["gate"] = [GateRule.parse(rule) for rule in values["gate"]]
        if "eval_floor" in values:
            values["eval_floor"] = [GateRule.parse(rule) for rule in values["eval_floor"]]
        if "guard" in values:
            values["guard"] = Guard(**values["guard"])
        return cls(**values)


# --- turns of a loop ------------------------------------------------------------------------------

TRIGGERS = ("schedule", "new_examples", "degraded", "manual")
RUN_STEPS = ("capture", "curate", "train", "gate", "canary", "decide")
ENDED_STATES = ("promoted", "stopped_at_gate", "rolled_back", "failed", "skipped")
IDLE = "idle"
RUN_COLUMNS = ("candidate", "job_id", "dataset_sha256")  # step values that are also kept in the run's own columns
SHOWN_RUNS = 20


class Loops:
    """The loops of a registry: `registry.loops.set("support", LoopConfig(schedule="daily"))`."""

    def __init__(self, registry):
        self.registry = registry

    @property
    def conn(self) -> sqlite3.Connection:
        return self.registry.conn

    # --- the loop ------------------------------------------------------------------------

    def set(self, adapter: str, config: LoopConfig, actor: str | None = None) -> LoopConfig:
        """Create or replace `adapter`'s loop (a replaced loop keeps its enabled state and its runs)."""
        validate_name(adapter)
        actor, now = actor or current_actor(), dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            self.registry._require_adapter(adapter)
            if conn.execute("SELECT 1 FROM capture_configs WHERE adapter=?", (adapter,)).fetchone() is None:
                raise Conflict(f"no capture for {adapter}: `reg capture set {adapter}` first")
            conn.execute(
                "INSERT INTO loops (adapter, config_json, enabled, actor, created_at, updated_at) VALUES (?, ?, 1, ?, ?, ?)"
                " ON CONFLICT(adapter) DO UPDATE SET config_json=excluded.config_json, actor=excluded.actor,"
                " updated_at=excluded.updated_at",
                (adapter, json.dumps(config.to_dict()), actor, now, now),
            )
        return config

    def get(self, adapter: str) -> LoopConfig:
        return LoopConfig.from_dict(json.loads(self._loop_row(adapter)["config_json"]))

    def enable(self, adapter: str, actor: str | None = None) -> None:
        self._set_enabled(adapter, True, actor)

    def disable(self, adapter: str, actor: str | None = None) -> None:
        """No scheduled or triggered turn starts while disabled; a turn already running goes on to its end."""
        self._set_enabled(adapter, False, actor)

    def show(self, adapter: str, limit: int | None = SHOWN_RUNS) -> dict:
        """What `reg loop show` prints: the config, the state, the next scheduled turn and the runs, newest first."""
        row = self._loop_row(adapter)
        config = LoopConfig.from_dict(json.loads(row["config_json"]))
        history = self.runs(adapter, limit)
        last = next(iter(self.runs(adapter, 1)), None)  # also with limit=0: the schedule counts from it
        running = last if last and last["ended_at"] is None else None
        next_trigger = None
        if row["enabled"]:
            since = datetime.fromisoformat(last["started_at"] if last else row["created_at"])
            due = config.next_due(since, datetime.fromisoformat(dbmod.utcnow()))
            next_trigger = due.isoformat(timespec="milliseconds") if due else None
        return {"adapter": adapter, "config": config.to_dict(), "enabled": bool(row["enabled"]),
                "state": running["state"] if running else IDLE, "last_run": last, "next_trigger": next_trigger,
                "actor": row["actor"], "created_at": row["created_at"], "updated_at": row["updated_at"],
                "history": history}

    def runs(self, adapter: str, limit: int | None = None) -> list[dict]:
        """`adapter`'s runs, newest first (`limit` of them; None: all)."""
        sql = "SELECT * FROM loop_runs WHERE adapter=? ORDER BY id DESC" + ("" if limit is None else " LIMIT ?")
        return [_run_dict(r) for r in self.conn.execute(sql, (adapter,) + (() if limit is None else (limit,)))]

    # --- runs ----------------------------------------------------------------------------

    def start_run(self, adapter: str, trigger: str, champion: int | None) -> int:
        """Record a new turn (state `capture`); refused while another turn of `adapter` has not ended."""
        if trigger not in TRIGGERS:
            raise InvalidInput(f"loop trigger {shown(trigger)}: use {', '.join(TRIGGERS)}")
        if champion is not None and (isinstance(champion, bool) or not isinstance(champion, int)):
            raise InvalidInput(f"loop champion {shown(champion)}: a version number, or None before the first version")
        now = dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            self._loop_row(adapter)
            running = conn.execute("SELECT id, state FROM loop_runs WHERE adapter=? AND ended_at IS NULL",
                                   (adapter,)).fetchone()
            if running is not None:
                raise Conflict(f"{adapter}'s loop run {running['id']} is still in {running['state']}: never two "
                               f"candidates of one adapter in flight")
            cursor = conn.execute(
                "INSERT INTO loop_runs (adapter, trigger, state, champion, steps_json, reason, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, '[]', '', ?, ?)", (adapter, trigger, RUN_STEPS[0], champion, now, now))
        return cursor.lastrowid

    def add_step(self, run_id: int, step: str, **numbers) -> dict:
        """Append {step, at, **numbers} to the run's steps and make `step` its state; steps only move forward.

        `candidate`, `job_id` and `dataset_sha256` among `numbers` are also set on the run itself.
        """
        if step not in RUN_STEPS:
            raise InvalidInput(f"loop step {shown(step)}: use {', '.join(RUN_STEPS)}")
        if "at" in numbers:
            raise InvalidInput(f"loop step {step}: `at` is the time the step is recorded, not a value to give")
        entry = {"step": step, "at": dbmod.utcnow(), **numbers}
        try:
            encoded = json.dumps(entry, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"loop step {step}: its values must be JSON numbers, strings or lists ({exc})") from None
        with dbmod.transaction(self.conn) as conn:
            row = self._open_run(run_id)
            if RUN_STEPS.index(step) < RUN_STEPS.index(row["state"]):
                raise Conflict(f"loop run {run_id} is at {row['state']}: it cannot go back to {step}")
            steps = json.loads(row["steps_json"]) + [json.loads(encoded)]
            columns = {k: numbers[k] for k in RUN_COLUMNS if k in numbers}
            assignments = "".join(f", {k}=?" for k in columns)
            conn.execute(f"UPDATE loop_runs SET state=?, steps_json=?, updated_at=?{assignments} WHERE id=?",
                         (step, json.dumps(steps), entry["at"], *columns.values(), run_id))
        return entry

    def end_run(self, run_id: int, state: str, reason: str = "") -> None:
        """End the run in one of ENDED_STATES, with why (the gate's lines, the guard's breach, the error)."""
        if state not in ENDED_STATES:
            raise InvalidInput(f"loop run end state {shown(state)}: use {', '.join(ENDED_STATES)}")
        now = dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            self._open_run(run_id)
            conn.execute("UPDATE loop_runs SET state=?, reason=?, updated_at=?, ended_at=? WHERE id=?",
                         (state, reason, now, now, run_id))

    # --- helpers -------------------------------------------------------------------------

    def _loop_row(self, adapter: str) -> sqlite3.Row:
        validate_name(adapter)
        row = self.conn.execute("SELECT * FROM loops WHERE adapter=?", (adapter,)).fetchone()
        if row is None:
            self.registry._require_adapter(adapter)
            raise LoopNotFound(f"adapter {adapter!r} has no loop: `reg loop set {adapter}` first")
        return row

    def _open_run(self, run_id: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM loop_runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no loop run {shown(run_id)}")
        if row["ended_at"] is not None:
            raise Conflict(f"loop run {run_id} already ended ({row['state']} at {row['ended_at']})")
        return row

    def _set_enabled(self, adapter: str, enabled: bool, actor: str | None) -> None:
        actor, now = actor or current_actor(), dbmod.utcnow()
        with dbmod.transaction(self.conn) as conn:
            self._loop_row(adapter)
            conn.execute("UPDATE loops SET enabled=?, actor=?, updated_at=? WHERE adapter=?",
                         (int(enabled), actor, now, adapter))


def _run_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    out["steps"] = json.loads(out.pop("steps_json"))
    return out
