"""`reg runs ls` / `reg runs rm`: real `reg train` processes, killed or finished, and what the listing says of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer import write_config

from cli.main import main
from registry import Registry


def run_reg(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def runs_json(capsys) -> list[dict]:
    code, out, err = run_reg(capsys, "runs", "ls", "--json")
    assert code == 0, err
    return json.loads(out)


def start_training(tmp_path: Path, base_dir: Path, home: Path) -> tuple[subprocess.Popen, Path]:
    """A `reg train` process that would train for hours (no checkpoint before its end), once its run.json exists."""
    path = write_config(tmp_path, base_dir, max_steps=100_000, eval_steps=100_000, save_steps=100_000, micro_batch_size=2)
    env = {**os.environ, "LORADOCK_HOME": str(home), "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "train.log").open("w")  # a file, not a pipe: a full pipe would block the process
    proc = subprocess.Popen([str(Path(sys.executable).parent / "reg"), "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    # Polls a file the run writes; the deadline only bounds a broken run (each poll is one short step).
    for _ in range(6000):
        found = list(home.glob("runs/*/run.json"))
        if found:
            return proc, found[0].parent
        if proc.poll() is not None:
            pytest.fail(f"reg train exited early: {(tmp_path / 'train.log').read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no run.json after 5 minutes")


@pytest.mark.integration
def test_a_run_killed_before_its_first_checkpoint_shows_as_abandoned(tmp_path, tiny_base_dir, home, capsys):
    proc, run_dir = start_training(tmp_path, tiny_base_dir, home)
    try:
        (row,) = runs_json(capsys)
        assert (row["id"], row["state"], row["pid"]) == (run_dir.name, "running", proc.pid)
        assert row["config"] == str(tmp_path / "tiny-arith.yaml") and row["version"] is None
        code, _, err = run_reg(capsys, "runs", "rm", run_dir.name, "--force")
        assert code == 4 and f"run {run_dir.name} is still training (pid {proc.pid}" in err and run_dir.is_dir()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # what the killed process left

    (row,) = runs_json(capsys)
    assert row["state"] == "abandoned" and row["duration_s"] is not None
    code, out, _ = run_reg(capsys, "runs", "ls")
    line = next(line for line in out.splitlines() if line.startswith(run_dir.name))
    assert line.split()[1] == "abandoned" and "1 abandoned" in out and "--resume" in out
    code, out, err = run_reg(capsys, "runs", "rm", run_dir.name)
    assert code == 0 and f"removed run {run_dir.name} (abandoned)" in out, err
    assert not run_dir.exists() and runs_json(capsys) == []


@pytest.mark.integration
def test_ctrl_c_marks_the_run_interrupted(tmp_path, tiny_base_dir, home, capsys):
    proc, run_dir = start_training(tmp_path, tiny_base_dir, home)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    (row,) = runs_json(capsys)
    assert row["state"] == "interrupted" and row["id"] == run_dir.name


def test_runs_rm_keeps_the_run_of_a_live_version_unless_forced(tmp_path, tiny_base_dir, home, capsys):
    path = write_config(tmp_path, tiny_base_dir, max_steps=2, evaluation={"max_examples": 2, "max_new_tokens": 2,
                                                                          "max_general_ppl_ratio": None})
    assert main(["train", str(path)]) == 0
    (row,) = runs_json(capsys)
    assert row["state"] == "succeeded" and row["version"] == "tiny-arith:1" and row["duration_s"] > 0
    code, out, _ = run_reg(capsys, "runs", "ls")
    assert "tiny-arith:1" in out and "succeeded" in out and str(path) in out
    code, _, err = run_reg(capsys, "runs", "rm", row["id"])
    assert code == 4 and "tiny-arith:1, which is still live" in err and Path(row["path"]).is_dir()
    code, _, _ = run_reg(capsys, "runs", "rm", row["id"], "--force")
    assert code == 0 and not Path(row["path"]).exists()
    assert Registry(home).resolve("tiny-arith:1")  # the version itself stays


@pytest.mark.parametrize("run_id, code", [("../outside", 2), ("/etc", 2), ("a/b", 2), (".", 2), ("..", 2), ("", 2),
                                          ("no-such-run", 3), ("escape", 3)])
def test_runs_rm_removes_only_plain_run_directories_inside_runs(tmp_path, home, capsys, run_id, code):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    runs = home / "runs"
    runs.mkdir(parents=True)
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    got, out, err = run_reg(capsys, "runs", "rm", run_id, "--force")
    assert got == code and err.startswith("error: ") and err.count("\n") == 1 and out == ""
    assert (outside / "keep.txt").read_text() == "precious" and (runs / "escape").is_symlink()
