"""Issue 12, registry part: what an attacker (or an accident) tries against push, pull, gc and verify.

Real SQLite files, real gRPC servers on port 0, real files; the database is tampered with directly where a
hostile registry is simulated, because a remote pull reads exactly what the server's database says.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import TINY_BASE, snapshot
from remote_helpers import registry_with_base, start_registry
from safetensors.numpy import load_file, save_file
from test_bad_input import assert_refused, run_cli

from registry import IntegrityError, Registry
from registry.adapter_config import MAX_CONFIG_BYTES
from registry.remote.rpc import pb, pb_grpc


@pytest.fixture
def pushed(registry, make_adapter):
    registry.push(make_adapter("lora"), "demo")
    return registry


def _tamper(home: Path, sql: str, *args) -> None:
    """Change the registry's database behind its back (what a hostile or broken registry serves)."""
    conn = sqlite3.connect(home / "registry.db")
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def _hostile_paths(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "abs" / "victim"), "../escaped", "a/../../escaped", "nul\0byte", "..", ".hidden", "sub/file"]


# --- 1. manifest paths are plain names, checked before anything is written ---------------------------------------


@pytest.mark.parametrize("index", range(7))
def test_pull_refuses_a_manifest_path_that_leaves_the_output(capsys, pushed, home, tmp_path, index):
    hostile = _hostile_paths(tmp_path)[index]
    _tamper(home, "UPDATE files SET path=? WHERE path='README.md'", hostile)
    out = tmp_path / "work" / "out"
    message = assert_refused(capsys, home, ["pull", "demo:1", "--out", str(out)], 6, "file name", repr(hostile)[:40])
    assert "nothing was written" in message
    assert not (tmp_path / "work").exists() and not (tmp_path / "abs").exists() and not (tmp_path / "escaped").exists()


def test_the_servers_cache_and_export_pull_through_the_same_check(capsys, pushed, home, tmp_path):
    """The inference server fills <home>/cache/adapters/<digest> with `registry.pull(ref, dir, force=True)`; export pulls too."""
    _tamper(home, "UPDATE files SET path=? WHERE path='README.md'", "../../escaped")
    cache_dir = home / "cache" / "adapters" / "abc"
    cache_dir.mkdir(parents=True)
    with pytest.raises(IntegrityError, match="file name '../../escaped'"):
        pushed.pull("demo:1", cache_dir, force=True)
    assert list(cache_dir.iterdir()) == [] and not (home / "escaped").exists() and not (home / "cache" / "escaped").exists()
    code, _, err = run_cli(capsys, "export", "demo:1", "--out", str(tmp_path / "exported"), "--format", "peft",
                           "--home", str(home))
    assert code == 6 and "file name '../../escaped'" in err.splitlines()[-1], err
    assert not (tmp_path / "exported").exists() and not (tmp_path.parent / "escaped").exists()


def test_pull_refuses_a_file_list_that_does_not_hash_to_the_manifest(capsys, pushed, home, tmp_path):
    _tamper(home, "UPDATE files SET size=size+1 WHERE path='README.md'")
    assert_refused(capsys, home, ["pull", "demo:1", "--out", str(tmp_path / "out")], 6, "hashes to", "was altered")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_remote_pull_refuses_a_hostile_path_in_the_registrys_answer(capsys, tmp_path, tiny_base_dir, make_adapter, index):
    served_home = tmp_path / "served"
    reg = registry_with_base(served_home, tiny_base_dir, TINY_BASE)
    reg.push(make_adapter("lora"), "demo")
    reg.close()
    hostile = _hostile_paths(tmp_path)[index]
    _tamper(served_home, "UPDATE files SET path=? WHERE path='README.md'", hostile)
    server, url, _ = start_registry(served_home)
    try:
        local_home = tmp_path / "client-home"
        out = tmp_path / "work" / "out"
        capsys.readouterr()
        code, _, err = run_cli(capsys, "--registry", url, "pull", "demo:1", "--out", str(out), "--home", str(local_home))
    finally:
        server.stop(0)
    assert code == 6 and err.startswith("error: ") and err.count("\n") == 1 and "file name" in err, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "abs").exists() and not (tmp_path / "escaped").exists()


