"""Durability with real processes: concurrent pushes, pushes killed with SIGKILL, corrupted blobs.

Everything here is real: SQLite files on disk, `reg` and Python child processes, signals.
Adapters are made in the test process (that needs torch); the children only push, which
imports no torch, so they start and finish quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_BASE

from registry import IntegrityError, Registry
from registry.blobs import sha256_file
from registry.maintenance import gc, verify
from registry.records import FileRecord
from registry.store import manifest_digest

REPO = Path(__file__).resolve().parents[1]
REG = Path(sys.executable).parent / "reg"
N_PROCS = 8
CHILD_TIMEOUT_S = 120

# A child that has imported everything, says it is ready, waits for the start signal (a
# file appearing), then runs the real `reg` entry point in-process, so that the eight
# children hit the registry at the same instant instead of staggered by interpreter start-up.
CLI_AT_BARRIER = r"""
import sys, time
from pathlib import Path
from cli.main import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.0005)
sys.exit(main(sys.argv[3:]))
"""

# The same, for a fresh home opened through the Python API: register the same base, list.
OPEN_AT_BARRIER = r"""
import json, sys, time
from pathlib import Path
from registry import Registry
ready, go, home, base_dir, base_name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ready.touch()
while not go.exists():
    time.sleep(0.0005)
reg = Registry(home)
base, created = reg.add_base(base_dir, base_name)
adapters = reg.list_adapters()
print(json.dumps({"created": created, "digest": base.weights_digest, "adapters": len(adapters)}))
reg.close()
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("LORADOCK_HOME", None)  # every child is told its home explicitly
    env["LORADOCK_USER"] = "durability@test"
    return env


