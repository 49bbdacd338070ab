"""Experiment tracking: a run reported to MLflow and Weights & Biases through transformers' own integrations.

`tracking_environment(config, run_dir, run_id, resume)` is a context manager around building and running the
`Trainer`: it checks that the packages `report_to` names are installed, sets the integrations' documented
environment variables (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE,
WANDB_DIR...) for this run only, opens the MLflow run (transformers' MLflowCallback logs into it; see
`_start_mlflow_run` for why it does not open it itself), and yields the `report_to` list for `TrainingArguments`.
On the way out it ends the tracking runs this training opened (FAILED when it raised) and restores the
environment, so one process can run several trainings; a tracker's own error becomes one `TrackingUnavailable` line. `TrackingCapture`, a `TrainerCallback`, records the tracking runs' identities once the
integrations have started them; train.py puts them in the run's lineage (`metrics["tracking"]`), and
`<run dir>/tracking.json` lets a resumed run log to the same tracking runs.

W&B files always go under the run directory (WANDB_DIR); in offline mode its cache, data and config folders do
too, so an offline run writes nothing to the home directory and opens no connection. mlflow and wandb are
imported only when `report_to` names them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from transformers import TrainerCallback

from registry.errors import LoradockError, shown

from .config import TrainConfig

logger = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
PIP_PACKAGES = {"mlflow": "mlflow-skinny", "wandb": "wandb"}
# MLflow stores kept in a database need SQLAlchemy, which mlflow-skinny leaves out (MLflow 3's own default is sqlite).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class TrackingUnavailable(LoradockError):
    """A tracker the config asks for cannot run here: its package is not installed, its store needs another, or it refused."""

    exit_code, grpc_status, http_status = 1, "FAILED_PRECONDITION", 500


def check_trackers(config: TrainConfig) -> None:
    """Refuse, in one line, a `report_to` naming a package that is not installed or an MLflow store it cannot open."""
    for name in config.report_to:
        if importlib.util.find_spec(name) is None:
            raise TrackingUnavailable(f"report_to: {name} is not installed; pip install {PIP_PACKAGES[name]}")
    if "mlflow" in config.report_to:
        if os.environ.get("DISABLE_MLFLOW_INTEGRATION", "").upper() == "TRUE":
            raise TrackingUnavailable("report_to: mlflow is switched off by DISABLE_MLFLOW_INTEGRATION=TRUE; unset it")
        uri = mlflow_tracking_uri(config)
        if urlsplit(uri).scheme.split("+")[0] in DATABASE_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
            raise TrackingUnavailable(
                f"mlflow_tracking_uri: {shown(uri)} is a database store, which needs the full MLflow package "
                "(pip install mlflow); or set mlflow_tracking_uri to a directory (a local file store) or an http(s) server")


def mlflow_tracking_uri(config: TrainConfig) -> str:
    """The config's MLflow store, else $MLFLOW_TRACKING_URI, else MLflow's current default; a local path as a file: URI."""
    uri = config.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        import mlflow

        uri = mlflow.get_tracking_uri()
    if _is_local_path(uri):
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _is_local_path(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme == "" or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))  # a Windows drive letter is no scheme


def _is_file_store(uri: str) -> bool:
    return urlsplit(uri).scheme == "file"


@contextmanager
def tracking_environment(config: TrainConfig, run_dir: Path, run_id: str, resume: bool = False) -> Iterator[list[str]]:
    """Yield the `report_to` list for `TrainingArguments`, with the trackers' environment set for the run only.

    A resumed run (`resume`) logs to the tracking runs its `tracking.json` names. Without `report_to`, a no-op.
    """
    report_to = list(config.report_to)
    if not report_to:
        yield []
        return
    check_trackers(config)
    run_dir = Path(run_dir).resolve()
    previous = _recorded_identities(run_dir) if resume else {}
    env: dict[str, str | None] = {}
    if "mlflow" in report_to:
        env.update(_mlflow_env(config))
    if "wandb" in report_to:
        env.update(_wandb_env(config, run_dir, previous.get("wandb", {})))
    saved = {key: os.environ.get(key) for key in env}
    _apply(env)
    wandb_before = _wandb_run_id()
    started_mlflow, mlflow_uri_before = False, None
    outcome = "FAILED"
    try:
        if "mlflow" in report_to:
            mlflow_uri_before = _point_mlflow_at(env["MLFLOW_TRACKING_URI"])
            started_mlflow = _start_mlflow_run(config, run_id, previous.get("mlflow", {}), saved.get("MLFLOW_RUN_ID"))
        yield report_to
        outcome = "FINISHED"
    except KeyboardInterrupt:
        outcome = "KILLED"
        raise
    except Exception as exc:
        tracker = type(exc).__module__.split(".")[0]
        if tracker not in PIP_PACKAGES:
            raise
        # the tracker's own refusal (no W&B API key, an MLflow server that does not answer...) as one line
        raise TrackingUnavailable(f"{tracker}: {' '.join(str(exc).split())[:500]}") from exc
    finally:
        try:
            _end_runs(started_mlflow, wandb_before, outcome)
        finally:
            _apply(saved)
            if mlflow_uri_before is not None:
                sys.modules["mlflow"].set_tracking_uri(mlflow_uri_before)


def _apply(env: dict[str, str | None]) -> None:
    """Set each variable; None removes it."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _mlflow_env(config: TrainConfig) -> dict[str, str | None]:
    """MLflow's variables for the run. MLFLOW_RUN_ID is read here and cleared (see `_start_mlflow_run`)."""
    uri = mlflow_tracking_uri(config)
    env: dict[str, str | None] = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": None}
    if _is_file_store(uri) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses its file store unless asked for it
    if config.mlflow_experiment_name:
        env["MLFLOW_EXPERIMENT_NAME"] = config.mlflow_experiment_name
    return env


