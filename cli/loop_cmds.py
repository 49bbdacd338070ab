"""`reg loop ...`: continuous fine-tuning loops, how they are set and shown (logic in `registry/loops.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from registry.fields import help_texts
from registry.loops import DEFAULT_GATE, DEFAULT_GUARD, SHOWN_RUNS, LoopConfig, parse_floor, parse_gate, parse_guard

from .common import Home, Json, _local_registry, app
from .output import console, print_json, table

loop_app = typer.Typer(
    help="Continuous fine-tuning: captured traffic becomes data, data triggers training, a candidate is gated "
         "against the champion and canaried behind a guard.",
    no_args_is_help=True,
)
app.add_typer(loop_app, name="loop")

Name = Annotated[str, typer.Argument(help="Adapter name.")]
HELP = help_texts(LoopConfig)
DEFAULTS = LoopConfig()


@loop_app.command("set")
def loop_set(
    name: Name,
    schedule: Annotated[str, typer.Option(help=HELP["schedule"])] = DEFAULTS.schedule,
    min_new_examples: Annotated[int, typer.Option(help=HELP["min_new_examples"])] = DEFAULTS.min_new_examples,
    gate: Annotated[str, typer.Option(help=HELP["gate"])] = DEFAULT_GATE,
    canary: Annotated[int, typer.Option(help=HELP["canary"])] = DEFAULTS.canary,
    promote_after: Annotated[int, typer.Option(help=HELP["promote_after"])] = DEFAULTS.promote_after,
    guard: Annotated[str, typer.Option(help=HELP["guard"])] = DEFAULT_GUARD,
    mode: Annotated[str, typer.Option(help=HELP["mode"])] = DEFAULTS.mode,
    min_score: Annotated[float, typer.Option(help=HELP["min_score"])] = DEFAULTS.min_score,
    holdout: Annotated[float, typer.Option(help=HELP["holdout"])] = DEFAULTS.holdout,
    confidence: Annotated[float, typer.Option(help=HELP["confidence"])] = DEFAULTS.confidence,
    max_error_rate: Annotated[Optional[float], typer.Option(help=HELP["max_error_rate"])] = None,
    max_negative_rate: Annotated[Optional[float], typer.Option(help=HELP["max_negative_rate"])] = None,
    eval_every: Annotated[Optional[str], typer.Option(help=HELP["eval_every"])] = None,
    eval_data: Annotated[Optional[Path], typer.Option(help=HELP["eval_data"])] = None,
    eval_type: Annotated[str, typer.Option(help=HELP["eval_type"])] = DEFAULTS.eval_type,
    eval_floor: Annotated[Optional[str], typer.Option(help=HELP["eval_floor"])] = None,
    home: Home = None,
) -> None:
    """Create or replace NAME's loop: every setting is what this command says (defaults for those not given)."""
    from registry.errors import InvalidInput
    from trainer.data import DATASET_TYPES

    if eval_data is not None and not eval_data.is_file():
        raise InvalidInput(f"--eval-data {eval_data}: no such file")
    if eval_type not in DATASET_TYPES:
        raise InvalidInput(f"--eval-type {eval_type!r}: use one of {', '.join(DATASET_TYPES)}")
    config = LoopConfig(
        schedule=schedule, min_new_examples=min_new_examples, gate=parse_gate(gate), canary=canary,
        promote_after=promote_after, guard=parse_guard(guard), mode=mode, min_score=min_score, holdout=holdout,
        confidence=confidence, max_error_rate=max_error_rate, max_negative_rate=max_negative_rate,
        eval_every=eval_every, eval_data=str(eval_data.resolve()) if eval_data else None, eval_type=eval_type,
        eval_floor=parse_floor(eval_floor) if eval_floor else [],
    )
    loops = _local_registry(home, "reg loop set").loops
    loops.set(name, config)
    info = loops.show(name, limit=0)
    console.print(f"{name}: loop set ({'enabled' if info['enabled'] else 'disabled'}), next trigger "
                  f"{_next_trigger(info)}")