# --- 2. --force never replaces the home, anything inside it, or anything above it -----------------------------------


@pytest.mark.parametrize("where", ["home", "blobs", "parent", "symlink"])
def test_pull_force_refuses_to_replace_the_home(capsys, pushed, home, tmp_path, where):
    link = tmp_path / "link-to-home"
    link.symlink_to(home)
    out = {"home": home, "blobs": home / "blobs", "parent": home.parent, "symlink": link}[where]
    message = assert_refused(capsys, home, ["pull", "demo:1", "--out", str(out), "--force"], 4, "refusing to replace",
                             f"registry home {home.resolve()}", str(out))
    assert "it " in message and (home / "registry.db").stat().st_size > 0
    assert link.is_symlink() and Registry(home).resolve("demo:1").number == 1


def test_export_force_refuses_to_replace_the_blob_store(capsys, pushed, home):
    assert_refused(capsys, home, ["export", "demo:1", "--out", str(home / "blobs"), "--force", "--format", "peft",
                                  "--home", str(home)], 4, "refusing to replace", "lies inside the registry home")


def test_pull_force_may_replace_a_copy_in_the_homes_cache(pushed, home):
    """The inference server keeps pulled adapters in <home>/cache/adapters/ and re-pulls them with force."""
    target = home / "cache" / "adapters" / "x"
    target.mkdir(parents=True)
    (target / "stale").write_text("old")
    _, out = pushed.pull("demo:1", target, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(f.path for f in pushed.resolve("demo:1").files)


# --- 3. push reads regular files only, and no symlink out of the directory ------------------------------------------


def test_push_refuses_a_symlink_out_of_the_adapter_directory(capsys, registry, home, make_adapter, tmp_path):
    src = make_adapter("lora")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the registry")
    (src / "README.md").unlink()
    (src / "README.md").symlink_to(secret)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "symlink", str(secret), "outside the adapter directory")


def test_push_accepts_a_symlink_that_stays_inside(registry, make_adapter):
    src = make_adapter("lora")
    (src / "notes.md").symlink_to(src / "README.md")
    assert "notes.md" in [f.path for f in registry.push(src, "demo").version.files]


def test_push_refuses_a_fifo_without_opening_it(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    os.mkfifo(src / "notes.txt")  # opening it for reading would block forever: nothing may
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "FIFO", "notes.txt")


# --- 4. a lost database is not a fresh registry; gc and verify know it --------------------------------------------


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_a_lost_database_next_to_blobs_is_an_error(capsys, pushed, home, state):
    pushed.close()
    db = home / "registry.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.unlink()
    if state == "empty":
        db.touch()
    for args in (["ls"], ["verify"], ["gc", "--grace", "0"]):
        assert_refused(capsys, home, args, 14, str(db), "holds blobs", "restore registry.db")
    assert db.exists() == (state == "empty") and (not db.exists() or db.stat().st_size == 0)


def test_gc_refuses_when_the_database_records_no_versions_unless_told(capsys, pushed, home, tmp_path):
    pushed.close()
    blobs = snapshot(home)["blobs"]
    fresh = Registry(tmp_path / "fresh-home")
    fresh.list_adapters()  # creates its database
    fresh.close()
    fresh = fresh.home
    for name in ("registry.db", "registry.db-wal", "registry.db-shm"):
        (home / name).unlink(missing_ok=True)
        if (fresh / name).exists():
            (fresh / name).rename(home / name)
    assert_refused(capsys, home, ["gc", "--grace", "0"], 4, "records no versions", f"holds {len(blobs)} blobs",
                   "--all-unreferenced")
    code, out, err = run_cli(capsys, "gc", "--grace", "0", "--all-unreferenced")
    assert code == 0 and f"removed {len(blobs)} blobs" in out, (out, err)
    assert snapshot(home)["blobs"] == []


