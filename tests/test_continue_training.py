"""Training on from a registered version's weights (`lora_from_version`), and the loop's `continue` mode.

A continued run starts from the version's adapter, not PEFT's fresh one: trained with a vanishing learning rate, the
result equals the version it continued, while a fresh adapter trained the same way still has its zero B matrices.
A version on another base, or one that does not exist, is refused in one line before anything is made or pushed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_BASE, run_reg, snapshot
from safetensors.torch import load_file
from test_loop_e2e import ARITH as ARITH_ROWS
from test_loop_e2e import flushed, loop_config, run_worker, users, world  # noqa: F401  (world: a fixture)
from test_trainer import ARITH, write_config

from registry import Registry
from trainer.config import load_config
from trainer.loop import LoopRunner

OTHER_BASE = "tiny-llama-wide"
TRAINED_LR = 0.01  # enough for v1's B matrices to move well away from zero in a few steps
VANISHING_LR = 1e-12  # Adam moves each weight by about this much a step, whatever its gradient: far inside SAME
STEPS = 2
SAME = 1e-9  # how far a continued weight may be from the version it continued
B_MOVED = 1e-3  # v1's B matrices are at least this far from zero somewhere (else the comparison would prove nothing)


def small_data(tmp_path: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(ARITH.read_text().splitlines()[:40]) + "\n")  # 32 train + 8 held out
    return data


def arith_config(tmp_path: Path, tiny_base_dir: Path, **overrides) -> Path:
    """A few steps of tiny LoRA on the registered tiny base, pushed as `arith`."""
    settings = {"base_model": TINY_BASE, "datasets": [{"path": str(small_data(tmp_path)), "type": "alpaca"}],
                "val_set_size": 8, "max_steps": STEPS, "eval_steps": None, "save_steps": None,
                "learning_rate": VANISHING_LR, "name": "arith"}
    return write_config(tmp_path, tiny_base_dir, **{**settings, **overrides})


def adapter_tensors(registry: Registry, ref: str, out: Path) -> dict[str, torch.Tensor]:
    _, directory = registry.pull(ref, out)
    return load_file(directory / "adapter_model.safetensors")


def test_a_continued_run_starts_from_the_versions_weights_and_a_fresh_one_does_not(tmp_path, tiny_base_dir, registry):
    from trainer.train import train

    v1 = train(load_config(arith_config(tmp_path, tiny_base_dir, max_steps=8, learning_rate=TRAINED_LR)), registry,
               progress=False).version_ref
    continued = train(load_config(arith_config(tmp_path, tiny_base_dir), [f"lora_from_version={v1}"]), registry,
                      progress=False).version_ref
    fresh = train(load_config(arith_config(tmp_path, tiny_base_dir)), registry, progress=False).version_ref
    assert (v1, continued, fresh) == ("arith:1", "arith:2", "arith:3")

    trained, again, new = (adapter_tensors(registry, ref, tmp_path / ref.replace(":", "-")) for ref in (v1, continued, fresh))
    assert set(trained) == set(again) == set(new) and any(".lora_B." in key for key in trained)
    for key, weight in trained.items():
        assert again[key].shape == weight.shape == new[key].shape, key
        assert (again[key] - weight).abs().max().item() <= SAME, key
    b_keys = [key for key in trained if ".lora_B." in key]
    assert max(trained[key].abs().max().item() for key in b_keys) > B_MOVED
    assert max(new[key].abs().max().item() for key in b_keys) < SAME  # PEFT's zero init, moved by ~1e-12 at most

    run = registry.run(registry.resolve(continued).run_id)
    assert run["config"]["lora_from_version"] == v1  # the lineage says where its weights came from
    assert registry.run(registry.resolve(fresh).run_id)["config"]["lora_from_version"] is None


@pytest.mark.parametrize("ref, code, needle", [
    ("wide:1", 2, f"lora_from_version 'wide:1': wide:1 was trained on base {OTHER_BASE!r}, not {TINY_BASE!r}"),
    ("arith:9", 3, "adapter 'arith' has no version 9"),
    ("nobody:1", 3, "no adapter named 'nobody'"),
    ("arith@prod", 3, "adapter 'arith' has no alias 'prod'"),
])
def test_continuing_a_version_on_another_base_or_one_that_does_not_exist_is_refused_and_pushes_nothing(
        tmp_path, tiny_base_dir, other_base_dir, registry, home, make_adapter, capsys, ref, code, needle):
    registry.add_base(str(other_base_dir), OTHER_BASE)
    registry.push(make_adapter(base_dir=other_base_dir), "wide", base=OTHER_BASE)
    registry.push(make_adapter(), "arith")
    before = snapshot(home)
    exit_code, _, err = run_reg(capsys, "train", str(arith_config(tmp_path, tiny_base_dir)), "--set",
                                f"lora_from_version={ref}")
    lines = err.strip().splitlines()
    assert exit_code == code and lines[-1].startswith("error: ") and needle in lines[-1], err
    assert not any("Traceback" in line for line in lines)
    assert snapshot(home) == before  # no version, no run, no blob
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


@pytest.mark.integration
def test_a_continue_mode_turn_trains_the_champions_weights_on_the_curated_data_only(world):  # noqa: F811
    reg, runner = world["reg"], LoopRunner(world["reg"])
    champion = reg.resolve("support@prod")
    users(world, ARITH_ROWS[200:260])
    flushed(world)
    reg.loops.set("support", loop_config(mode="continue"))

    run = runner.step("support", trigger="manual")
    assert run["state"] == "train", run
    steps = {s["step"]: s for s in reg.loops.runs("support")[0]["steps"]}
    assert steps["train"]["mode"] == "continue"
    job = reg.jobs.get(run["job_id"])
    assert job.config["lora_from_version"] == champion.ref == "support:1"
    assert job.config["datasets"] == [{"path": f"blob:{steps['curate']['dataset_sha256']}",
                                       "type": steps["curate"]["format"]}]  # the curated file, not the champion's data

    run_worker(world)
    job = reg.jobs.get(run["job_id"])
    assert job.state == "succeeded", job.error
    candidate = reg.resolve(job.result_version)
    assert candidate.ref == "support:2" and candidate.base_name == champion.base_name
    assert candidate.rank == champion.rank  # the champion's own PEFT settings, as lora_from_version says
    recorded = reg.run(candidate.run_id)["config"]
    assert recorded["lora_from_version"] == "support:1" and len(recorded["datasets"]) == 1


@pytest.mark.integration
def test_a_retrain_turn_from_a_continued_champion_starts_from_the_base(world):  # noqa: F811
    """After the continue-mode turn above: its candidate, made champion, recorded `lora_from_version`; a retrain turn
    from it must not inherit that key, or it would continue the older champion's weights instead of the base."""
    reg, runner = world["reg"], LoopRunner(world["reg"])
    run = runner.step("support")  # the continue-mode turn's gate
    if run["state"] == "canary":  # an operator promotes the candidate early, which ends the loop's turn
        reg.rollouts.promote("support", 2, reason="test: promoted by hand", actor="test")
        run = runner.step("support")
    assert run["ended_at"], run
    reg.set_alias("support", "prod", 2)
    assert reg.run(reg.resolve("support@prod").run_id)["config"]["lora_from_version"] == "support:1"
    reg.captures.clear("support")
    users(world, ARITH_ROWS[400:460], key_prefix="retrain")
    flushed(world)
    reg.loops.set("support", loop_config(mode="retrain"))

    run = runner.step("support", trigger="manual")
    assert run["state"] == "train", run
    config = reg.jobs.get(run["job_id"]).config
    assert config["lora_from_version"] is None
    # all the data behind the champion's weights: its turn's curated file, the version it continued from's data
    # (support:1's arithmetic), then this turn's curated file
    job = reg.jobs.get(run["job_id"])
    champion_data = [d["sha256"] for d in reg.run(reg.resolve("support:2").run_id)["datasets"] if d.get("sha256")]
    first_data = [d["sha256"] for d in reg.run(reg.resolve("support:1").run_id)["datasets"] if d.get("sha256")]
    assert len(config["datasets"]) == 3
    assert [d["sha256"] for d in job.datasets][:2] == [s.removeprefix("sha256:") for s in champion_data + first_data]
