"""Training runs on disk: the `runs/<id>/run.json` records, which runs are still alive, and removing one.

`reg train` writes `run.json` once everything it checks up front (config, dataset files, base,
target modules) has passed, with the process that trains (pid, the pid's start time, host) and a
heartbeat it refreshes every `HEARTBEAT_S` seconds. A run still marked "running" whose process is
gone (same host), or whose heartbeat stopped (another host), is shown as "abandoned": it was killed
(SIGKILL, the OOM killer, a lost machine) before it could record how it ended; `reg train --resume`
continues it from its newest checkpoint, or `reg runs rm` removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from datetime import datetime
from pathlib import Path

from registry.db import utcnow
from registry.errors import Conflict, InvalidInput, NotFound
from registry.names import check_run_id

HEARTBEAT_S = 30.0
STALE_AFTER_S = 4 * HEARTBEAT_S  # a run on another host with no heartbeat for this long is abandoned
LIVE_STATES = ("running",)

_write_lock = threading.Lock()  # the heartbeat thread and the run itself both update run.json


def write_run_json(run_dir: Path, **fields) -> None:
    """Merge `fields` into run.json, atomically (a reader never sees half a file)."""
    with _write_lock:
        path = run_dir / "run.json"
        info = json.loads(path.read_text()) if path.exists() else {}
        info.update(fields)
        tmp = path.with_name(f".run.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, path)


def read_run_json(run_dir: Path) -> dict | None:
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


# --- is the process alive ---------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def process_identity() -> dict:
    """What run.json records about the training process, so a later look can tell whether it still runs."""
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "pid_started": stat[19] if stat else None, "host": socket.gethostname()}


def process_alive(pid: int, pid_started: str | None) -> bool:
    """Whether process `pid` of this host still runs and is the same process (pids are reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _proc_stat(pid)
    if stat is None:
        return True
    if stat[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return pid_started is None or stat[19] == pid_started


class Heartbeat:
    """Refreshes `heartbeat_at` in run.json every `interval` seconds on a daemon thread while a run trains."""

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_S):
        self.run_dir, self.interval = run_dir, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        write_run_json(self.run_dir, heartbeat_at=utcnow())
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                write_run_json(self.run_dir, heartbeat_at=utcnow())
            except OSError:
                pass  # a full disk must not kill the run; the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# --- listing ----------------------------------------------------------------------------------


def _seconds(a: str | None, b: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() if a and b else None
    except ValueError:
        return None


def run_state(info: dict | None, now: str | None = None) -> str:
    """succeeded, failed, interrupted, running, abandoned, or unknown (no readable run.json)."""
    if info is None:
        return "unknown"
    status = info.get("status") or "unknown"
    if status != "running":
        return status
    if info.get("pid") and info.get("host") == socket.gethostname():
        return "running" if process_alive(int(info["pid"]), info.get("pid_started")) else "abandoned"
    quiet = _seconds(info.get("heartbeat_at") or info.get("started_at"), now or utcnow())
    return "running" if quiet is not None and quiet < STALE_AFTER_S else "abandoned"


def describe_run(run_dir: Path, now: str | None = None) -> dict:
    """One row of `reg runs ls`: id, state, config, started, duration, version produced."""
    info = read_run_json(run_dir)
    state = run_state(info, now)
    info = info or {}
    started = info.get("started_at")
    if info.get("duration_s") is not None:
        duration = float(info["duration_s"])
    else:
        end = (now or utcnow()) if state == "running" else info.get("finished_at") or info.get("heartbeat_at")
        duration = _seconds(started, end)
    return {
        "id": run_dir.name, "state": state, "adapter": (info.get("config") or {}).get("push", {}).get("name"),
        "config": info.get("config_path"), "config_hash": info.get("config_hash"), "started_at": started,
        "duration_s": None if duration is None else round(duration, 1), "version": info.get("version"),
        "pid": info.get("pid"), "host": info.get("host"), "error": info.get("error"), "path": str(run_dir),
    }


def list_runs(runs_dir: Path) -> list[dict]:
    """Every run directory under `runs_dir`, newest first."""
    if not runs_dir.is_dir():
        return []
    now = utcnow()
    rows = [describe_run(p, now) for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted(rows, key=lambda r: (r["started_at"] or "", r["id"]), reverse=True)


# --- removing ---------------------------------------------------------------------------------


def run_dir_for(runs_dir: Path, run_id: str) -> Path:
    """The directory of run `run_id`, which must be a plain name of an existing directory inside `runs_dir`."""
    check_run_id(run_id, " (see `reg runs ls`)")
    path = runs_dir / run_id
    if path.is_symlink() or not path.is_dir():
        raise NotFound(f"no run {run_id!r} in {runs_dir} (see `reg runs ls`)")
    if path.resolve().parent != runs_dir.resolve():
        raise InvalidInput(f"run {run_id!r} resolves outside {runs_dir}; not removing it")
    return path


def remove_run(runs_dir: Path, run_id: str, version_is_live, force: bool = False) -> dict:
    """Delete a run's directory (checkpoints, adapter, curves). Refused for a run that is still training,
    and, unless `force`, for one whose version is still live in the registry (its lineage points here).

    `version_is_live(ref) -> bool` asks the registry. Returns the removed run's row.
    """
    path = run_dir_for(runs_dir, run_id)
    row = describe_run(path)
    if row["state"] in LIVE_STATES:
        raise Conflict(f"run {run_id} is still training (pid {row['pid']} on {row['host']}); stop it first, "
                       f"then `reg runs rm {run_id}`")
    if row["version"] and not force and version_is_live(row["version"]):
        raise Conflict(f"run {run_id} produced {row['version']}, which is still live in the registry (its lineage "
                       f"points at this directory); `reg rm {row['version']}` first, or pass --force")
    shutil.rmtree(path)
    return row

