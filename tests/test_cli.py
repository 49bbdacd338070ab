"""The `reg` command line end to end: every command has help, listing commands speak JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cli.main import app, main


def reg(capsys, *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, (args, code, captured.out, captured.err)
    return captured.out


def all_command_paths() -> list[list[str]]:
    paths = []

    def walk(command, prefix: list[str]) -> None:
        paths.append(prefix)
        if isinstance(command, typer.core.TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, prefix + [name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "reg")
def test_every_command_has_help_text(capsys, path):
    out = reg(capsys, *path, "--help")
    assert "Usage:" in out
    command = typer.main.get_command(app)
    for part in path:
        command = command.commands[part]
    assert (command.help or "").strip(), f"`reg {' '.join(path)}` has no help text"
    for param in command.params:
        if isinstance(param, typer.core.TyperOption) and param.name != "help":
            assert (param.help or "").strip(), f"`reg {' '.join(path)}` option {param.opts} has no help"


def test_push_prints_ref_and_manifest_digest(capsys, registry, home, make_adapter):
    out = reg(capsys, "push", str(make_adapter("lora")), "--name", "demo", "-m", "first")
    ref, digest = out.split()
    assert ref == "demo:1" and digest == registry.resolve("demo:1").manifest_digest
    data = json.loads(reg(capsys, "push", str(make_adapter("lora", seed=1)), "--name", "demo", "--alias", "staging", "--json"))
    assert data["ref"] == "demo:2" and data["created"] is True
    assert registry.resolve("demo@staging").number == 2


def test_listing_commands_speak_json(capsys, registry, home, make_adapter, tmp_path):
    reg(capsys, "push", str(make_adapter("lora")), "--name", "demo")
    reg(capsys, "push", str(make_adapter("ia3")), "--name", "demo")
    reg(capsys, "alias", "set", "demo@prod", "1")
    adapters = json.loads(reg(capsys, "ls", "--json"))
    assert adapters == [{"name": "demo", "versions": 2, "latest": 2, "aliases": {"prod": 1}, "updated_at": adapters[0]["updated_at"]}]
    versions = json.loads(reg(capsys, "ls", "demo", "--json"))
    assert [v["ref"] for v in versions] == ["demo:2", "demo:1"] and versions[0]["peft_type"] == "IA3"
    shown = json.loads(reg(capsys, "show", "demo@prod", "--json"))
    assert shown["version"]["ref"] == "demo:1" and shown["aliases_here"] == ["prod"]
    assert {f["path"] for f in shown["version"]["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert shown["run"] is None and shown["evaluations"] == []
    diff = json.loads(reg(capsys, "diff", "demo:1", "demo:2", "--json"))
    assert diff["fields"]["peft_type"] == ["LORA", "IA3"]
    bases = json.loads(reg(capsys, "base", "ls", "--json"))
    assert [b["name"] for b in bases] == ["tiny-llama"] and bases[0]["weights_digest"].startswith("sha256:")
    history = json.loads(reg(capsys, "alias", "history", "demo", "--json"))
    assert [(e["alias"], e["action"], e["new_version"]) for e in history] == [("prod", "set", 1)]
    pulled = json.loads(reg(capsys, "pull", "demo@prod", "--out", str(tmp_path / "p"), "--json"))
    assert Path(pulled["path"]) == tmp_path / "p"
    assert json.loads(reg(capsys, "verify", "--json"))["ok"] is True


def test_human_output_names_the_important_things(capsys, registry, home, make_adapter):
    reg(capsys, "push", str(make_adapter("lora")), "--name", "demo", "-m", "hello there", "--alias", "prod")
    listing = reg(capsys, "ls")
    assert "demo" in listing and "prod->1" in listing
    versions = reg(capsys, "ls", "demo")
    assert "demo:1" in versions and "hello there" in versions and "LORA" in versions
    shown = reg(capsys, "show", "demo")
    for needle in ("demo:1", "prod", "tiny-llama", "adapter_model.safetensors", "Lineage", "Evaluations"):
        assert needle in shown


def test_ls_of_many_versions_shows_the_newest_and_says_how_many_are_hidden(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    for _ in range(5):
        registry.push(src, "demo", allow_duplicate=True)
    out = reg(capsys, "ls", "demo", "--limit", "2")
    assert "demo:5" in out and "demo:4" in out and "demo:3" not in out
    assert "3 older versions not shown" in out


def test_alias_history_and_rollback(capsys, registry, home, make_adapter):
    for seed in range(3):
        registry.push(make_adapter("lora", seed=seed), "demo")
    reg(capsys, "alias", "set", "demo@prod", "1")
    assert "(was demo:1)" in reg(capsys, "alias", "set", "demo@prod", "3")
    reg(capsys, "alias", "set", "demo@prod", "1")  # rollback: set it back to an earlier version
    reg(capsys, "alias", "rm", "demo@prod")
    events = registry.alias_history("demo")
    assert [(e.action, e.old_version, e.new_version) for e in events] == [
        ("set", None, 1), ("set", 1, 3), ("set", 3, 1), ("rm", 1, None)
    ]
    assert "rm" in reg(capsys, "alias", "history", "demo")


def test_rm_soft_deletes_and_never_reuses_the_number(capsys, registry, home, make_adapter):
    registry.push(make_adapter("lora", seed=0), "demo")
    registry.push(make_adapter("lora", seed=1), "demo", alias="prod")
    assert "deleted demo:2" in reg(capsys, "rm", "demo:2", "--force")
    assert registry.aliases("demo") == {}
    assert registry.resolve("demo").number == 1
    assert registry.push(make_adapter("lora", seed=2), "demo").version.number == 3
    assert "(deleted)" in reg(capsys, "ls", "demo", "--deleted")
    # pushing the deleted content again makes a new version rather than reviving the old one
    assert registry.push(make_adapter("lora", seed=1), "demo").version.number == 4


def test_gc_removes_only_blobs_no_live_version_uses(capsys, registry, home, make_adapter):
    from registry.maintenance import gc

    shared_readme = make_adapter("lora", seed=0)
    registry.push(shared_readme, "demo")
    registry.push(make_adapter("lora", seed=1), "demo")
    blobs_v1 = {f.sha256 for f in registry.resolve("demo:1").files}
    blobs_v2 = {f.sha256 for f in registry.resolve("demo:2").files}
    registry.remove_version("demo:1")
    assert gc(registry).removed == []  # within the grace period nothing goes
    out = reg(capsys, "gc", "--dry-run", "--grace", "0")
    assert "would remove" in out
    assert all(registry.blobs.has(d) for d in blobs_v1)
    report = gc(registry, grace_s=0)
    assert set(report.removed) == blobs_v1 - blobs_v2
    assert all(registry.blobs.has(d) for d in blobs_v2)
    assert all(not registry.blobs.has(d) for d in blobs_v1 - blobs_v2)


def test_home_flag_and_env_var_select_the_registry(capsys, tmp_path, tiny_base_dir, monkeypatch):
    monkeypatch.delenv("LORADOCK_HOME", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    reg(capsys, "base", "add", str(tiny_base_dir), "--name", "tiny-llama", "--home", str(a))
    monkeypatch.setenv("LORADOCK_HOME", str(b))
    assert "no base models yet" in reg(capsys, "base", "ls")
    assert "tiny-llama" in reg(capsys, "base", "ls", "--home", str(a))


def test_reg_console_script_runs(home, registry):
    exe = Path(sys.executable).parent / "reg"
    out = subprocess.run([str(exe), "ls", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_tables_are_not_cut_when_stdout_is_not_a_terminal(capsys, home, tiny_base_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("COLUMNS", raising=False)
    long_dir = tmp_path / ("a-base-directory-with-a-long-name-" * 4) / "tiny-llama-copy"
    shutil.copytree(tiny_base_dir, long_dir)
    name = "tiny-llama-with-a-long-name-that-no-80-column-table-fits-0123456"[:64]
    reg(capsys, "base", "add", str(long_dir), "--name", name)
    out = reg(capsys, "base", "ls")  # captured: not a terminal
    assert name in out and str(long_dir) in out and "…" not in out
    piped = subprocess.run([str(Path(sys.executable).parent / "reg"), "base", "ls"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "COLUMNS"}, check=True)  # `reg base ls | cat`
    row = next(line for line in piped.stdout.splitlines() if line.startswith(name))
    assert str(long_dir) in row and "…" not in piped.stdout


def test_reg_serve_takes_every_server_option_from_its_one_definition():
    """Each ServerOptions field is a `reg serve` flag with the field's default and help (server/options.py)."""
    import dataclasses

    from server.options import ServerOptions

    serve = typer.main.get_command(app).commands["serve"]
    by_name = {p.name: p for p in serve.params if p.param_type_name == "option"}
    for f in dataclasses.fields(ServerOptions):
        option = by_name[f.name]
        assert option.help == f.metadata["help"] and option.default == f.default, f.name
        assert f"--{f.metadata.get('flag', f.name).replace('_', '-')}" in option.opts, (f.name, option.opts)
    assert {"registry_only", "registry_url", "home"} <= set(by_name)


@pytest.mark.parametrize("flag, value, message", [
    ("max_queue", 0, "--max-queue must be at least 1, got 0"),
    ("max_batch_size", -3, "--max-batch-size must be at least 1, got -3"),
    ("workers", -1, "--workers must be 0 or more, got -1"),
    ("gather_cache_mb", -5, "--gather-cache-mb must be 0 or more, got -5"),
])
def test_a_server_option_below_its_declared_minimum_names_the_flag_and_value(flag, value, message):
    """The range lives beside the default (`documented(..., minimum=)`); validate() reports it with the flag's name."""
    from server.errors import BadRequest
    from server.options import ServerOptions

    with pytest.raises(BadRequest) as caught:
        ServerOptions(**{flag: value}).validate()
    assert str(caught.value) == message
