"""Experiment tracking (issue 15): a run logged to MLflow (a local file store) and W&B (offline), named in its lineage."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
from test_trainer import write_config

from cli.main import main
from registry import Registry

from trainer.config import ConfigError, load_config
from trainer.tracking import TRACKING_FILE, TrackingUnavailable, check_trackers


def _no_run_dirs(home: Path) -> bool:
    return not (home / "runs").exists() or not any((home / "runs").iterdir())


def _tracking_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "WANDB_"))}


def test_report_to_takes_one_name_or_a_list_and_leaves_the_config_hash_alone(tmp_path, tiny_base_dir):
    path = write_config(tmp_path, tiny_base_dir)
    plain = load_config(path)
    one = load_config(path, ["report_to=mlflow", "mlflow_tracking_uri=mlruns"])
    both = load_config(path, ["report_to=[wandb, mlflow, wandb]", "wandb_mode=offline", "wandb_project=p"])
    assert plain.report_to == [] and one.report_to == ["mlflow"] and both.report_to == ["wandb", "mlflow"]
    assert one.resolved()["report_to"] == ["mlflow"] and both.resolved()["wandb_mode"] == "offline"
    # where a run is reported is recorded, but is not part of what the config trains
    assert plain.config_hash() == one.config_hash() == both.config_hash()
    assert load_config(path, ["report_to="]).report_to == []


@pytest.mark.parametrize("override, needle", [
    ("report_to=tensorboard", "report_to: must be mlflow or wandb (one name or a list), got 'tensorboard'"),
    ("report_to=[mlflow, comet]", "report_to: must be mlflow or wandb (one name or a list), got 'comet'"),
    ("report_to=3", "report_to: expected a name or a list of names, got 3"),
    ("wandb_mode=sync", "wandb_mode: must be one of online, offline, disabled, got 'sync'"),
    ("wandb_project=''", "wandb_project: must not be empty"),
    ("mlflow_tracking_uri=[a]", "mlflow_tracking_uri: expected a string"),
])
def test_a_bad_tracking_value_is_one_line_before_anything_is_written(tmp_path, tiny_base_dir, home, capsys, override, needle):
    path = write_config(tmp_path, tiny_base_dir)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(path, [override])
    capsys.readouterr()
    assert main(["train", str(path), "--set", override]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert _no_run_dirs(home) and not (tmp_path / "mlruns").exists() and not (Path.cwd() / "wandb").exists()


def test_a_tracker_that_is_not_installed_is_a_one_line_error_naming_the_package(tmp_path, tiny_base_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python spells "not installed"
    config = load_config(write_config(tmp_path, tiny_base_dir), ["report_to=[wandb]"])
    with pytest.raises(TrackingUnavailable, match=r"^report_to: wandb is not installed; pip install wandb$"):
        check_trackers(config)
    assert TrackingUnavailable.exit_code == 1 and TrackingUnavailable.grpc_status == "FAILED_PRECONDITION"


@pytest.mark.skipif(importlib.util.find_spec("sqlalchemy") is not None, reason="the full mlflow is installed")
@pytest.mark.parametrize("store", [["mlflow_tracking_uri=sqlite:///x.db"], []], ids=["sqlite", "mlflow-default"])
def test_an_mlflow_database_store_without_the_full_package_says_what_to_install(tmp_path, tiny_base_dir, monkeypatch, store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow 3's own default store is sqlite:///mlflow.db
    config = load_config(write_config(tmp_path, tiny_base_dir), ["report_to=mlflow", *store])
    with pytest.raises(TrackingUnavailable, match=r"^mlflow_tracking_uri: 'sqlite:.* needs the full MLflow package \(pip install "
                                                  r"mlflow\); or set mlflow_tracking_uri to a directory"):
        check_trackers(config)


@pytest.mark.integration
def test_a_run_logs_to_an_mlflow_file_store_and_its_lineage_names_the_mlflow_run(tmp_path, tiny_base_dir, home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from trainer.train import train

    env_before = _tracking_env()
    store = tmp_path / "mlruns"
    path = write_config(tmp_path, tiny_base_dir, max_steps=4, eval_steps=2, save_steps=4, report_to="mlflow",
                        mlflow_tracking_uri=str(store), mlflow_experiment_name="tiny-exp", mlflow_run_name="first-try")
    result = train(load_config(path), Registry(home), progress=False)
    assert _tracking_env() == env_before  # set for the run only

    tracked = Registry(home).describe(result.version_ref)["run"]["metrics"]["tracking"]["mlflow"]
    assert set(tracked) == {"run_id", "experiment_id", "tracking_uri"} and tracked["tracking_uri"] == store.as_uri()
    assert json.loads((result.run_dir / TRACKING_FILE).read_text())["mlflow"] == tracked
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked to
    client = MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(tracked["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "first-try"
    assert client.get_experiment(tracked["experiment_id"]).name == "tiny-exp"
    assert run.data.tags["loradock.run_id"] == result.run_id and run.data.params["max_steps"] == "4"
    losses = [(m.step, m.value) for m in client.get_metric_history(tracked["run_id"], "loss")]
    assert losses == [(s, pytest.approx(v)) for s, v in result.curves["train_loss"]] and len(losses) == 4
    assert [m.step for m in client.get_metric_history(tracked["run_id"], "eval_loss")] == [2, 4]

    # resuming the run (here: from its last checkpoint, with no steps left) reopens the same MLflow run
    train(load_config(path), Registry(home), resume=True, run_id=result.run_id, push=False, progress=False)
    reopened = json.loads((result.run_dir / "metrics.json").read_text())["curves"]["tracking"]["mlflow"]
    assert reopened == tracked and client.get_run(tracked["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([tracked["experiment_id"]])) == 1


@pytest.mark.integration
def test_a_run_logs_to_wandb_offline_under_its_run_directory_and_its_lineage_names_the_wandb_run(
        tmp_path, tiny_base_dir, home, monkeypatch, capsys):
    import wandb

    fake_home = tmp_path / "user-home"
    monkeypatch.setenv("HOME", str(fake_home))
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    env_before = _tracking_env()
    path = write_config(tmp_path, tiny_base_dir, max_steps=4, eval_steps=2, save_steps=4, report_to=["wandb"],
                        wandb_mode="offline", wandb_project="tiny-proj", wandb_name="first-try")
    assert main(["train", str(path)]) == 0
    assert _tracking_env() == env_before and wandb.run is None  # set for the run only; the W&B run is finished

    run = Registry(home).describe("tiny-arith")["run"]
    tracked = run["metrics"]["tracking"]["wandb"]
    run_dir = Path(run["run_dir"]).resolve()
    assert {k: tracked[k] for k in ("project", "mode", "url")} == {"project": "tiny-proj", "mode": "offline", "url": None}
    offline_dir = Path(tracked["dir"])
    assert offline_dir.parent == run_dir / "wandb" and offline_dir.name.startswith("offline-run-")
    assert (offline_dir / f"run-{tracked['run_id']}.wandb").stat().st_size > 0
    assert not list(fake_home.rglob("*wandb*")) and not (Path.cwd() / "wandb").exists()


def test_a_tracker_that_refuses_to_start_is_a_one_line_error_and_the_environment_is_restored(tmp_path, tiny_base_dir,
                                                                                              monkeypatch):
    import wandb

    from trainer.tracking import tracking_environment

    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no W&B login to find
    for key in ("WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    env_before = _tracking_env()
    config = load_config(write_config(tmp_path, tiny_base_dir), ["report_to=wandb", "wandb_mode=online"])
    with pytest.raises(TrackingUnavailable, match=r"^wandb: No API key configured\b") as refused:
        with tracking_environment(config, tmp_path / "run", "run-1") as report_to:
            assert report_to == ["wandb"] and os.environ["WANDB_DIR"] == str((tmp_path / "run").resolve())
            wandb.init(project="p")  # what transformers' WandbCallback does when training begins
    assert "\n" not in str(refused.value) and _tracking_env() == env_before and wandb.run is None


def test_a_tracking_uri_is_recorded_without_its_credentials():
    from trainer.tracking import _display_uri

    assert _display_uri("https://me:secret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert _display_uri("file:///tmp/mlruns") == "file:///tmp/mlruns"
