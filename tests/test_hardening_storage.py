"""Issue 12 item 11, registry part: failures of the machine and odd numbers end in one line, never a traceback.

A full disk is a real small file system (a 4 MiB tmpfs, when this runs as root with `mount`; skipped
elsewhere) and, everywhere, a real file size limit (RLIMIT_FSIZE in a child process: the kernel answers
EFBIG). A read-only home is a read-only bind mount as root, a chmod otherwise. A full database is SQLite's
own `max_page_count`. Corrupt databases are real files with real damage.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_BASE, snapshot
from remote_helpers import REG, ROOT, big_adapter, start_registry
from test_bad_input import assert_refused, run_cli

from registry import Registry
from registry.errors import StorageFull


def _mount(*args: str) -> bool:
    return shutil.which("mount") is not None and subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _fill(directory: Path, leave: int) -> None:
    """Fill the file system of `directory` to the last byte, then give back `leave` bytes."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at a fresh directory (root only)."""
    path = tmp_path / "disk"
    path.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)):
        pytest.skip("a small real file system needs root and mount")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def big(make_adapter, tmp_path):
    """A real PEFT LoRA adapter with ~450 KB of weights (rank 256)."""
    return big_adapter(make_adapter("lora"), tmp_path / "big-adapter", rank=256)


def _one_line(code: int, err: str, expected: int, *needles: str) -> None:
    message = err.strip()
    assert code == expected and message.startswith("error: ") and "\n" not in message, (code, err)
    for needle in needles:
        assert needle in message, (needle, message)


# --- disk full ------------------------------------------------------------------------------------------------------


def test_push_onto_a_full_disk_is_one_line_and_records_nothing(capsys, small_disk, tiny_base_dir, big):
    home = small_disk / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    _fill(small_disk, leave=256 * 1024)  # room for SQLite's -shm file and the small files, not for the weights
    before = snapshot(home)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "push", str(big), "--name", "demo", "--home", str(home))
    _one_line(code, err, 12, "no space left", "adapter_model.safetensors")
    after = snapshot(home)
    assert after["tmp"] == [] and {k: v for k, v in after.items() if k != "blobs"} == {
        k: v for k, v in before.items() if k != "blobs"}  # the small files' blobs stay, for the retry (gc removes them)