@loop_app.command("show")
def loop_show(
    name: Name,
    limit: Annotated[int, typer.Option(help="Runs of the history to show, newest first.")] = SHOWN_RUNS,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """NAME's loop: its settings, its state, when the next turn is due, and every turn with what became of it."""
    info = _local_registry(home, "reg loop show").loops.show(name, limit=limit)
    if json_out:
        print_json(info)
        return
    config = info["config"]
    status = "enabled" if info["enabled"] else "disabled"
    console.print(f"[bold]{name}[/bold]: loop {status}, {info['state']}; set by {escape(info['actor'] or '-')} "
                  f"at {info['updated_at'][:19]}")
    settings = table("SETTING", "VALUE")
    for key, value in config.items():
        if isinstance(value, list):  # the gate's rules, the evaluation floor's
            value = ", ".join(value) or None
        elif key == "guard":
            value = ",".join(f"{k}={v:g}" for k, v in value.items() if v is not None)
        settings.add_row(key, escape("-" if value is None else str(value)))
    settings.add_row("next trigger", _next_trigger(info))
    console.print(settings)
    if not info["history"]:
        console.print("no runs yet")
        return
    runs = table("RUN", "STARTED", "TRIGGER", "STATE", "CHAMPION", "CANDIDATE", "JOB", "STEPS", "ENDED", "REASON",
                 title="History")
    for run in info["history"]:
        runs.add_row(str(run["id"]), run["started_at"][:19], run["trigger"], run["state"], _version(run["champion"]),
                     _version(run["candidate"]), escape(run["job_id"] or "-"), _steps(run["steps"]),
                     (run["ended_at"] or "-")[:19], escape(run["reason"] or ""))
    console.print(runs)


@loop_app.command("disable")
def loop_disable(name: Name, home: Home = None) -> None:
    """Start no more turns of NAME's loop (a turn already running goes on to its end)."""
    _local_registry(home, "reg loop disable").loops.disable(name)
    console.print(f"{name}: loop disabled")


@loop_app.command("enable")
def loop_enable(name: Name, home: Home = None) -> None:
    """Let NAME's loop start turns again, on its schedule and its triggers."""
    loops = _local_registry(home, "reg loop enable").loops
    loops.enable(name)
    console.print(f"{name}: loop enabled, next trigger {_next_trigger(loops.show(name, limit=0))}")


@loop_app.command("run")
def loop_run(
    name: Name,
    now: Annotated[bool, typer.Option("--now", help="Start a turn now, whatever the schedule and triggers say.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Keep stepping until the turn ends (its job needs a running `reg worker`; its canary, traffic).")] = False,
    interval: Annotated[float, typer.Option(help="With --wait: seconds between steps.")] = 5.0,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Step NAME's loop once: start a turn (with --now, or when one is due) or move the turn in flight on."""
    import time

    from registry.errors import Conflict
    from trainer.loop import LoopRunner

    registry = _local_registry(home, "reg loop run")
    runner = LoopRunner(registry, say=None if json_out else console.print)
    open_run = runner._open_run(name)
    if now and open_run is not None:
        raise Conflict(f"{name}'s loop run {open_run['id']} is still in {open_run['state']}: never two candidates of "
                       f"one adapter in flight (`reg loop run {name}` without --now moves it on)")
    run = runner.step(name, trigger="manual" if now else None)
    while wait and run is not None and run["ended_at"] is None:
        time.sleep(interval)
        run = runner.step(name)
    if json_out:
        print_json(registry.loops.show(name, limit=1))
    elif run is None:
        console.print(f"{name}: no turn is due (next trigger {_next_trigger(registry.loops.show(name, limit=0))})")
    else:
        console.print(f"{name}: turn {run['id']} {'ended ' + run['state'] if run['ended_at'] else 'at ' + run['state']}"
                      + (f": {escape(run['reason'])}" if run["reason"] else ""))


@loop_app.command("tick")
def loop_tick(home: Home = None) -> None:
    """Step every enabled loop once (for cron): start due turns, move turns in flight on."""
    from trainer.loop import LoopRunner

    LoopRunner(_local_registry(home, "reg loop tick"), say=console.print).tick()


@loop_app.command("daemon")
def loop_daemon(
    interval: Annotated[float, typer.Option(help="Seconds between ticks.")] = 30.0,
    home: Home = None,
) -> None:
    """Tick every enabled loop forever, every --interval seconds (Ctrl-C stops it between ticks)."""
    import logging
    import time

    from trainer.loop import LoopRunner

    runner = LoopRunner(_local_registry(home, "reg loop daemon"), say=console.print)
    while True:
        try:
            runner.tick()
        except Exception as exc:  # noqa: BLE001 - a failed tick is logged; the next one tries again
            logging.getLogger(__name__).warning(f"loop tick failed: {type(exc).__name__}: {exc}")
        time.sleep(interval)


def _next_trigger(info: dict) -> str:
    if not info["enabled"]:
        return "none (disabled)"
    return info["next_trigger"][:19] if info["next_trigger"] else "none (manual: `reg loop run`)"


def _version(number: int | None) -> str:
    return "-" if number is None else str(number)


def _steps(steps: list[dict]) -> str:
    """`capture(new=512) curate(kept=480)`: each step with the numbers it recorded."""
    shown = []
    for step in steps:
        numbers = ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in step.items() if k not in ("step", "at") and not isinstance(v, (list, dict)))
        shown.append(f"{step['step']}({numbers})" if numbers else step["step"])
    return escape(" ".join(shown)) or "-"
