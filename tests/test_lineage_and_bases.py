"""Lineage (training runs, evaluations) as `reg show` presents it, and registering bases."""

from __future__ import annotations

import shutil

import pytest
from conftest import TINY_BASE

from cli.main import main
from registry import BaseNotFound, Conflict, Registry


def test_show_presents_run_lineage_and_evaluations(registry: Registry, make_adapter, capsys):
    base = registry.get_base(TINY_BASE)
    registry.record_run(
        "run-001", "arith", config={"lora_r": 4, "learning_rate": 2e-4}, config_hash="sha256:abc", base=base,
        datasets=[{"path": "examples/arith.jsonl", "sha256": "sha256:" + "d" * 64, "counts": {"train": 900, "val": 100}}],
        seed=7, libraries={"torch": "2.13.0", "peft": "0.21.2"}, hardware={"device": "cpu", "cores": 2},
        metrics={"train_loss": [[10, 2.1], [20, 1.4]], "val_loss": [[20, 1.6]]},
        started_at="2026-11-29T10:00:00", finished_at="2026-11-29T10:01:30", duration_s=90.0, run_dir="/tmp/run-001",
    )
    version = registry.push(make_adapter("lora"), "arith", run_id="run-001").version
    registry.record_evaluation(version, "heldout", "val", {"exact_match": 0.7, "loss": 1.6},
                               base_metrics={"exact_match": 0.1, "loss": 3.2}, run_id="run-001")
    info = registry.describe("arith")
    assert info["run"]["config"] == {"learning_rate": 2e-4, "lora_r": 4} and info["run"]["seed"] == 7
    assert info["run"]["datasets"][0]["counts"] == {"train": 900, "val": 100}
    assert info["evaluations"][0]["metrics"]["exact_match"] == 0.7
    capsys.readouterr()
    assert main(["show", "arith:1"]) == 0
    out = capsys.readouterr().out
    for needle in ("run-001", "sha256:abc", "seed       7", "examples/arith.jsonl", "torch 2.13.0",
                   "heldout/val exact_match: 0.7  (base 0.1, delta 0.6)"):
        assert needle in out, needle


def test_base_add_is_idempotent_and_refuses_a_name_clash(registry: Registry, tiny_base_dir, other_base_dir):
    again, created = registry.add_base(str(tiny_base_dir), TINY_BASE)
    assert not created and again.path == str(tiny_base_dir.resolve())
    with pytest.raises(Conflict, match="already registered"):
        registry.add_base(str(other_base_dir), TINY_BASE)
    assert registry.get_base(TINY_BASE).weights_digest == again.weights_digest


def test_base_add_resolves_a_hub_id_from_the_local_cache(registry: Registry, tiny_base_dir, tmp_path, monkeypatch):
    """Offline, a hub id resolves through huggingface_hub's cache layout (models--ORG--NAME/snapshots/REV)."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--tiny-chat"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_base_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    base, created = registry.add_base("acme/tiny-chat", "tiny-chat")
    assert created and base.hub_id == "acme/tiny-chat" and base.path == str(snapshot)
    assert base.weights_digest == registry.get_base(TINY_BASE).weights_digest
    with pytest.raises(BaseNotFound, match="acme/not-there"):
        registry.add_base("acme/not-there", "not-there")