def _wandb_env(config: TrainConfig, run_dir: Path, previous: dict) -> dict[str, str | None]:
    """W&B's variables for the run: config keys over the environment, files under the run directory."""
    env: dict[str, str | None] = {"WANDB_DIR": str(run_dir)}
    for key, value in (("WANDB_PROJECT", config.wandb_project), ("WANDB_ENTITY", config.wandb_entity),
                       ("WANDB_MODE", config.wandb_mode)):
        if value:
            env[key] = value
    mode = config.wandb_mode or os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "dryrun", "disabled"):
        for key, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
            env[key] = str(run_dir / "wandb" / folder)
    if previous.get("run_id"):
        env.update(WANDB_RUN_ID=previous["run_id"], WANDB_RESUME="allow")
    return env


def _point_mlflow_at(uri: str) -> str | None:
    """Make `uri` MLflow's store for the run; returns the URI to restore afterwards, if any.

    MLFLOW_TRACKING_URI is enough unless this process called `mlflow.set_tracking_uri`, which wins over it.
    """
    import mlflow

    current = mlflow.get_tracking_uri()
    if current == uri:
        return None
    mlflow.set_tracking_uri(uri)
    return current


def _start_mlflow_run(config: TrainConfig, run_id: str, previous: dict, env_run_id: str | None) -> bool:
    """Start (or, resuming, reopen) the MLflow run on the main process; True when this call started one.

    We start it rather than leave it to transformers' MLflowCallback: that callback also ends "its" run when it is
    garbage-collected, which in a process that trains again could end the next training's run in the middle.
    With a run already active the callback logs into it and never ends it. A run someone else left active is
    used as it is (and left open), as the callback would.
    """
    import mlflow

    if int(os.environ.get("RANK", "0")) != 0 or mlflow.active_run() is not None:
        return False
    reopen = env_run_id or (previous.get("run_id") if previous.get("tracking_uri") == _display_uri(mlflow.get_tracking_uri())
                            else None)
    tags = {"loradock.run_id": run_id, "loradock.adapter": config.push.name or ""}
    if reopen:
        mlflow.start_run(run_id=reopen, tags=tags)
    else:
        mlflow.start_run(run_name=config.mlflow_run_name or run_id, tags=tags)
    return True


def _wandb_run_id() -> str | None:
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    return run.id if run is not None else None


def _end_runs(started_mlflow: bool, wandb_before: str | None, outcome: str) -> None:
    """End the tracking runs this training opened, with its outcome; a run open before it stays open."""
    mlflow = sys.modules.get("mlflow")
    if started_mlflow and mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(status=outcome)
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb_before is None and wandb.run is not None:
        wandb.finish(exit_code=0 if outcome == "FINISHED" else 1)
        wandb.teardown()  # its service process started with this run's environment; the next run starts its own


def training_run_name(config: TrainConfig, run_id: str) -> str | None:
    """`TrainingArguments.run_name`: the W&B run's name (the MLflow run is named by `_start_mlflow_run`)."""
    return (config.wandb_name or run_id) if "wandb" in config.report_to else None


# --- the identities ------------------------------------------------------------------------------


class TrackingCapture(TrainerCallback):
    """Records the identities of the tracking runs once the integrations (earlier in the callback list) started them."""

    def __init__(self, report_to: list[str], run_dir: Path):
        self.report_to = list(report_to)
        self.path = Path(run_dir) / TRACKING_FILE
        self.identities: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if "mlflow" in self.report_to:
            self.identities["mlflow"] = mlflow_identity()
        if "wandb" in self.report_to:
            self.identities["wandb"] = wandb_identity()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.identities, indent=2))
        os.replace(tmp, self.path)


def mlflow_identity() -> dict:
    """The active MLflow run: run_id, experiment_id, tracking_uri (credentials left out) and, on a server, its url."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return {}
    uri = _display_uri(mlflow.get_tracking_uri())
    identity = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": uri}
    if urlsplit(uri).scheme in ("http", "https"):
        identity["url"] = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return identity


def wandb_identity() -> dict:
    """The active W&B run: run_id, project, mode, url (None unless online) and dir (what `wandb sync` takes)."""
    import wandb

    run = wandb.run
    if run is None:
        return {}
    mode = "disabled" if run.settings.mode == "disabled" else "offline" if run.offline else "online"
    return {"run_id": run.id, "project": run.project, "mode": mode, "url": run.url if mode == "online" else None,
            "dir": run.settings.sync_dir if mode != "disabled" else None}


def _display_uri(uri: str) -> str:
    """The URI without a user name or password, as it may be recorded in the lineage."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _recorded_identities(run_dir: Path) -> dict:
    """What the run's earlier attempt recorded in `tracking.json` ({} when nothing was)."""
    path = run_dir / TRACKING_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}
