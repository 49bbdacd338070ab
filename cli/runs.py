"""`reg runs ...`: the training runs under HOME/runs and their state (logic in `trainer/runs.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from registry.errors import NotFound

from .common import Home, Json, _local_registry, app
from .output import console, print_json, table

runs_app = typer.Typer(
    help="Training runs under HOME/runs: running, succeeded, failed or abandoned (killed before it could say), and removal.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@runs_app.command("ls")
def runs_ls(json_out: Json = False, home: Home = None) -> None:
    """List training runs, newest first: id, state, config, started, duration and the version each produced."""
    from trainer.runs import list_runs

    rows = list_runs(_local_registry(home, "reg runs ls").runs_dir)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no training runs yet: `reg train CONFIG.yaml` starts one")
        return
    t = table("RUN", "STATE", "CONFIG", "STARTED", "DURATION", "VERSION")
    for r in rows:
        t.add_row(r["id"], r["state"], r["config"] or r["adapter"] or "-", (r["started_at"] or "-")[:19].replace("T", " "),
                  _duration(r["duration_s"]), r["version"] or "-")
    console.print(t)
    abandoned = [r["id"] for r in rows if r["state"] == "abandoned"]
    if abandoned:
        console.print(f"{len(abandoned)} abandoned (the process is gone): `reg train CONFIG --resume --run-id RUN` "
                      f"continues one from its last checkpoint, `reg runs rm RUN` removes it")


@runs_app.command("rm")
def runs_rm(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to remove (see `reg runs ls`).")],
    force: Annotated[bool, typer.Option(
        help="Remove it even though the version it produced is still live in the registry.")] = False,
    home: Home = None,
) -> None:
    """Delete a run's directory (checkpoints, adapter, curves).

    Refused while the run trains, and while the version it produced is live in the registry unless --force.
    """
    from trainer.runs import remove_run

    reg = _local_registry(home, "reg runs rm")

    def version_is_live(ref: str) -> bool:
        try:
            reg.resolve(ref)
        except NotFound:
            return False
        return True

    row = remove_run(reg.runs_dir, run_id, version_is_live, force=force)
    console.print(f"removed run {row['id']} ({row['state']}): {row['path']}")
