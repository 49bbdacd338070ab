"""`reg loop` settings and run records (issue 17): the parsers, the refusals, set/show through the real CLI."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from conftest import run_reg, snapshot

from registry import Conflict, InvalidInput
from registry.db import utcnow
from registry.loops import (
    FORGETTING_METRIC, FORGETTING_RULE, GATE_METRICS, GateRule, LoopConfig, LoopNotFound, check_gate, parse_gate,
    parse_guard, parse_schedule,
)
from registry.rollout_records import Guard

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def adapter(registry, make_adapter) -> str:
    registry.push(make_adapter("lora"), "support")
    return "support"


def capture_on(home, adapter: str) -> None:
    """What `reg capture set` leaves behind (its code is written separately): a capture_configs row."""
    conn = sqlite3.connect(home / "registry.db")
    with conn:
        conn.execute("INSERT INTO capture_configs (adapter, sample, retain_s, max_bytes, redact_json, actor, updated_at)"
                     " VALUES (?, 1.0, 2592000, 1000000, '[]', 'test', ?)", (adapter, T0.isoformat()))
    conn.close()


@pytest.fixture
def captured(home, adapter) -> str:
    capture_on(home, adapter)
    return adapter


# --- parsers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("hourly", 3600), ("daily", 86400), ("weekly", 604800), ("every 5m", 300), ("every 6h", 21600),
    ("every 2d", 172800), (" Every 90 m ", 5400), ("manual", None),
])
def test_schedules_parse_to_seconds(text, seconds):
    assert parse_schedule(text) == seconds


@pytest.mark.parametrize("text, needle", [
    ("fortnightly", "--schedule 'fortnightly': use hourly, daily, weekly, every N(m|h|d)"),
    ("every 4m", "--schedule 'every 4m': the interval must be from 5m"),
    ("every 0h", "--schedule 'every 0h': N must be at least 1"),
    ("every 400d", "--schedule 'every 400d': the interval must be from 5m to 366d"),
    ("every -1h", "--schedule 'every -1h': use hourly"),
    ("every 1.5h", "--schedule 'every 1.5h': use hourly"),
    ("", "--schedule '': use hourly"),
])
def test_a_bad_schedule_is_one_line_naming_it(text, needle):
    with pytest.raises(InvalidInput) as caught:
        parse_schedule(text)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_next_due_is_one_interval_after_the_last_turn_or_now_when_overdue():
    daily = LoopConfig(schedule="daily")
    assert daily.next_due(T0, T0 + timedelta(hours=1)) == T0 + timedelta(days=1)
    assert daily.next_due(T0, T0 + timedelta(days=3)) == T0 + timedelta(days=3)  # overdue: due now
    assert LoopConfig(schedule="manual").next_due(T0, T0) is None


def test_gate_rules_parse_print_back_and_always_carry_the_forgetting_rule():
    rules = parse_gate("exact_match>=champion+0.01, loss <= champion*0.98-0.1,bleu>0.2")
    assert [str(r) for r in rules] == ["exact_match>=champion+0.01", "loss<=champion*0.98-0.1", "bleu>0.2",
                                       FORGETTING_RULE]
    assert rules[0] == GateRule("exact_match", ">=", margin=0.01) and rules[2] == GateRule("bleu", ">", value=0.2)
    assert [str(r) for r in parse_gate("rouge_l>champion,general_perplexity<=champion*1.2")] == [
        "rouge_l>champion", "general_perplexity<=champion*1.2"]  # an own forgetting rule replaces the default
    assert [str(r) for r in LoopConfig(gate=[GateRule("bleu", ">", value=0.1)]).gate] == ["bleu>0.1", FORGETTING_RULE]


@pytest.mark.parametrize("text, needle", [
    ("f1>=champion", "gate metric 'f1': not one the evaluation records; use exact_match, rouge_l"),
    ("exact_match>=champion+0.01,accuracy>0.5", "gate metric 'accuracy'"),
    ("exact_match=>champion", "gate rule 'exact_match=>champion': expected METRIC OP champion"),
    ("exact_match>=champion+", "gate rule 'exact_match>=champion+'"),
    ("exact_match>=best", "gate rule 'exact_match>=best'"),
    ("exact_match>=1e999", "gate rule exact_match>=inf: its numbers must be finite"),
    (" , ", "--gate ' , ': give at least one rule"),
])
def test_a_bad_gate_is_one_line_naming_the_rule(text, needle):
    with pytest.raises(InvalidInput) as caught:
        parse_gate(text)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_gate_rule_check_says_what_it_compared():
    rule = GateRule.parse("exact_match>=champion+0.01")
    assert rule.check({"exact_match": 0.62}, {"exact_match": 0.6}) == (
        True, "exact_match: candidate 0.62 >= 0.61 (champion 0.6+0.01): passed")
    assert rule.check({"exact_match": 0.605}, {"exact_match": 0.6}) == (
        False, "exact_match: candidate 0.605 >= 0.61 (champion 0.6+0.01): failed")
    assert GateRule.parse("loss<1.5").check({"loss": 1.25}, {}) == (True, "loss: candidate 1.25 < 1.5: passed")
    for candidate, champion, who in [({}, {"exact_match": 0.6}, "candidate"), ({"exact_match": float("nan")}, {}, "candidate"),
                                     ({"exact_match": 0.7}, {"exact_match": None}, "champion")]:
        passed, line = rule.check(candidate, champion)
        assert not passed and f"the {who}'s evaluation has no finite exact_match" in line


def test_the_gate_checks_every_rule_and_forgetting_stops_a_better_candidate():
    rules = parse_gate("task_score>champion")
    passed, lines = check_gate(rules, {"task_score": 0.5, FORGETTING_METRIC: 10.6}, {"task_score": 0.4, FORGETTING_METRIC: 10.0})
    assert not passed and lines == ["task_score: candidate 0.5 > 0.4 (champion 0.4): passed",
                                    "general_perplexity: candidate 10.6 <= 10.5 (champion 10*1.05): failed"]
    assert check_gate(rules, {"task_score": 0.5, FORGETTING_METRIC: 10.2}, {"task_score": 0.4, FORGETTING_METRIC: 10.0})[0]


@pytest.mark.parametrize("text, guard", [
    ("error_rate<=0.02,p95_ratio<=1.5", Guard(max_error_rate=0.02, max_p95_ratio=1.5)),
    ("error_rate<=0.02, p95_ratio<=1.5, min_requests=200", Guard(max_error_rate=0.02, max_p95_ratio=1.5, min_requests=200)),
    ("max_error_rate=0.05", Guard(max_error_rate=0.05)),
    ("p95_ratio<=2,min_requests=50", Guard(max_p95_ratio=2, min_requests=50)),
])
def test_guards_parse_in_the_issues_syntax_and_in_guards_own(text, guard):
    assert parse_guard(text) == guard


@pytest.mark.parametrize("text, needle", [
    ("error_rate>=0.02", "guard 'error_rate>=0.02': a limit is error_rate<=NUMBER or p95_ratio<=NUMBER"),
    ("latency<=3", "guard 'latency<=3': a limit is"),
    ("error_rate<=abc", "guard max_error_rate='abc': must be a number from 0 to 1"),
    ("error_rate<=1.5", "guard max_error_rate=1.5: must be a number from 0 to 1"),
    ("min_requests=200", "the guard sets no limit"),
    ("foo=1", "unknown guard key 'foo'"),
])
def test_a_bad_guard_is_one_line_naming_it(text, needle):
    with pytest.raises(InvalidInput) as caught:
        parse_guard(text)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("values, needle", [
    ({"canary": 80}, "--canary 80: must be a whole percent from 1 to 50"),
    ({"canary": 0}, "--canary 0: must be a whole percent from 1 to 50"),
    ({"min_new_examples": 0}, "--min-new-examples 0: must be a whole number of at least 1"),
    ({"promote_after": 2.5}, "--promote-after 2.5: must be a whole number of at least 1"),
    ({"holdout": 1.0}, "--holdout 1.0: must be a fraction from 0 to less than 1"),
    ({"confidence": 0.3}, "--confidence 0.3: must be from 0.5 to less than 1"),
    ({"min_score": float("nan")}, "--min-score nan: must be a number"),
    ({"max_error_rate": 2.0}, "--max-error-rate 2.0: must be a rate from 0 to 1"),
    ({"max_negative_rate": -0.1}, "--max-negative-rate -0.1: must be a rate from 0 to 1"),
    ({"mode": "finetune"}, "--mode 'finetune': use retrain or continue"),
    ({"schedule": "sometimes"}, "--schedule 'sometimes'"),
])
def test_a_bad_loop_setting_is_one_line_naming_the_flag_and_value(values, needle):
    with pytest.raises(InvalidInput) as caught:
        LoopConfig(**values)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_loop_config_round_trips_through_its_stored_form():
    config = LoopConfig(schedule="every 6h", gate=parse_gate("exact_match>=champion+0.01"), mode="continue",
                        guard=parse_guard("error_rate<=0.05,min_requests=20"), max_negative_rate=0.3)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["gate"] == ["exact_match>=champion+0.01", FORGETTING_RULE]
    assert LoopConfig.from_dict(stored) == config
    with pytest.raises(InvalidInput, match="unknown loop setting 'cadence'"):
        LoopConfig.from_dict({**stored, "cadence": "daily"})


# --- the metric names ----------------------------------------------------------------------------


def test_gate_metrics_are_what_a_real_training_run_records(tmp_path, tiny_base_dir, home, registry):
    from test_trainer import write_config

    from trainer.config import load_config
    from trainer.train import train

    train(load_config(write_config(tmp_path, tiny_base_dir, max_steps=2, eval_steps=2, save_steps=2)), registry,
          progress=False)
    (evaluation,) = registry.describe("tiny-arith")["evaluations"]
    for metrics in (evaluation["metrics"], evaluation["base_metrics"]):
        numbers = {k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers - {"examples"} == set(GATE_METRICS)  # `examples` is a count, not a quality


# --- loops in the registry -----------------------------------------------------------------------


def test_a_loop_on_an_adapter_without_capture_is_refused_and_nothing_changes(capsys, registry, home, adapter):
    before = snapshot(home)
    with pytest.raises(Conflict, match=r"^no capture for support: `reg capture set support` first$"):
        registry.loops.set(adapter, LoopConfig())
    code, _, err = run_reg(capsys, "loop", "set", adapter, "--schedule", "daily")
    assert code == 4 and err == "error: no capture for support: `reg capture set support` first\n"
    code, _, err = run_reg(capsys, "loop", "set", "nobody")
    assert code == 3 and err == "error: no adapter named 'nobody' (see `reg ls`)\n"
    assert snapshot(home) == before


@pytest.mark.parametrize("args, needle", [
    (["--gate", "f1>=champion"], "error: gate metric 'f1': not one the evaluation records"),
    (["--schedule", "every 2m"], "error: --schedule 'every 2m': the interval must be from 5m to 366d"),
    (["--schedule", "fortnightly"], "error: --schedule 'fortnightly': use hourly"),
    (["--guard", "error_rate>=0.1"], "error: guard 'error_rate>=0.1': a limit is"),
    (["--canary", "60"], "error: --canary 60: must be a whole percent from 1 to 50"),
])
def test_a_bad_flag_is_refused_and_nothing_changes(capsys, home, captured, args, needle):
    assert run_reg(capsys, "loop", "set", captured)[0] == 0
    before = snapshot(home)
    code, _, err = run_reg(capsys, "loop", "set", captured, *args)
    assert code == 2 and err.startswith(needle) and err.count("\n") == 1
    assert snapshot(home) == before


def test_set_and_show_round_trip_through_the_cli(capsys, home, captured):
    code, out, err = run_reg(capsys, "loop", "set", captured, "--schedule", "weekly", "--min-new-examples", "500",
                             "--gate", "exact_match>=champion+0.01", "--canary", "10", "--promote-after", "2000",
                             "--guard", "error_rate<=0.02,p95_ratio<=1.5", "--mode", "continue", "--min-score", "0.7",
                             "--holdout", "0.2", "--max-error-rate", "0.1")
    assert code == 0, err
    assert out.startswith("support: loop set (enabled), next trigger ")
    code, out, _ = run_reg(capsys, "loop", "show", captured, "--json")
    info = json.loads(out)
    assert info["config"] == {
        "schedule": "weekly", "min_new_examples": 500, "gate": ["exact_match>=champion+0.01", FORGETTING_RULE],
        "canary": 10, "promote_after": 2000, "guard": {"max_error_rate": 0.02, "max_p95_ratio": 1.5, "min_requests": 100},
        "min_score": 0.7, "holdout": 0.2, "mode": "continue", "confidence": 0.95, "max_error_rate": 0.1,
        "max_negative_rate": None, "eval_every": None, "eval_data": None, "eval_type": "alpaca", "eval_floor": [],
    }
    assert info["enabled"] is True and info["state"] == "idle" and info["last_run"] is None and info["history"] == []
    created = datetime.fromisoformat(info["created_at"])
    assert datetime.fromisoformat(info["next_trigger"]) == created + timedelta(weeks=1)
    code, out, _ = run_reg(capsys, "loop", "show", captured)
    assert code == 0
    for needle in ("support: loop enabled, idle", "exact_match>=champion+0.01, general_perplexity<=champion*1.05",
                   "max_error_rate=0.02,max_p95_ratio=1.5,min_requests=100", "continue", "next trigger", "no runs yet"):
        assert needle in out, needle

    # `set` again replaces the whole config; disable/enable keep it
    assert run_reg(capsys, "loop", "set", captured, "--schedule", "manual")[0] == 0
    assert run_reg(capsys, "loop", "disable", captured)[1] == "support: loop disabled\n"
    info = json.loads(run_reg(capsys, "loop", "show", captured, "--json")[1])
    assert info["config"]["schedule"] == "manual" and info["config"]["mode"] == "retrain"
    assert info["enabled"] is False and info["next_trigger"] is None
    assert "loop disabled" in run_reg(capsys, "loop", "show", captured)[1]
    code, out, _ = run_reg(capsys, "loop", "enable", captured)
    assert code == 0 and out == "support: loop enabled, next trigger none (manual: `reg loop run`)\n"


def test_show_of_an_adapter_without_a_loop_is_not_found(capsys, registry, adapter):
    with pytest.raises(LoopNotFound):
        registry.loops.start_run(adapter, "manual", 1)
    code, _, err = run_reg(capsys, "loop", "show", adapter)
    assert code == 3 and err == "error: adapter 'support' has no loop: `reg loop set support` first\n"
    code, _, err = run_reg(capsys, "loop", "disable", adapter)
    assert code == 3 and "has no loop" in err


def test_run_records_step_forward_and_show_in_the_history(capsys, registry, captured):
    loops = registry.loops
    loops.set(captured, LoopConfig(schedule="every 1h"))
    run_id = loops.start_run(captured, "schedule", 1)
    with pytest.raises(Conflict, match=f"run {run_id} is still in capture: never two candidates of one adapter in flight"):
        loops.start_run(captured, "manual", 1)
    with pytest.raises(InvalidInput, match="loop trigger 'cron'"):
        loops.start_run(captured, "cron", 1)

    loops.add_step(run_id, "capture", new_examples=612)
    loops.add_step(run_id, "curate", kept=540, duplicates=40, dataset_sha256="sha256:ab12")
    loops.add_step(run_id, "train", job_id="ftjob-1", candidate=2)
    info = registry.loops.show(captured)
    assert info["state"] == "train" and info["last_run"]["id"] == run_id
    (run,) = info["history"]
    assert (run["trigger"], run["champion"], run["candidate"], run["job_id"], run["dataset_sha256"]) == (
        "schedule", 1, 2, "ftjob-1", "sha256:ab12")
    assert [s["step"] for s in run["steps"]] == ["capture", "curate", "train"] and run["steps"][0]["new_examples"] == 612
    with pytest.raises(Conflict, match=f"loop run {run_id} is at train: it cannot go back to curate"):
        loops.add_step(run_id, "curate")
    with pytest.raises(InvalidInput, match="loop step 'deploy'"):
        loops.add_step(run_id, "deploy")
    with pytest.raises(InvalidInput, match="loop run end state 'done'"):
        loops.end_run(run_id, "done")

    loops.add_step(run_id, "gate", exact_match=0.55, champion_exact_match=0.6)
    loops.end_run(run_id, "stopped_at_gate", "exact_match: candidate 0.55 >= 0.61 (champion 0.6+0.01): failed")
    with pytest.raises(Conflict, match=f"loop run {run_id} already ended \\(stopped_at_gate"):
        loops.end_run(run_id, "failed")
    with pytest.raises(Conflict, match="already ended"):
        loops.add_step(run_id, "canary")

    info = registry.loops.show(captured)
    assert info["state"] == "idle" and info["history"][0]["state"] == "stopped_at_gate"
    assert info["history"][0]["reason"].startswith("exact_match: candidate 0.55")
    started = datetime.fromisoformat(info["history"][0]["started_at"])
    assert datetime.fromisoformat(info["next_trigger"]) >= started + timedelta(hours=1)  # from the last run's start

    second = loops.start_run(captured, "manual", 1)  # the first ended: a new turn may start
    assert [r["id"] for r in registry.loops.show(captured)["history"]] == [second, run_id]
    code, out, _ = run_reg(capsys, "loop", "show", captured)
    assert code == 0
    for needle in ("support: loop enabled, capture", "stopped_at_gate", "capture(new_examples=612)",
                   "gate(exact_match=0.55,champion_exact_match=0.6)", "ftjob-1"):
        assert needle in out, needle


def test_next_trigger_counts_from_the_last_run_or_from_creation(registry, home, captured):
    loops = registry.loops
    loops.set(captured, LoopConfig(schedule="every 2h"))
    conn = sqlite3.connect(home / "registry.db")
    with conn:  # fixed times, so the expected trigger does not depend on when the test runs
        conn.execute("UPDATE loops SET created_at=? WHERE adapter=?", ("2999-01-01T00:00:00.000+00:00", captured))
    assert loops.show(captured)["next_trigger"] == "2999-01-01T02:00:00.000+00:00"
    run_id = loops.start_run(captured, "schedule", None)
    with conn:
        conn.execute("UPDATE loop_runs SET started_at=? WHERE id=?", ("2999-06-01T12:00:00.000+00:00", run_id))
    assert loops.show(captured)["next_trigger"] == "2999-06-01T14:00:00.000+00:00"
    with conn:
        conn.execute("UPDATE loop_runs SET started_at=? WHERE id=?", ("2000-01-01T00:00:00.000+00:00", run_id))
    before = datetime.fromisoformat(utcnow())  # the registry's clock, to the millisecond
    assert datetime.fromisoformat(loops.show(captured)["next_trigger"]) >= before  # overdue: due now
    conn.close()