def test_verify_runs_sqlites_integrity_check(capsys, pushed, home):
    conn = pushed.conn
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='idx_files_sha256'").fetchone()[0]
    pushed.close()
    with open(home / "registry.db", "r+b") as fh:  # the index verify's own queries never read: only the check sees it
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * page_size)
    code, out, err = run_cli(capsys, "verify")
    assert code != 0 and "BAD registry.db" in err and "a damaged database" in out, (code, out, err)


# --- 9. the config is checked against the tensors; absurd weights are refused --------------------------------------


def _edit_config(src: Path, **changes) -> None:
    path = src / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, needle", [
    ({"r": 5}, "has rank 4 in the weights, but the config says r=5"),
    ({"r": 8, "rank_pattern": {"q_proj": 4}}, "has rank 4 in the weights"),
    ({"r": 0}, "r=0"),
    ({"r": True}, "r=True"),
    ({"lora_alpha": float("nan")}, "lora_alpha=nan"),
    ({"lora_alpha": float("inf")}, "lora_alpha=inf"),
    ({"lora_alpha": 0}, "lora_alpha=0"),
    ({"lora_alpha": -8}, "lora_alpha=-8"),
    ({"lora_alpha": "8"}, "lora_alpha='8'"),
    ({"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern['q_proj']=nan"),
    ({"peft_type": "EVIL"}, "peft_type 'EVIL' is not a PEFT type"),
])
def test_push_checks_the_config_against_the_tensors(capsys, registry, home, make_adapter, changes, needle):
    src = make_adapter("lora")
    _edit_config(src, **changes)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, needle)


def test_a_rank_pattern_that_matches_the_tensors_is_accepted(registry, make_adapter):
    src = make_adapter("lora")
    _edit_config(src, r=16, rank_pattern={"q_proj": 4, "self_attn.v_proj": 4})
    assert registry.push(src, "demo").created


def test_an_oversized_config_is_refused_before_it_is_parsed(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    _edit_config(src, notes="x" * MAX_CONFIG_BYTES)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 7, "adapter_config.json", f"at most {MAX_CONFIG_BYTES:,}")


@pytest.mark.parametrize("depth", [40, 200_000])
def test_a_deeply_nested_config_is_refused_cleanly(capsys, registry, home, make_adapter, depth):
    src = make_adapter("lora")
    config = json.loads((src / "adapter_config.json").read_text())
    text = json.dumps(config)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    (src / "adapter_config.json").write_text(text)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "nested more than 32 levels")


@pytest.mark.parametrize("value, dtype", [(1e38, np.float32), (2e4, np.float16), (-3e4, np.float32)])
def test_absurd_lora_weights_are_refused(capsys, registry, home, make_adapter, value, dtype):
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    tensors = {k: v.astype(dtype) for k, v in load_file(weights).items()}
    victim = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[victim][:] = value
    save_file(tensors, weights)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "beyond ±10000", victim)


def test_lora_weights_up_to_the_bound_are_accepted(registry, make_adapter):
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors[sorted(tensors)[0]].reshape(-1)[0] = 1e4
    save_file(tensors, weights)
    assert registry.push(src, "demo").created


# --- 10. nothing a push commits can outgrow one gRPC message ----------------------------------------------------------


@pytest.fixture
def served(tmp_path, tiny_base_dir):
    home = tmp_path / "served-home"
    registry_with_base(home, tiny_base_dir, TINY_BASE).close()
    server, url, _ = start_registry(home, max_blob_mb=64)
    yield home, url
    server.stop(0)


def _upload_and_commit(url: str, src: Path, **commit):
    """A client that skips the local checks: uploads every file of `src`, then commits it."""
    import hashlib

    stub = pb_grpc.RegistryStub(grpc.insecure_channel(url.removeprefix("grpc://")))
    entries = []
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        chunks = [data[i:i + 2**20] for i in range(0, len(data), 2**20)] or [b""]
        requests = [pb.UploadBlobRequest(digest=digest, size=len(data), data=chunks[0])]
        requests += [pb.UploadBlobRequest(data=c) for c in chunks[1:]]
        stub.UploadBlob(iter(requests), timeout=30)
        entries.append(pb.FileEntry(path=path.name, size=len(data), sha256=digest))
    return stub.CommitPush(pb.CommitPushRequest(files=entries, **commit), timeout=30)


