"""`reg rollout ...`: A/B rollouts of a bare adapter name between versions (logic in `registry/rollouts.py`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from registry.rollout_records import parse_arm
from registry.rollouts import Guard, Revision

from .common import Home, Json, _registry, app
from .output import console, print_json, table

rollout_app = typer.Typer(
    help="A/B rollouts: split a bare adapter name between versions by weight, measure the arms, promote or roll back.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


Name = Annotated[str, typer.Argument(help="Adapter name.")]
Reason = Annotated[str, typer.Option("--reason", "-m", help="Why (kept in the rollout's history).")]


@rollout_app.command("set")
def rollout_set(
    name: Name,
    arm: Annotated[Optional[list[str]], typer.Option("--arm", help="VERSION=WEIGHT, repeatable; integer weights summing to 100, e.g. --arm 3=90 --arm 4=10.")] = None,
    sticky: Annotated[bool, typer.Option("--sticky", help="A routing key always gets the same arm (while the split stands).")] = False,
    guard: Annotated[Optional[str], typer.Option(help="Roll back when the newest arm breaches: max_error_rate=0.05,max_p95_ratio=1.5,min_requests=200.")] = None,
    reason: Reason = "",
    home: Home = None,
) -> None:
    """Split requests for the bare NAME between versions (a new revision; NAME:N and NAME@ALIAS are not affected)."""
    rollouts = _registry(home).rollouts
    arms = [parse_arm(a) for a in arm or []]
    revision = rollouts.set(name, arms, sticky=sticky, guard=Guard.parse(guard) if guard is not None else None, reason=reason)
    _print_change(revision)


@rollout_app.command("show")
def rollout_show(name: Name, json_out: Json = False, home: Home = None) -> None:
    """The arms in force, the guard, and every revision (who, when, why)."""
    info = _registry(home).rollouts.show(name)
    if json_out:
        print_json(info)
        return
    current = info["current"]
    if current is None:
        console.print(f"no rollout: the bare name {name} resolves to the latest version, "
                      f"{info['resolves_to_latest'] or 'none (no live versions)'}")
    else:
        _render_current(current)
    if info["history"]:
        t = table("REV", "WHEN", "ACTION", "ARMS", "STICKY", "GUARD", "BY", "REASON", title="History")
        for r in info["history"]:
            arms = " ".join(f"{a['arm']}={a['ref']}:{a['weight']}%" for a in r["arms"]) or "none (bare name -> latest)"
            t.add_row(str(r["revision"]), r["at"][:19], r["action"] + (f" to {r['restores']}" if r["restores"] else ""),
                      arms, "yes" if r["sticky"] else "no", escape(_guard_text(r["guard"])), escape(r["actor"]),
                      escape(r["reason"]))
        console.print(t)


@rollout_app.command("report")
def rollout_report(
    name: Name,
    since: Annotated[Optional[int], typer.Option(help="Only requests served from this revision on (default: all).")] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Compare the arms: requests, errors, latency p50/p95, tokens, feedback, and a significance test against arm A."""
    report = _registry(home).rollouts.report(name, since=since)
    if json_out:
        print_json(report)
        return
    if not report["arms"]:
        console.print(f"no requests recorded for {name}'s rollout yet")
        return
    requests = table("ARM", "VERSION", "WEIGHT", "REQUESTS", "ERRORS", "P50 MS", "P95 MS", "TTFT MS", "TOK/REQ",
                     title=f"{name}: requests by arm (revisions {report['since_revision']}+; latency of OK requests)")
    feedback = table("ARM", "VERSION", "FEEDBACK", "MEAN SCORE", "SUCCESSES", title="Feedback by arm")
    for a in report["arms"]:
        requests.add_row(a["arm"], a["ref"], _fmt(a["weight"], "{}%"), str(a["requests"]),
                         f"{a['errors']}" + _fmt(a["error_rate"], " ({:.0%})", ""), _fmt(a["latency_p50_ms"], "{:.0f}"),
                         _fmt(a["latency_p95_ms"], "{:.0f}"), _fmt(a["ttft_p50_ms"], "{:.0f}"),
                         _fmt(a["mean_completion_tokens"], "{:.1f}"))
        feedback.add_row(a["arm"], a["ref"], str(a["feedback"]), _fmt(a["mean_score"], "{:.3g}"),
                         f"{a['successes']}/{a['trials']}" + (f" ({a['success_rate']:.1%})" if a["trials"] else ""))
    console.print(requests)
    console.print(feedback)
    if report["comparisons"]:
        c = table("METRIC", "ARM", "RATE", "AGAINST", "P-VALUE", "VERDICT", title="Against arm A")
        for cmp in report["comparisons"]:
            against = f"{cmp['against']} {_fmt(cmp['against_rate'], '{:.1%}')}"
            c.add_row(cmp["metric"], cmp["arm"], _fmt(cmp["rate"], "{:.1%}"), against,
                      _fmt(cmp["p_value"], "{:.3g}"), cmp["verdict"])
        console.print(c)


@rollout_app.command("promote")
def rollout_promote(
    name: Name,
    version: Annotated[int, typer.Argument(help="The version to send 100 % of the bare name to.")],
    reason: Reason = "",
    home: Home = None,
) -> None:
    """Send 100 % of the bare NAME to one version (a new revision; it stays even when newer versions are pushed)."""
    _print_change(_registry(home).rollouts.promote(name, version, reason=reason))


@rollout_app.command("rollback")
def rollout_rollback(name: Name, reason: Reason = "", home: Home = None) -> None:
    """Go back to the state before the latest revision (as a new revision)."""
    _print_change(_registry(home).rollouts.rollback(name, reason=reason))


@rollout_app.command("clear")
def rollout_clear(name: Name, reason: Reason = "", home: Home = None) -> None:
    """End the rollout: the bare NAME resolves to its latest version again."""
    _print_change(_registry(home).rollouts.clear(name, reason=reason))


def _print_change(revision: Revision) -> None:
    if not revision.arms:
        console.print(f"{revision.adapter}: revision {revision.revision} ({revision.action}): no rollout; "
                      f"the bare name resolves to the latest version")
        return
    extras = (", sticky" if revision.sticky else "") + (f", guard {revision.guard}" if revision.guard else "")
    console.print(f"{revision.adapter}: revision {revision.revision} ({revision.action}): {revision.describe_arms()}{extras}")


def _render_current(current: dict) -> None:
    reason = f": {escape(current['reason'])}" if current["reason"] else ""
    console.print(f"[bold]{current['adapter']}[/bold]: revision {current['revision']} ({current['action']}) "
                  f"by {escape(current['actor'])} at {current['at'][:19]}{reason}")
    if current["action"] == "guard":
        console.print("  [bold red]the guard rolled the newest arm back[/bold red] (see the reason above)")
    t = table("ARM", "VERSION", "WEIGHT")
    for a in current["arms"]:
        t.add_row(a["arm"], a["ref"], f"{a['weight']}%")
    console.print(t)
    sticky = "yes (the same routing key gets the same arm)" if current["sticky"] else "no (arms drawn at random)"
    console.print(f"  sticky  {sticky}\n  guard   {escape(_guard_text(current['guard']) or 'none')}")


def _guard_text(guard: dict | None) -> str:
    return str(Guard(**guard)) if guard else ""


def _fmt(value, pattern: str, missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)
