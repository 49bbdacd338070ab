"""The continuous fine-tuning loop: captured traffic -> curated data -> a candidate -> the gate -> a canary -> a decision.

`LoopRunner.tick()` moves every enabled loop one step, and is safe to call as often as you like (`reg loop tick`
from cron, or `reg loop daemon`): a loop with no turn in flight starts one when it is due (its schedule, enough
new curated examples, or the champion degrading); a turn in flight goes on when what it waits for has happened
(its training job ended, its canary served enough requests). Each step is recorded on the turn (`registry/loops.py`)
with its numbers, so `reg loop show` and the portal show how far it got and why it ended. The steps:

1. capture: how much the adapter's capture holds since the champion was made.
2. curate: `trainer/curate.py` on it (good feedback or corrections, deduplicated, nothing the champion trained on),
   a fresh slice held out; too few new examples and a scheduled turn is skipped.
3. train: a fine-tuning job (`trainer/jobs/submit.py`, so a worker runs it) from the champion's frozen config on the
   champion's data plus the curated data (mode retrain), or the curated data alone from the champion's weights
   (mode continue: `lora_from_version`).
4. gate: the candidate and the champion evaluated on the same gate set (the champion's held-out examples plus the
   fresh slice); the gate's rules (and the forgetting rule) decide; a failed gate ends the turn.
5. canary: a sticky rollout revision sends `canary` percent of routing keys to the candidate, under the guard.
6. decide: once the candidate's arm served `promote_after` requests, promote it (100 %, `@prod` moved) when the
   report does not show it worse at the configured confidence (feedback and request success), else roll back. A
   guard that rolled back first ends the turn as rolled back.

The champion is `NAME@prod` when that alias exists, else the latest version.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from registry import Registry
from registry.blobs import sha256_file
from registry.errors import LoradockError
from registry.jobs import SubmitRequest, TERMINAL
from registry.loops import LoopConfig, check_gate, parse_schedule
from registry.rollout_records import GUARD_ACTOR, Arm

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "prod"
MAX_LINEAGE = 32  # continued versions followed back to collect the data a retrain needs
GATE_MAX_EXAMPLES = 512  # at most this many gate-set examples are answered by each model (all of them, normally)


class LoopRunner:
    """Moves the loops of `registry` (a local one: it reads capture and submits jobs there) one step at a time."""

    def __init__(self, registry: Registry, say=None):
        self.registry = registry
        self.say = say or (lambda line: logger.info(line))

    # --- ticking --------------------------------------------------------------------------------------

    def tick(self) -> None:
        """One step of every enabled loop (each loop's failure is recorded on its turn; the others go on)."""
        for row in self.registry.conn.execute("SELECT adapter FROM loops WHERE enabled=1 ORDER BY adapter").fetchall():
            self.step(row["adapter"])

    def step(self, adapter: str, trigger: str | None = None) -> dict | None:
        """Advance `adapter`'s turn in flight, or start one (on `trigger`, or when one is due). The turn, or None."""
        open_run = self._open_run(adapter)
        if open_run is None:
            trigger = trigger or self.due(adapter)
            if trigger is None:
                return None
            return self._start(adapter, trigger)
        try:
            self._advance(adapter, open_run)
        except LoradockError as exc:  # a step that cannot go on: the turn ends with the one-line reason
            self._end(open_run["id"], "failed", " ".join(str(exc).split()))
        return self._run(open_run["id"])

    def due(self, adapter: str) -> str | None:
        """Why a turn of `adapter` should start now (schedule, new_examples, degraded), or None."""
        loops, show = self.registry.loops, self.registry.loops.show(adapter, limit=1)
        config = loops.get(adapter)
        if show["next_trigger"] and show["next_trigger"] <= _now():
            return "schedule"
        champion = self.champion(adapter)
        if champion is None:
            return None
        last = show["last_run"]
        since = max(champion.created_at, last["started_at"]) if last else champion.created_at
        if self._degraded(adapter, champion, config, since) or self._below_floor(adapter, champion, config):
            return "degraded"
        if self.registry.captures.summary(adapter)["requests"] and self._curate(adapter, champion, config)[0].counts[
                "kept"] >= config.min_new_examples:
            return "new_examples"
        return None

    # --- the steps ------------------------------------------------------------------------------------

    def champion(self, adapter: str):
        aliases = self.registry.aliases(adapter)
        ref = f"{adapter}@{CHAMPION_ALIAS}" if CHAMPION_ALIAS in aliases else adapter
        try:
            return self.registry.resolve(ref)
        except LoradockError:
            return None

    def _start(self, adapter: str, trigger: str) -> dict:
        config = self.registry.loops.get(adapter)
        champion = self.champion(adapter)
        run_id = self.registry.loops.start_run(adapter, trigger, champion.number if champion else None)
        self.say(f"{adapter}: turn {run_id} started ({trigger}); champion {champion.ref if champion else 'none'}")
        try:
            if champion is None:
                raise LoopStop("failed", f"{adapter} has no version to improve on")
            captured = self.registry.captures.summary(adapter)
            self._step(run_id, "capture", requests=captured["requests"], with_feedback=captured["with_feedback"],
                       since=champion.created_at)
            curated, excluded = self._curate(adapter, champion, config)
            counts = curated.counts
            with tempfile.TemporaryDirectory(prefix="loradock-loop-") as tmp:
                from .curate import write

                data = Path(tmp) / f"{adapter}-curated-run{run_id}.jsonl"
                write(curated.train, curated.format, data)
                sha = sha256_file(data)
                self._step(run_id, "curate", **counts, format=curated.format, dataset_sha256=sha, excluded=excluded)
                if counts["kept"] < config.min_new_examples and trigger != "manual":
                    raise LoopStop("skipped", f"{counts['kept']} new curated examples, fewer than min_new_examples "
                                              f"{config.min_new_examples}")
                if not counts["kept"]:
                    raise LoopStop("skipped", "no curated example: nothing new to train on")
                heldout = Path(tmp) / "fresh.jsonl"
                write(curated.heldout, curated.format, heldout)
                job = self._submit(adapter, champion, config, data, curated.format, run_id)
                self._keep_fresh_slice(run_id, heldout)
            self._step(run_id, "train", job_id=job.id, mode=config.mode)
        except LoopStop as stop:
            self._end(run_id, stop.state, stop.reason)
        except LoradockError as exc:
            self._end(run_id, "failed", " ".join(str(exc).split()))
        return self._run(run_id)

    def _advance(self, adapter: str, run: dict) -> None:
        config = self.registry.loops.get(adapter)
        try:
            if run["state"] == "train":
                self._after_training(adapter, run, config)
            elif run["state"] == "canary":
                self._watch_canary(adapter, run, config)
        except LoopStop as stop:
            self._end(run["id"], stop.state, stop.reason)

    def _after_training(self, adapter: str, run: dict, config: LoopConfig) -> None:
        job = self.registry.jobs.get(run["job_id"])
        if job.state not in TERMINAL:
            return  # still queued or training: a later tick looks again
        if job.state != "succeeded" or not job.result_version:
            raise LoopStop("failed", f"job {job.id} {job.state}" + (f": {job.error}" if job.error else ""))
        candidate = self.registry.resolve(job.result_version)
        champion = self.registry.resolve(f"{adapter}:{run['champion']}")
        passed, lines, numbers = self._gate(run, champion, candidate, config)
        self._step(run["id"], "gate", candidate=candidate.number, passed=passed, rules=lines, **numbers)
        for line in lines:
            self.say(f"    {line}")
        if not passed:
            raise LoopStop("stopped_at_gate", "; ".join(line for line in lines if line.endswith(": failed")))
        weight = config.canary
        revision = self.registry.rollouts.set(
            adapter, [Arm(champion.number, 100 - weight), Arm(candidate.number, weight)], sticky=True, guard=config.guard,
            reason=f"loop turn {run['id']}: canary of {candidate.ref} ({weight} %)", actor="loop")
        self._step(run["id"], "canary", revision=revision.revision, percent=weight, promote_after=config.promote_after)
        self.say(f"{adapter}: turn {run['id']}: {candidate.ref} passed the gate; canary at {weight} % (revision "
                 f"{revision.revision})")

    def _watch_canary(self, adapter: str, run: dict, config: LoopConfig) -> None:
        canary = next(s for s in reversed(run["steps"]) if s["step"] == "canary")
        candidate = run["candidate"]
        current = self.registry.rollouts.current(adapter)
        if current is None or candidate not in [a.version for a in current.arms] or current.revision != canary["revision"]:
            history = [r for r in self.registry.rollouts.history(adapter) if r.revision > canary["revision"]]
            by = history[0] if history else None
            who = "the guard" if by and by.actor == GUARD_ACTOR else (by.actor if by else "someone")
            self._step(run["id"], "decide", decision="rolled_back", by=who, revision=by.revision if by else None)
            raise LoopStop("rolled_back", f"{who} changed the rollout" + (f": {by.reason}" if by and by.reason else ""))
        report = self.registry.rollouts.report(adapter, since=canary["revision"])
        arm = next((a for a in report["arms"] if a["version"] == candidate), None)
        if arm is None or arm["requests"] < config.promote_after:
            return  # not enough traffic yet
        worse = [c for c in report["comparisons"] if c["p_value"] is not None and c["p_value"] < 1 - config.confidence
                 and c["rate"] is not None and c["against_rate"] is not None and c["rate"] < c["against_rate"]]
        numbers = {"requests": arm["requests"], "errors": arm["errors"], "success_rate": arm["success_rate"],
                   "comparisons": [{k: c[k] for k in ("metric", "rate", "against_rate", "p_value", "verdict")}
                                   for c in report["comparisons"]]}
        if worse:
            why = "; ".join(f"{c['metric']} {c['rate']:.3f} against {c['against_rate']:.3f} (p={c['p_value']:.3g})"
                            for c in worse)
            self.registry.rollouts.rollback(adapter, reason=f"loop turn {run['id']}: candidate worse: {why}", actor="loop")
            self._step(run["id"], "decide", decision="rolled_back", **numbers)
            raise LoopStop("rolled_back", f"{adapter}:{candidate} worse than the champion: {why}")
        self.registry.rollouts.promote(adapter, candidate, reason=f"loop turn {run['id']}: not worse after "
                                                                  f"{arm['requests']} requests", actor="loop")
        self.registry.set_alias(adapter, CHAMPION_ALIAS, candidate, "loop")
        self._step(run["id"], "decide", decision="promoted", **numbers)
        self.say(f"{adapter}: turn {run['id']}: {adapter}:{candidate} promoted; @{CHAMPION_ALIAS} moved")
        raise LoopStop("promoted", f"{adapter}:{candidate} not worse after {arm['requests']} requests; now @{CHAMPION_ALIAS}")

    # --- pieces ---------------------------------------------------------------------------------------

    def _curate(self, adapter: str, champion, config: LoopConfig):
        from .curate import curate
        from .heldout import trained_examples

        excluded, described = trained_examples(self.registry, champion)
        rows = self.registry.captures.rows(adapter, since=champion.created_at)
        return curate(rows, min_score=config.min_score, exclude=excluded, holdout=config.holdout), described

    def _submit(self, adapter: str, champion, config: LoopConfig, data: Path, fmt: str, run_id: int):
        from .jobs.submit import submit

        run = self.registry.run(champion.run_id) if champion.run_id else None
        if run is None or not run.get("config"):
            raise LoopStop("failed", f"{champion.ref} has no training run recorded: the loop retrains from a run's config")
        frozen = json.loads(json.dumps(run["config"]))
        for key in ("output_dir", "push"):
            frozen.pop(key, None)
        files = {}
        if config.mode == "retrain":
            # from the base, on all the data the champion's weights came from: a champion that was itself continued
            # from a version trained on that version's data too (and so on back), so those come along
            frozen.pop("lora_from_version", None)
            datasets = []
            for i, (source, entry) in enumerate(self._lineage_datasets(run)):
                name = f"champion-{i}-{Path(entry['path']).name}"
                files[name] = self._dataset_bytes(source, entry)
                datasets.append({**entry, "path": name})
            frozen["datasets"] = datasets
        else:  # continue: from the champion's weights, on the curated data only
            frozen["datasets"] = []
            frozen["lora_from_version"] = champion.ref
        for i, entry in enumerate(frozen.get("test_datasets") or []):
            name = f"champion-test-{i}-{Path(entry['path']).name}"
            files[name] = self._dataset_bytes(run, entry)
            entry["path"] = name
        files[data.name] = data.read_bytes()
        frozen["datasets"] = [*frozen["datasets"], {"path": data.name, "type": fmt}]
        frozen["push"] = {"name": adapter, "message": f"loop turn {run_id}: {champion.ref} + {data.name}",
                          "parent": champion.number}
        return submit(self.registry, SubmitRequest(config=frozen, files=files, source="loop",
                                                   extra={"loop_run": run_id, "champion": champion.ref}), "loop")

    def _lineage_datasets(self, run: dict) -> list[tuple[dict, dict]]:
        """(run, dataset entry) of every training dataset behind `run`'s weights: its own, then, while a run continued
        from a version (`lora_from_version`), that version's run's (at most MAX_LINEAGE runs back)."""
        out, seen = [], set()
        for _ in range(MAX_LINEAGE):
            out += [(run, entry) for entry in (run["config"].get("datasets") or [])]
            ref = run["config"].get("lora_from_version")
            if not ref:
                return out
            version = self.registry.resolve(ref)
            if version.run_id in seen or not version.run_id:
                return out
            seen.add(version.run_id)
            run = self.registry.run(version.run_id)
            if run is None or not run.get("config"):
                return out
        return out

    def _dataset_bytes(self, run: dict, entry: dict) -> bytes:
        """A dataset the champion trained on, as it was: its file if unchanged, else its blob (a job's are stored)."""
        recorded = {d["path"]: d.get("sha256") for d in run.get("datasets") or []}
        sha = recorded.get(entry["path"]) or ""
        path = Path(entry["path"])
        if path.is_file() and (not sha or sha256_file(path) == sha.removeprefix("sha256:")):
            return path.read_bytes()
        digest = sha.removeprefix("sha256:")
        if digest and self.registry.blobs.has(digest):
            return self.registry.blobs.read_bytes(digest, f"the champion's dataset {entry['path']}")
        raise LoopStop("failed", f"the champion's dataset {entry['path']} is gone or changed and is not stored as a blob")

    def _keep_fresh_slice(self, run_id: int, heldout: Path) -> None:
        """The fresh held-out slice, kept with the loop's records until the gate reads it."""
        keep = self.registry.home / "loops" / f"run-{run_id}-fresh.jsonl"
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(heldout.read_bytes())

    def _gate(self, run: dict, champion, candidate, config: LoopConfig) -> tuple[bool, list[str], dict]:
        """Both versions on one gate set (the champion's held-out examples and the fresh slice), then the rules."""
        from .curate import write
        from .data import DatasetSpec, load_datasets
        from .evaluate import evaluate_version
        from .heldout import held_out_examples

        fixed, described = held_out_examples(self.registry, champion)
        fresh_path = self.registry.home / "loops" / f"run-{run['id']}-fresh.jsonl"
        fresh = load_datasets([DatasetSpec(str(fresh_path), "chat")], skip_bad_lines=True).examples \
            if fresh_path.exists() and fresh_path.stat().st_size else []
        examples = fresh + fixed  # the fresh slice first: a cap at GATE_MAX_EXAMPLES cuts the fixed part, also judged alone
        if not examples:
            raise LoopStop("failed", f"no gate set: {described}, and no fresh slice was held out")
        evaluation = (((self.registry.run(champion.run_id) or {}).get("config") or {}).get("evaluation") or {}) \
            if champion.run_id else {}
        task_metric = evaluation.get("task_metric", "exact_match")
        # The rules hold on the whole gate set, and on the fixed held-out part alone: a fresh slice cut from bad
        # feedback rewards a candidate that learned it, and the fixed set is what catches that.
        sets = [("gate set", examples)] + ([("fixed held-out set", fixed)] if fixed and fresh else [])
        passed, lines, numbers = True, [], {"gate_examples": len(examples), "fixed": len(fixed), "fresh": len(fresh)}
        for label, part in sets:
            path = self.registry.home / "loops" / f"run-{run['id']}-{label.replace(' ', '-')}.jsonl"
            write(part, "chat", path)
            results = {role: evaluate_version(self.registry, version.ref, path, "chat", task_metric=task_metric,
                                              max_examples=min(len(part), GATE_MAX_EXAMPLES),
                                              max_new_tokens=evaluation.get("max_new_tokens"))["adapter"]
                       for role, version in (("champion", champion), ("candidate", candidate))}
            ok, checked = check_gate(config.gate, results["candidate"], results["champion"])
            passed &= ok
            lines += [f"{label}: {line}" for line in checked]
            key = "" if label == "gate set" else "fixed_"
            numbers.update({f"{key}champion_metrics": _numbers(results["champion"]),
                            f"{key}candidate_metrics": _numbers(results["candidate"])})
        return passed, lines, numbers

    # --- records --------------------------------------------------------------------------------------

    def _step(self, run_id: int, step: str, **numbers) -> None:
        self.registry.loops.add_step(run_id, step, **numbers)
        shown = ", ".join(f"{k} {v}" for k, v in numbers.items() if not isinstance(v, (dict, list)))
        self.say(f"  {step}: {shown}")

    def _end(self, run_id: int, state: str, reason: str) -> None:
        self.registry.loops.end_run(run_id, state, reason)
        self.say(f"  -> {state}: {reason}")

    def _open_run(self, adapter: str) -> dict | None:
        last = next(iter(self.registry.loops.runs(adapter, 1)), None)
        return last if last and last["ended_at"] is None else None

    def _run(self, run_id: int) -> dict:
        return dict(self.registry.conn.execute("SELECT * FROM loop_runs WHERE id=?", (run_id,)).fetchone())

    def _below_floor(self, adapter: str, champion, config: LoopConfig) -> bool:
        """The scheduled evaluation (`--eval-every`) of the champion on the fixed `--eval-data`, when one is due: it is
        recorded with the version (as `reg eval` records it), and True if it falls below `--eval-floor`."""
        if not config.eval_every:
            return False
        from .evaluate import evaluate_version

        name = f"eval:{Path(config.eval_data).name}"
        done = [e for e in self.registry.evaluations(champion.id) if e["name"] == name]
        if done and datetime.fromisoformat(done[-1]["created_at"]) + timedelta(seconds=parse_schedule(
                config.eval_every)) > datetime.now(timezone.utc):
            return False  # evaluated recently enough; its verdict led to a turn then, or did not
        result = evaluate_version(self.registry, champion.ref, Path(config.eval_data), config.eval_type,
                                  max_examples=GATE_MAX_EXAMPLES)
        checked = [rule.check(result["adapter"], {}) for rule in config.eval_floor]
        for ok, line in checked:
            self.say(f"{adapter}: scheduled evaluation of {champion.ref} on {name}: {line}")
        return not all(ok for ok, _ in checked)

    def _degraded(self, adapter: str, champion, config: LoopConfig, since: str) -> bool:
        """The champion's guard tripped, or its negative-feedback or error rate rose past the loop's limits, since."""
        tripped = any(r.actor == GUARD_ACTOR and (r.at or "") >= since for r in self.registry.rollouts.history(adapter))
        if tripped:
            return True
        conn = self.registry.conn
        if config.max_negative_rate is not None:
            rows = conn.execute("SELECT score, label FROM feedback WHERE adapter=? AND version=? AND at>=?",
                                (adapter, champion.number, since)).fetchall()
            from registry.rollout_report import MIN_TRIALS, binary_outcome

            outcomes = [o for o in (binary_outcome(r["score"], r["label"]) for r in rows) if o is not None]
            if len(outcomes) >= MIN_TRIALS and outcomes.count(False) / len(outcomes) > config.max_negative_rate:
                return True
        if config.max_error_rate is not None:
            row = conn.execute("SELECT COUNT(*), SUM(status NOT IN ('OK', 'CANCELLED')) FROM rollout_events WHERE"
                               " adapter=? AND version=? AND at>=?", (adapter, champion.number, since)).fetchone()
            from registry.rollout_report import MIN_TRIALS

            if row[0] >= MIN_TRIALS and (row[1] or 0) / row[0] > config.max_error_rate:
                return True
        return False


class LoopStop(Exception):
    """A turn ends here, in `state`, for `reason` (recorded on the turn)."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state, self.reason = state, reason


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