def test_an_oversized_config_is_refused_by_a_remote_registry_too(capsys, served, make_adapter):
    home, url = served
    src = make_adapter("lora")
    _edit_config(src, notes="x" * (2 * MAX_CONFIG_BYTES))
    before = snapshot(home)["versions"]
    capsys.readouterr()
    code, _, err = run_cli(capsys, "--registry", url, "push", str(src), "--name", "demo")
    assert code == 7 and "at most 1,048,576 bytes" in err and err.count("\n") == 1, err
    with pytest.raises(grpc.RpcError) as exc:  # a client that does not check first
        _upload_and_commit(url, src, name="demo")
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 1,048,576" in exc.value.details()
    assert snapshot(home)["versions"] == before
    assert run_cli(capsys, "--registry", url, "ls")[0] == 0


def test_a_long_message_or_creator_is_refused_and_ls_show_pull_keep_working(capsys, served, make_adapter, tmp_path):
    home, url = served
    src = make_adapter("lora")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "--registry", url, "push", str(src), "--name", "demo", "-m", "m" * (64 * 1024 + 1))
    assert code == 7 and "--message is 65,537 bytes" in err and len(err) < 400, err
    with pytest.raises(grpc.RpcError) as exc:
        _upload_and_commit(url, src, name="demo", creator="c" * 100_000)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the creator is 100,000 bytes" in exc.value.details()
    assert snapshot(home)["versions"] == []
    assert run_cli(capsys, "--registry", url, "push", str(src), "--name", "demo", "-m", "m" * 64 * 1024)[0] == 0
    for args in (["ls"], ["ls", "demo"], ["show", "demo:1"], ["pull", "demo:1", "--out", str(tmp_path / "out")]):
        code, _, err = run_cli(capsys, "--registry", url, *args)
        assert code == 0, (args, err)


def test_ls_of_many_large_versions_does_not_break_on_the_message_limit(capsys, served, make_adapter):
    """17 versions with ~1 MiB configs are more than one 16 MiB message: the client then fetches them one by one."""
    from registry.remote.client import RemoteRegistry

    _, url = served
    src = make_adapter("lora")
    with RemoteRegistry(url) as remote:
        for i in range(17):
            _edit_config(src, notes=f"{i}" + "x" * (MAX_CONFIG_BYTES - 2000))
            assert remote.push(src, "big").created
        versions = remote.list_versions("big", limit=20)
    assert [v.number for v in versions] == list(range(17, 0, -1))
    assert all(len(v.adapter_config["notes"]) > MAX_CONFIG_BYTES - 2000 for v in versions)
    code, out, err = run_cli(capsys, "--registry", url, "ls", "big")
    assert code == 0 and "big:17" in out, err


# --- 12. remote errors show no server paths, and no value comes back whole ------------------------------------------


def test_remote_errors_do_not_reveal_server_paths(served, make_adapter):
    home, url = served
    src = make_adapter("lora")
    (src / "adapter_config.json").write_text("{not json")
    with pytest.raises(grpc.RpcError) as exc:
        _upload_and_commit(url, src, name="demo")
    details = exc.value.details()
    assert "adapter_config.json: not valid JSON" in details, details
    assert str(home) not in details and "stage-" not in details and str(home.parent) not in details, details


def test_a_huge_value_is_never_echoed_back_whole(capsys, served, pushed, home):
    _, url = served
    huge = "a" * 100_000
    capsys.readouterr()
    for args in (["show", huge], ["show", f"demo:{huge}"], ["alias", "set", f"demo@{huge}", "1"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "…" in err and "a" * 250 not in err and len(err) < 1000, (args, len(err))
    stub = pb_grpc.RegistryStub(grpc.insecure_channel(url.removeprefix("grpc://")))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Resolve(pb.RefRequest(ref=huge), timeout=10)
    details = exc.value.details()
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "a" * 250 not in details and len(details) < 1000
