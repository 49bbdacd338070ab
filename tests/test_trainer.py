"""The trainer end to end on the tiny Llama: config -> trained, evaluated, pushed version with lineage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli.main import main
from registry import Registry
from conftest import TINY_BASE

from trainer.config import ConfigError, TrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
ARITH = ROOT / "examples" / "arith.jsonl"


def write_config(tmp_path: Path, base_dir: Path, name: str = "tiny-arith", **overrides) -> Path:
    config = {
        "base_model": str(base_dir), "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "datasets": [{"path": str(ARITH), "type": "alpaca"}], "val_set_size": 24, "sequence_len": 48,
        "micro_batch_size": 8, "max_steps": 8, "eval_steps": 4, "save_steps": 4, "learning_rate": 0.002, "seed": 3,
        "push": {"name": name}, "evaluation": {"max_examples": 8, "max_new_tokens": 4, "max_general_ppl_ratio": None},
    }
    for key, value in overrides.items():
        config[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_config_loads_and_validates(path):
    config = load_config(path)
    assert config.datasets and all(Path(d.path).is_file() for d in config.datasets)
    assert config.push.name


@pytest.mark.parametrize(
    "override, needle",
    [("lora_rr=8", "unknown config key 'lora_rr'"), ("push.nam=x", "unknown config key 'push.nam'"),
     ("lora_r=0", "lora_r: must be a positive integer, got 0"), ("adapter=lokr", "adapter: must be one of"),
     ("learning_rate=fast", "learning_rate: expected a number, got 'fast'"), ("optimizer=adam9", "optimizer: must be one of"),
     ("datasets=[]", "datasets: at least one"), ("push.name=Bad/Name", "push: invalid adapter name"),
     ("val_set_size=1.5", "val_set_size"), ("evaluation.task_metric=f1", "evaluation.task_metric")],
)
def test_bad_config_values_name_the_key(tmp_path, tiny_base_dir, home, capsys, override, needle):
    path = write_config(tmp_path, tiny_base_dir)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_config(path, [override])
    capsys.readouterr()
    assert main(["train", str(path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def _no_run_dirs(home: Path) -> bool:
    return not (home / "runs").exists() or not any((home / "runs").iterdir())


@pytest.mark.parametrize("override, code, needle", [
    ("datasets=[{path: missing.jsonl, type: alpaca}]", 2, "dataset file not found"),
    ("base_model=/nonexistent/base", 3, "'/nonexistent/base' is not a directory"),
    ("lora_target_modules=[q_proj,qkv_proj]", 2,
     "lora_target_modules: 'qkv_proj' matches no module of base tiny-llama; its linear modules are "
     "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or use all-linear)"),
    ("max_steps=-5", 2, "max_steps: must be > 0, or 0 / -1 to train num_epochs, got -5"),
    ("evaluation.general_text=missing-general.txt", 2, "evaluation.general_text: no such file"),
])
def test_a_refused_run_is_one_line_and_leaves_no_run_directory(tmp_path, tiny_base_dir, home, registry, capsys, override,
                                                               code, needle):
    path = write_config(tmp_path, tiny_base_dir, base_model=TINY_BASE)
    capsys.readouterr()
    assert main(["train", str(path), "--set", override]) == code
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1] and not any("Traceback" in line for line in err)
    assert _no_run_dirs(home)


@pytest.mark.integration
def test_max_steps_zero_trains_num_epochs_as_axolotl_does(tmp_path, tiny_base_dir, home):
    from trainer.train import train

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(ARITH.read_text().splitlines()[:40]) + "\n")  # 32 train + 8 held out: 4 steps an epoch
    path = write_config(tmp_path, tiny_base_dir, datasets=[{"path": str(data), "type": "alpaca"}], val_set_size=8,
                        max_steps=0, num_epochs=2, eval_steps=None, save_steps=None)
    config = load_config(path)
    assert "0 or -1 (unset) trains num_epochs" in TrainConfig.__dataclass_fields__["max_steps"].metadata["help"]
    result = train(config, Registry(home), push=False, progress=False)
    assert [s for s, _ in result.curves["train_loss"]] == list(range(1, 9))


def test_train_pushes_an_evaluated_version_with_full_lineage(tmp_path, tiny_base_dir, home, capsys):
    path = write_config(tmp_path, tiny_base_dir, push={"name": "tiny-arith", "alias": "staging", "message": "first"})
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tiny-arith:1" in out and "Held-out evaluation" in out
    reg = Registry(home)
    info = reg.describe("tiny-arith@staging")
    run = info["run"]
    config = load_config(path)
    assert run["config_hash"] == config.config_hash() and run["config"]["lora_r"] == 4
    assert run["seed"] == 3 and run["base_name"] == info["version"]["base_name"]
    dataset = run["datasets"][0]
    assert dataset["sha256"].startswith("sha256:") and dataset["counts"]["val"] == 24
    assert dataset["counts"]["train"] + dataset["counts"]["val"] == dataset["counts"]["unique"]
    assert {"torch", "transformers", "peft"} <= set(run["libraries"]) and run["hardware"]["cpu_cores"]
    assert run["duration_s"] > 0 and run["status"] == "succeeded"
    curves = run["metrics"]
    assert [s for s, _ in curves["train_loss"]] == list(range(1, 9)) and [s for s, _ in curves["val_loss"]] == [4, 8]
    assert Path(curves["loss_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (evaluation,) = info["evaluations"]
    assert evaluation["metrics"]["examples"] == 24 and "exact_match" in evaluation["metrics"]
    assert evaluation["base_metrics"]["loss"] > evaluation["metrics"]["loss"]  # trained on the task: lower held-out loss
    assert evaluation["passed"] is True
    shown = capsys.readouterr() or None
    assert main(["show", "tiny-arith:1"]) == 0
    shown = capsys.readouterr().out
    for needle in (config.config_hash()[:20], "seed       3", "arith.jsonl", "heldout/val loss"):
        assert needle in shown, needle


def test_test_datasets_are_the_held_out_split_and_train_on_nothing(tmp_path, tiny_base_dir, home, capsys):
    """With `test_datasets`, every training example trains, the held-out split is the test file's (deduplicated),
    the lineage records the file as held out, and the split is rebuilt from the lineage for `reg export`."""
    from trainer.heldout import held_out_examples

    lines = ARITH.read_text().splitlines()
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held-out.jsonl"
    train.write_text("\n".join(lines[:48]) + "\n")
    held_out.write_text("\n".join(lines[60:70] + lines[60:62]) + "\n")  # 10 examples, 2 of them twice
    path = write_config(tmp_path, tiny_base_dir, name="tiny-held-out", datasets=[{"path": "train.jsonl", "type": "alpaca"}],
                        test_datasets=[{"path": "held-out.jsonl", "type": "alpaca"}], max_steps=2, eval_steps=2,
                        save_steps=2)
    assert load_config(path).test_datasets[0].path == str(held_out.resolve())  # relative to the config, as datasets
    assert main(["train", str(path)]) == 0, capsys.readouterr().err
    reg = Registry(home)
    info = reg.describe("tiny-held-out:1")
    files = info["run"]["datasets"]
    assert [(Path(f["path"]).name, f.get("split")) for f in files[:2]] == [("train.jsonl", None), ("held-out.jsonl", "test")]
    counts = files[-1]["counts"]
    assert (counts["train"], counts["val"]) == (48 - counts["exact_duplicates"] - counts["near_duplicates"], 10)
    assert info["evaluations"][0]["metrics"]["examples"] == 10  # evaluated on the held-out file
    examples, _ = held_out_examples(reg, reg.resolve("tiny-held-out:1"))
    assert sorted(e.source.rsplit(":", 1)[0] for e in examples) == [str(held_out.resolve())] * 10


def test_a_bad_test_datasets_entry_is_named_by_its_key(tmp_path, tiny_base_dir):
    path = write_config(tmp_path, tiny_base_dir, test_datasets=[{"path": "x.jsonl", "type": "csv"}])
    with pytest.raises(ConfigError, match=r"test_datasets\[0\]\.type"):
        load_config(path)
    path = write_config(tmp_path, tiny_base_dir, test_datasets="held-out.jsonl")
    with pytest.raises(ConfigError, match="test_datasets"):
        load_config(path)


@pytest.mark.parametrize("adapter", ["qlora", "dora", "ia3", "prefix"])
def test_every_adapter_kind_trains_and_pushes(tmp_path, tiny_base_dir, home, adapter):
    from trainer.train import train

    config = load_config(write_config(tmp_path, tiny_base_dir, name=f"tiny-{adapter}", adapter=adapter, max_steps=4))
    result = train(config, Registry(home), progress=False)
    version = Registry(home).resolve(result.version_ref)
    expected = {"qlora": "LORA", "dora": "LORA", "ia3": "IA3", "prefix": "PREFIX_TUNING"}[adapter]
    assert version.peft_type == expected
    assert version.adapter_config.get("use_dora", False) == (adapter == "dora")
    run = Registry(home).run(version.run_id)
    assert run["config"]["load_in_4bit"] == (adapter == "qlora")


@pytest.mark.integration
def test_failed_threshold_still_pushes_but_marks_the_version(tmp_path, tiny_base_dir, home, capsys):
    path = write_config(tmp_path, tiny_base_dir, evaluation={"max_examples": 4, "max_new_tokens": 3, "min_task_score": 0.99})
    assert main(["train", str(path)]) == 0
    assert "evaluation FAILED" in capsys.readouterr().out
    (evaluation,) = Registry(home).describe("tiny-arith")["evaluations"]
    assert evaluation["passed"] is False and "below min_task_score 0.99" in evaluation["failures"][0]
    assert main(["show", "tiny-arith"]) == 0
    assert "FAILED heldout/val: exact_match" in capsys.readouterr().out


def test_early_stopping_ends_the_run_when_validation_loss_stalls(tmp_path, tiny_base_dir, home):
    from trainer.train import train

    path = write_config(tmp_path, tiny_base_dir, max_steps=40, eval_steps=2, save_steps=2, learning_rate=1e-9,
                        early_stopping_patience=2)
    result = train(load_config(path), Registry(home), progress=False)
    last_step = result.curves["train_loss"][-1][0]
    assert last_step < 40 and len(result.curves["val_loss"]) == 3


def test_bad_dataset_lines_stop_the_run_unless_skipped(tmp_path, tiny_base_dir, home, capsys):
    data = tmp_path / "data.jsonl"
    lines = ARITH.read_text().splitlines()[:200]
    lines.insert(5, '{"instruction": "What is 1 + 1?"}')
    lines.insert(9, "not json")
    data.write_text("\n".join(lines) + "\n")
    path = write_config(tmp_path, tiny_base_dir, datasets=[{"path": str(data), "type": "alpaca"}], max_steps=2)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{data.name}:6" in err and f"{data.name}:10" in err
    assert main(["train", str(path), "--skip-bad-lines"]) == 0
    assert "skipped 2 bad lines" in capsys.readouterr().err


def test_reg_eval_records_an_evaluation_on_a_data_file(tmp_path, tiny_base_dir, home, capsys):
    assert main(["train", str(write_config(tmp_path, tiny_base_dir, max_steps=4))]) == 0
    data = tmp_path / "probe.jsonl"
    data.write_text("\n".join(ARITH.read_text().splitlines()[-10:]) + "\n")
    capsys.readouterr()
    assert main(["eval", "tiny-arith:1", "--data", str(data), "--max-examples", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["adapter"]["examples"] == 10 and "loss" in result["base"]
    names = [e["name"] for e in Registry(home).describe("tiny-arith:1")["evaluations"]]
    assert names == ["heldout", "eval:probe.jsonl"]


def _reg(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "reg"), *args]


@pytest.mark.integration
def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_base_dir, home):
    path = write_config(tmp_path, tiny_base_dir, max_steps=60, eval_steps=20, save_steps=5, micro_batch_size=4)
    env = {**os.environ, "LORADOCK_HOME": str(home)}
    proc = subprocess.Popen(_reg("train", str(path)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    checkpoints = None
    while time.time() < deadline:
        found = list(home.glob("runs/*/checkpoints/checkpoint-10/trainer_state.json"))
        if found:
            checkpoints = found[0].parent.parent
            break
        assert proc.poll() is None, "training finished before it could be killed; make it longer"
        time.sleep(0.05)
    assert checkpoints is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = checkpoints.parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    # a checkpoint is one the Trainer finished writing (its trainer_state.json comes last): the kill may cut one off
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                    if (p / "trainer_state.json").exists())
    assert killed_at < 60
    assert Registry(home).list_adapters() == []  # nothing pushed by the killed run

    done = subprocess.run(_reg("train", str(path), "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"continuing from checkpoint-{killed_at}" in done.stderr
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "succeeded" and state["version"] == "tiny-arith:1"
    run = Registry(home).run(state["run_id"])
    steps = [s for s, _ in run["metrics"]["train_loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # one continuous curve, no repeated steps


@pytest.mark.integration
def test_training_runs_unchanged_under_accelerate_launch_with_two_processes(tmp_path, tiny_base_dir, home):
    path = write_config(tmp_path, tiny_base_dir, max_steps=4)
    accelerate = Path(sys.executable).parent / "accelerate"
    # accelerate's `--cpu` alone runs one process (multi-CPU wants mpirun); its torch.distributed launcher with
    # ACCELERATE_USE_CPU=1 runs real DDP over gloo on CPU processes.
    env = {**os.environ, "LORADOCK_HOME": str(home), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "trainer", str(path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("trainable parameters:") == 2  # both processes trained
    reg = Registry(home)
    assert [a.name for a in reg.list_adapters()] == ["tiny-arith"] and reg.count_versions("tiny-arith") == 1
    run = reg.run(reg.resolve("tiny-arith").run_id)
    assert run["hardware"]["processes"] == 2
    assert len(list((home / "runs").iterdir())) == 1  # one run directory shared by both processes