def _run_at_barrier(tmp_path: Path, script: str, argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    """Start one child per argv, wait until all are ready, release them at once; return (rc, out, err) each."""
    sync = tmp_path / "barrier"
    sync.mkdir()
    go = sync / "go"
    procs = []
    try:
        for i, argv in enumerate(argvs):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", script, str(sync / f"ready-{i}"), str(go), *argv],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(), cwd=tmp_path,
            ))
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not all((sync / f"ready-{i}").exists() for i in range(len(argvs))):
            for p in procs:
                if p.poll() is not None:
                    _, err = p.communicate()
                    pytest.fail(f"a child exited before the barrier (rc {p.returncode}):\n{err}")
            assert time.monotonic() < deadline, "children never became ready"
            time.sleep(0.005)
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=CHILD_TIMEOUT_S)
            results.append((p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _expected_manifest(directory: Path) -> str:
    files = [FileRecord(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(directory.iterdir()) if p.is_file()]
    return manifest_digest(files)


def _referenced_digests(home: Path) -> set[str]:
    conn = sqlite3.connect(home / "registry.db")
    try:
        return {r[0] for r in conn.execute(
            "SELECT DISTINCT f.sha256 FROM files f JOIN versions v ON v.id = f.version_id WHERE v.deleted_at IS NULL"
        )}
    finally:
        conn.close()


def _blobs_on_disk(home: Path) -> set[str]:
    return {p.name for p in (home / "blobs" / "sha256").glob("*/*") if p.is_file()}


def _temp_files(home: Path) -> list[str]:
    tmp = home / "blobs" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


# --- 1. concurrent pushes and a concurrently created home ---------------------------------------


def test_eight_processes_pushing_to_one_adapter_all_succeed_with_consecutive_versions(tmp_path, tiny_base_dir, make_adapter):
    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()

    sources = [make_adapter("lora", seed=100 + i) for i in range(N_PROCS)]
    expected = {_expected_manifest(s): s for s in sources}
    assert len(expected) == N_PROCS, "the seeds should give eight different adapters"

    results = _run_at_barrier(
        tmp_path, CLI_AT_BARRIER,
        [["push", str(s), "--name", "demo", "--message", f"from child {i}", "--json", "--home", str(home)]
         for i, s in enumerate(sources)],
    )
    for rc, out, err in results:
        assert rc == 0, f"a concurrent push failed (rc {rc}):\n{err}"
        assert "locked" not in err.lower() and "locked" not in out.lower(), err
    pushed = [json.loads(out) for _, out, _ in results]
    assert all(p["created"] for p in pushed)
    numbers = sorted(int(p["ref"].split(":")[1]) for p in pushed)
    assert numbers == list(range(1, N_PROCS + 1))
    assert all(p["ref"].startswith("demo:") for p in pushed)
    manifests = [p["manifest_digest"] for p in pushed]
    assert len(set(manifests)) == N_PROCS
    assert set(manifests) == set(expected), "each version must hold exactly one child's directory"

    reg = Registry(home)
    try:
        versions = sorted(reg.list_versions("demo"), key=lambda v: v.number)
        assert [v.number for v in versions] == list(range(1, N_PROCS + 1))
        by_ref = {p["ref"]: p["manifest_digest"] for p in pushed}
        for v in versions:
            assert v.manifest_digest == by_ref[v.ref]
            assert v.parent == (v.number - 1 if v.number > 1 else None), "versions were allocated under the write lock"
            files = reg.resolve(v.ref).files
            assert sorted(f.path for f in files) == sorted(p.name for p in expected[v.manifest_digest].iterdir())
        next_version = reg.conn.execute("SELECT next_version FROM adapters WHERE name='demo'").fetchone()[0]
        assert next_version == N_PROCS + 1
        report = verify(reg)
        assert report.ok, report.problems
        assert report.versions == N_PROCS
    finally:
        reg.close()
    assert _temp_files(home) == []


def test_eight_processes_opening_a_brand_new_home_at_once(tmp_path, tiny_base_dir):
    from registry.db import MIGRATIONS

    home = tmp_path / "fresh-home"  # does not exist: every child races to create and migrate it
    results = _run_at_barrier(
        tmp_path, OPEN_AT_BARRIER, [[str(home), str(tiny_base_dir), TINY_BASE] for _ in range(N_PROCS)],
    )
    for rc, out, err in results:
        assert rc == 0, f"opening a new home concurrently failed (rc {rc}):\n{err}"
        assert "locked" not in err.lower(), err
    outs = [json.loads(out) for _, out, _ in results]
    assert sum(o["created"] for o in outs) == 1, "exactly one child registers the base; the rest find it"
    assert len({o["digest"] for o in outs}) == 1
    assert all(o["adapters"] == 0 for o in outs)

    conn = sqlite3.connect(home / "registry.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT id, name FROM migrations ORDER BY id").fetchall() == [(n, name) for n, name, _ in MIGRATIONS]
        assert conn.execute("SELECT name FROM bases").fetchall() == [(TINY_BASE,)]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# --- 2. pushes killed with SIGKILL -----------------------------------------------------------------

BIG_FILES = ("notes-a.txt", "notes-b.txt")  # sorted after the adapter's own files, so they are ingested last
BIG_SIZE = 24 * 1024 * 1024
KILL_ITERATIONS = 14


def _mark(directory: Path, iteration: int) -> dict[str, str]:
    """Make the big files unique to this iteration (cheaply, in place); return every file's sha256."""
    marker = f"iteration-{iteration:04d}\n".encode()
    for name in BIG_FILES:
        fd = os.open(directory / name, os.O_WRONLY)
        try:
            os.pwrite(fd, marker, 0)
        finally:
            os.close(fd)
    return {p.name: sha256_file(p) for p in directory.iterdir() if p.is_file()}


def _check_invariants(home: Path, expected_paths: set[str], known: dict[str, dict[str, str]]) -> int:
    """What must hold whatever moment a push died at; return the number of visible versions."""
    reg = Registry(home)
    try:
        rows = reg.conn.execute("SELECT * FROM versions WHERE adapter='big' ORDER BY number").fetchall()
        numbers = [r["number"] for r in rows]
        assert numbers == list(range(1, len(rows) + 1)), f"visible versions must be consecutive, got {numbers}"
        next_version = reg.conn.execute("SELECT next_version FROM adapters WHERE name='big'").fetchone()[0]
        assert next_version == len(rows) + 1
        for r in rows:
            files = reg.conn.execute("SELECT path, size, sha256 FROM files WHERE version_id=?", (r["id"],)).fetchall()
            assert files, f"big:{r['number']} is visible with no files"
            paths = {f["path"] for f in files}
            assert paths == expected_paths, f"big:{r['number']} is half-written: {sorted(paths)}"
            assert r["size_bytes"] == sum(f["size"] for f in files)
            recorded = {f["path"]: f["sha256"] for f in files}
            assert recorded in known.values(), f"big:{r['number']} holds content no push sent"
            assert r["manifest_digest"] == manifest_digest([FileRecord(*f) for f in files])
        report = verify(reg)
        assert report.ok, report.problems
        assert report.versions == len(rows)
        assert reg.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return len(rows)
    finally:
        reg.close()


def _wait_for_big_temp_file(home: Path, proc: subprocess.Popen, old: set[str], timeout: float = 60.0) -> bool:
    """Wait until the push is part-way through writing one of the big blobs (a new temp file over 1 MiB)."""
    tmp = home / "blobs" / "tmp"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for name in set(os.listdir(tmp)) - old if tmp.exists() else ():
            try:
                if (tmp / name).stat().st_size > 1024 * 1024:
                    return True
            except FileNotFoundError:
                pass
        time.sleep(0.001)
    return False


@pytest.mark.integration
def test_pushes_killed_at_random_points_never_leave_a_half_version_and_gc_cleans_up(tmp_path, tiny_base_dir, make_adapter):
    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    src = make_adapter("lora", seed=7)
    rng = random.Random(20240607)
    for name in BIG_FILES:
        (src / name).write_bytes(rng.randbytes(BIG_SIZE))
    expected_paths = {p.name for p in src.iterdir() if p.is_file()}
    push_cmd = [str(REG), "push", str(src), "--name", "big", "--json", "--home", str(home)]
    env = _child_env()

    # One push run to completion, to learn when a push starts writing the big blobs and when it ends.
    known = {"0": _mark(src, 0)}
    started = time.monotonic()
    first = subprocess.Popen(push_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert _wait_for_big_temp_file(home, first, set()), "the first push never wrote a big blob"
    ingest_starts = time.monotonic() - started
    out, err = first.communicate(timeout=CHILD_TIMEOUT_S)
    duration = time.monotonic() - started
    assert first.returncode == 0, err
    assert json.loads(out)["ref"] == "big:1"
    assert _check_invariants(home, expected_paths, known) == 1

    outcomes = []
    for i in range(1, KILL_ITERATIONS + 1):
        known[str(i)] = _mark(src, i)
        temps_before = set(_temp_files(home))
        leftovers_before = (len(_blobs_on_disk(home) - _referenced_digests(home)), len(temps_before))
        proc = subprocess.Popen(push_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            if i % 3 == 1:
                # Kill while a big blob is being written, wherever that lands within the blob.
                _wait_for_big_temp_file(home, proc, temps_before)
                time.sleep(rng.uniform(0, 0.03))
            else:
                # Kill at a random moment, from start-up (nothing written yet) to just past the commit.
                time.sleep(rng.uniform(0.5 * ingest_starts, 1.05 * duration))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        assert proc.returncode in (0, -signal.SIGKILL), f"push {i} failed on its own (rc {proc.returncode}):\n{err}"
        assert "locked" not in err.lower(), err
        visible = _check_invariants(home, expected_paths, known)
        orphans = len(_blobs_on_disk(home) - _referenced_digests(home))
        temps = len(_temp_files(home))
        outcomes.append({
            "killed": proc.returncode == -signal.SIGKILL, "completed": proc.returncode == 0, "visible": visible,
            "new_leftovers": orphans > leftovers_before[0] or temps > leftovers_before[1],
        })

    killed = [o for o in outcomes if o["killed"]]
    assert killed, f"no push was killed: {outcomes}"
    assert any(o["new_leftovers"] for o in killed), f"no kill landed mid-push: {outcomes}"
    visible = outcomes[-1]["visible"]
    assert visible >= 1

    # `reg gc` removes what the killed pushes left behind, and nothing a version needs.
    referenced = _referenced_digests(home)
    orphaned = _blobs_on_disk(home) - referenced
    temps = _temp_files(home)
    assert orphaned or temps, "the kills should have left orphaned blobs or temp files"
    gc_run = subprocess.run(
        [str(REG), "gc", "--grace", "0", "--json", "--home", str(home)], capture_output=True, text=True, env=env,
        timeout=CHILD_TIMEOUT_S,
    )
    assert gc_run.returncode == 0, gc_run.stderr
    gc_report = json.loads(gc_run.stdout)
    assert set(gc_report["removed"]) == orphaned
    assert gc_report["temp_removed"] == len(temps)
    assert _blobs_on_disk(home) == referenced, "after gc every blob on disk belongs to a live version"
    assert _temp_files(home) == []
    verify_run = subprocess.run([str(REG), "verify", "--home", str(home)], capture_output=True, text=True, env=env,
                                timeout=CHILD_TIMEOUT_S)
    assert verify_run.returncode == 0, verify_run.stdout + verify_run.stderr
    assert _check_invariants(home, expected_paths, known) == visible

    # The registry still works normally, and every visible version pulls back byte for byte.
    reg = Registry(home)
    try:
        known["final"] = _mark(src, 9999)
        result = reg.push(src, "big")
        assert result.created and result.version.number == visible + 1
        for number in range(1, visible + 2):
            version, out = reg.pull(f"big:{number}", tmp_path / "pulled" / f"v{number}")
            pulled = {p.name: sha256_file(p) for p in out.iterdir()}
            assert pulled in known.values(), f"big:{number} pulled content no push sent"
            assert pulled == {f.path: f.sha256 for f in version.files}
        assert verify(reg).ok
        assert gc(reg, grace_s=0).removed == []
    finally:
        reg.close()


# --- 3. a corrupted blob ---------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int) -> None:
    mode = path.stat().st_mode
    path.chmod(0o644)
    try:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x01]))
    finally:
        path.chmod(mode & 0o777)


def test_a_flipped_byte_is_reported_by_verify_and_pull_and_pull_writes_nothing(registry: Registry, home, make_adapter, tmp_path):
    src = make_adapter("lora", seed=11)
    version = registry.push(src, "demo").version
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    blob = registry.blobs.path(weights.sha256)
    before = blob.read_bytes()
    _flip_byte(blob, len(before) // 2)
    corrupted = blob.read_bytes()
    assert len(corrupted) == len(before) and corrupted != before

    report = verify(registry)
    assert not report.ok
    assert [(p.ref, p.path, p.sha256) for p in report.problems] == [("demo:1", "adapter_model.safetensors", weights.sha256)]
    assert "hashes to" in report.problems[0].problem
    assert not verify(registry, "demo:1").ok

    env = _child_env()
    cli_verify = subprocess.run([str(REG), "verify", "--home", str(home)], capture_output=True, text=True, env=env,
                                timeout=CHILD_TIMEOUT_S)
    assert cli_verify.returncode == 6, cli_verify.stdout + cli_verify.stderr
    assert "demo:1" in cli_verify.stderr and "adapter_model.safetensors" in cli_verify.stderr
    assert "1 bad files" in cli_verify.stdout

    out = tmp_path / "pulled" / "demo-v1"
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        registry.pull("demo:1", out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no partial directory may be left beside the output"

    cli_pull = subprocess.run(
        [str(REG), "pull", "demo:1", "--out", str(out), "--home", str(home)], capture_output=True, text=True, env=env,
        timeout=CHILD_TIMEOUT_S,
    )
    assert cli_pull.returncode == 6, cli_pull.stdout + cli_pull.stderr
    lines = cli_pull.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cli_pull.stderr
    assert "adapter_model.safetensors" in lines[0] and "demo:1" in lines[0]
    assert "Traceback" not in cli_pull.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == []

    # Failed pulls report the damage; they neither hide nor "repair" it in the store.
    assert blob.read_bytes() == corrupted
    assert hashlib.sha256(corrupted).hexdigest() != weights.sha256


def test_pushing_the_original_files_again_repairs_a_corrupt_blob(registry: Registry, make_adapter):
    src = make_adapter("lora")
    version = registry.push(src, "demo").version
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    _flip_byte(registry.blobs.path(weights.sha256), 100)
    assert not verify(registry).ok
    again = registry.push(src, "demo")
    assert not again.created and again.version.ref == "demo:1"
    assert verify(registry).ok


def test_a_gc_that_removes_a_reused_blob_before_commit_makes_the_push_fail_cleanly(registry: Registry, make_adapter):
    """gc and push race on a blob only a deleted version used: the push must never record a version with a missing blob."""
    src = make_adapter("lora")
    registry.push(src, "demo")
    registry.remove_version("demo:1")
    original_ingest = registry.blobs.ingest

    def ingest_then_gc(path):
        result = original_ingest(path)
        other = Registry(registry.home)
        gc(other, grace_s=-1)  # a gc from another connection, ignoring the grace period, right after ingest
        other.close()
        return result

    registry.blobs.ingest = ingest_then_gc
    with pytest.raises(IntegrityError, match="vanished"):
        registry.push(src, "demo")
    registry.blobs.ingest = original_ingest
    assert registry.count_versions("demo") == 0
    assert registry.push(src, "demo").version.number == 2
    assert verify(registry).ok
