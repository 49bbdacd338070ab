"""Push and pull round trips on the tiny base, for every PEFT type we claim to store."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_BASE

from registry import Registry


@pytest.mark.parametrize("kind", ["lora", "lora-all", "dora", "ia3", "prefix"])
def test_push_then_pull_gives_identical_files(registry: Registry, make_adapter, tmp_path, kind):
    src = make_adapter(kind)
    result = registry.push(src, "demo", message=f"a {kind} adapter")
    assert result.created and result.version.ref == "demo:1"
    version, out = registry.pull("demo:1", tmp_path / "pulled")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    for p in src.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes()
    assert version.base_name == TINY_BASE
    assert version.base_digest == registry.get_base(TINY_BASE).weights_digest
    assert version.peft_type == json.loads((src / "adapter_config.json").read_text())["peft_type"]


def test_push_records_what_the_issue_lists(registry: Registry, make_adapter):
    v = registry.push(make_adapter("lora"), "demo", message="first", creator="alice@host").version
    assert (v.peft_type, v.rank, v.alpha, v.target_modules) == ("LORA", 4, 8.0, ["q_proj", "v_proj"])
    assert v.creator == "alice@host" and v.message == "first" and v.parent is None
    assert v.size_bytes == sum(f.size for f in v.files) > 0
    assert v.manifest_digest.startswith("sha256:")
    v2 = registry.push(make_adapter("lora", seed=1), "demo").version
    assert (v2.number, v2.parent) == (2, 1)
    v3 = registry.push(make_adapter("lora", seed=2), "demo", parent=1).version  # made from version 1, not the latest
    assert (v3.number, v3.parent) == (3, 1)
    from registry.errors import NotFound

    with pytest.raises(NotFound, match="parent demo:9: no live version of demo"):
        registry.push(make_adapter("lora", seed=4), "demo", parent=9)
    assert registry.count_versions("demo") == 3  # refused: nothing recorded


def test_pulled_adapter_loads_in_plain_peft_and_matches_the_original(registry: Registry, make_adapter, tiny_base_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = make_adapter("lora", seed=3)
    registry.push(src, "demo")
    _, out = registry.pull("demo", tmp_path / "pulled")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    logits = []
    for directory in (src, out):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), directory).eval()
        with torch.no_grad():
            logits.append(model(ids).logits)
    bare = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    with torch.no_grad():
        base_logits = bare(ids).logits
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert not torch.allclose(logits[0], base_logits), "the adapter should change the output"


def test_identical_content_returns_the_existing_version(registry: Registry, make_adapter):
    src = make_adapter("lora")
    first = registry.push(src, "demo")
    again = registry.push(src, "demo")
    assert not again.created and again.version.ref == "demo:1"
    assert registry.count_versions("demo") == 1
    forced = registry.push(src, "demo", allow_duplicate=True)
    assert forced.created and forced.version.number == 2
    assert forced.version.manifest_digest == first.version.manifest_digest


def test_resolve_refs(registry: Registry, make_adapter):
    for seed in range(3):
        registry.push(make_adapter("lora", seed=seed), "demo")
    registry.set_alias("demo", "prod", 2)
    assert registry.resolve("demo").number == 3
    assert registry.resolve("demo:1").number == 1
    assert registry.resolve("demo@prod").number == 2


def test_pull_refuses_a_non_empty_output_unless_forced(registry: Registry, make_adapter, tmp_path):
    from registry import Conflict

    registry.push(make_adapter("lora"), "demo")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        registry.pull("demo:1", out)
    assert (out / "keep.txt").read_text() == "mine"
    registry.pull("demo:1", out, force=True)
    assert (out / "adapter_model.safetensors").exists() and not (out / "keep.txt").exists()


def test_diff_reports_config_tensor_and_rank_changes(registry: Registry, make_adapter):
    from registry.diff import diff_versions

    registry.push(make_adapter("lora", seed=0), "demo")
    registry.push(make_adapter("lora", seed=1), "demo")
    registry.push(make_adapter("lora-all", seed=0), "demo")
    d12 = diff_versions(registry, "demo:1", "demo:2")
    assert d12["config"] == {} and not d12["same_content"]
    assert d12["tensors"]["changed"] and all(not c["same_bytes"] for c in d12["tensors"]["changed"])
    assert d12["tensors"]["added"] == [] and d12["tensors"]["removed"] == []
    d13 = diff_versions(registry, "demo:1", "demo:3")
    assert d13["fields"]["rank"] == [4, 8] and d13["fields"]["alpha"] == [8.0, 16.0]
    assert "target_modules" in d13["config"]
    assert any(c["shape"][0] != c["shape"][1] for c in d13["tensors"]["changed"])
    assert any("mlp" in name for name in d13["tensors"]["added"])
    assert diff_versions(registry, "demo:1", "demo:1")["same_content"]


def test_migrations_are_recorded_and_reopening_is_a_no_op(registry: Registry, home):
    from registry.db import MIGRATIONS, connect, migrate

    applied = [tuple(r) for r in registry.conn.execute("SELECT id, name FROM migrations ORDER BY id")]
    assert applied == [(n, name) for n, name, _ in MIGRATIONS]
    conn = connect(home / "registry.db")
    assert migrate(conn) == []
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_registry_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, registry, registry.maintenance, registry.diff, cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