def test_pull_onto_a_full_disk_is_one_line_and_leaves_nothing(capsys, registry, home, small_disk, big):
    registry.push(big, "demo")
    _fill(small_disk, leave=64 * 1024)
    out = small_disk / "out"
    assert_refused(capsys, home, ["pull", "demo:1", "--out", str(out)], 12, "no space left", "demo:1")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_push_past_the_file_size_limit_is_one_line(tmp_path, tiny_base_dir, big):
    """RLIMIT_FSIZE needs no privileges: the kernel refuses the write with EFBIG, as a full quota would."""
    home = tmp_path / "home"
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.close()
    limit = 256 * 1024  # above SQLite's -shm (32 KiB), below the weights (~450 KB)
    script = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); " + REG[-1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LORADOCK_HOME": str(home)}
    run = subprocess.run([REG[0], "-c", script, "push", str(big), "--name", "demo"], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    _one_line(run.returncode, run.stderr.splitlines()[-1] if run.stderr else "", 12, "file size limit")
    assert "Traceback" not in run.stderr, run.stderr
    assert Registry(home).list_adapters() == []


def test_a_full_database_is_reported_not_masked_by_cannot_rollback(registry, make_adapter):
    src = make_adapter("lora")
    pages = registry.conn.execute("PRAGMA page_count").fetchone()[0]
    registry.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(StorageFull, match="database or disk is full"):
        registry.push(src, "demo", message="m" * 60_000)  # needs new (overflow) pages
    registry.conn.execute("PRAGMA max_page_count = 1073741823")
    assert registry.list_adapters() == [] and registry.push(src, "demo").version.number == 1


# --- a read-only home -----------------------------------------------------------------------------------------------


@pytest.fixture
def read_only_home(registry, home, make_adapter, tmp_path):
    registry.push(make_adapter("lora"), "demo")
    registry.close()
    if os.geteuid() == 0:
        view = tmp_path / "ro-home"
        view.mkdir()
        if not (_mount("--bind", str(home), str(view)) and _mount("-o", "remount,ro,bind", str(view))):
            subprocess.run(["umount", str(view)], capture_output=True)
            pytest.skip("a read-only bind mount needs mount")
        yield view
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
    else:
        os.chmod(home, stat.S_IRUSR | stat.S_IXUSR)
        yield home
        os.chmod(home, stat.S_IRWXU)


@pytest.mark.parametrize("args", [["ls"], ["ls", "demo"], ["show", "demo:1"]])
def test_a_read_only_home_is_one_line(capsys, read_only_home, args):
    capsys.readouterr()
    code, _, err = run_cli(capsys, *args, "--home", str(read_only_home))
    _one_line(code, err, 13, str(read_only_home), "read-only")


# --- a damaged database ---------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"


@pytest.mark.parametrize("damage", ["header", "middle", "directory"])
def test_a_damaged_database_is_one_line(capsys, registry, home, make_adapter, damage):
    registry.push(make_adapter("lora"), "demo")
    page_size = registry.conn.execute("PRAGMA page_size").fetchone()[0]
    root = registry.conn.execute("SELECT rootpage FROM sqlite_master WHERE name='versions'").fetchone()[0]
    registry.close()
    db = home / "registry.db"
    if damage == "header":
        with open(db, "r+b") as fh:
            fh.write(os.urandom(100))
    elif damage == "middle":
        with open(db, "r+b") as fh:  # the versions table's root page, overwritten
            fh.seek((root - 1) * page_size)
            fh.write(b"\x5a" * page_size)
    else:
        db.unlink()
        db.mkdir()
    before = _digest(db)
    for args in (["ls"], ["show", "demo:1"], ["push", str(make_adapter("lora", seed=1)), "--name", "demo"]):
        capsys.readouterr()
        code, _, err = run_cli(capsys, *args)
        _one_line(code, err, 14, str(db), "restore registry.db")
    assert _digest(db) == before


# --- version numbers ------------------------------------------------------------------------------------------------


@pytest.fixture
def pushed(registry, make_adapter):
    registry.push(make_adapter("lora"), "demo")
    return registry


@pytest.mark.parametrize("args, needle", [
    (["show", "demo:99999999999999999999"], "'99999999999999999999'"),
    (["show", "demo:9223372036854775808"], "'9223372036854775808'"),
    (["show", "demo:１"], "'１'"),
    (["show", "demo:²"], "'²'"),
    (["pull", "demo:٣"], "'٣'"),
    (["alias", "set", "demo@x", "99999999999999999999"], "99999999999999999999"),
    (["rollout", "set", "demo", "--arm", "１=100"], "'１=100'"),
    (["rollout", "set", "demo", "--arm", "99999999999999999999=100"], "99999999999999999999"),
    (["rollout", "promote", "demo", "99999999999999999999"], "99999999999999999999"),
    (["ls", "demo", "--limit", "99999999999999999999"], "99999999999999999999"),
])
def test_version_numbers_are_ascii_and_fit_sqlite(capsys, pushed, home, args, needle):
    assert_refused(capsys, home, args, 2, needle)


def test_a_huge_version_number_over_grpc_is_invalid_not_unknown(capsys, pushed, home):
    server, url, _ = start_registry(home)
    capsys.readouterr()
    try:
        for ref in ("demo:99999999999999999999", "demo:１"):
            code, _, err = run_cli(capsys, "--registry", url, "show", ref)
            _one_line(code, err, 2, "invalid version")
    finally:
        server.stop(0)


# --- TLS ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                     b"\xff\xfe\x00binary"])
def test_a_tls_ca_that_is_not_pem_is_one_line(capsys, tmp_path, content):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    code, _, err = run_cli(capsys, "--registry", "grpcs://127.0.0.1:9", "--tls-ca", str(ca), "ls")
    _one_line(code, err, 2, f"--tls-ca {ca}", "not a PEM CA certificate")
