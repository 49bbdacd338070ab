"""The registry benchmark's measurements (load_tests/bench_registry.py): synthetic bases and adapters, push/pull
throughput against a plain copy, and `reg ls` / `reg show` latency with many versions.

Everything is synthetic and torch-free: the bases are llama-shaped safetensors files written with numpy (only
their headers matter to the registry), the adapters random fp32 LoRA weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from registry import Registry
from registry import db as dbmod
from registry.blobs import fsync_path

MB = 1_000_000
TARGET_RATIO = 0.5
TARGET_LATENCY_S = 0.300

# The big adapter's base: llama-like, 8 layers of hidden 1024 with q/k/v/o (64 MiB of fp16 zeros).
BIG_HIDDEN, BIG_LAYERS, BIG_MODULES = 1024, 8, ("q_proj", "k_proj", "v_proj", "o_proj")
# The base of the many-versions adapter: tiny, so each version is a few KB.
SMALL_HIDDEN, SMALL_LAYERS, SMALL_MODULES, SMALL_RANK = 64, 2, ("q_proj", "v_proj"), 4


# --- synthetic models ------------------------------------------------------------------------


def write_base(out: Path, hidden: int, layers: int, modules: tuple[str, ...], vocab: int = 512) -> Path:
    """A llama-shaped base directory: config.json plus model.safetensors (fp16 zeros; only shapes matter)."""
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": hidden * 2, "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64), "vocab_size": vocab, "torch_dtype": "float16",
        "tie_word_embeddings": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {
        "model.embed_tokens.weight": np.zeros((vocab, hidden), np.float16),
        "model.norm.weight": np.ones((hidden,), np.float16),
        "lm_head.weight": np.zeros((vocab, hidden), np.float16),
    }
    for i in range(layers):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones((hidden,), np.float16)
        for m in modules:
            tensors[f"model.layers.{i}.self_attn.{m}.weight"] = np.zeros((hidden, hidden), np.float16)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def write_adapter(
    out: Path, base_dir: Path, hidden: int, layers: int, modules: tuple[str, ...], rank: int, seed: int,
    config_too: bool = True,
) -> Path:
    """A PEFT LoRA directory for the base at `base_dir`: random finite fp32 A [r, in] and B [out, r]."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        for m in modules:
            key = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, hidden), dtype=np.float32) * np.float32(0.02)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((hidden, rank), dtype=np.float32) * np.float32(0.02)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    if config_too:
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": False, "target_modules": list(modules),
            "base_model_name_or_path": str(base_dir.resolve()),
        }
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def rank_for_size(size_bytes: float) -> int:
    per_rank = BIG_LAYERS * len(BIG_MODULES) * 2 * BIG_HIDDEN * 4  # A and B, fp32
    return max(1, round(size_bytes / per_rank))


# --- timing helpers --------------------------------------------------------------------------


def dir_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in dir_files(directory))


def timed(fn) -> float:
    """Seconds `fn()` takes, after `os.sync()` so earlier writes are not charged to it."""
    os.sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def copy_files(sources: list[Path], dest_dir: Path, fsync: bool) -> None:
    """The plain-copy baseline: `shutil.copyfile` each file; with fsync, of each file and the directory (as push does)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = dest_dir / src.name
        shutil.copyfile(src, dst)
        if fsync:
            fsync_path(dst)
    if fsync:
        fsync_path(dest_dir)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def reg_command() -> list[str]:
    script = Path(sys.executable).parent / "reg"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import run; run()"]


def run_cli(args: list[str], cwd: Path, expect: str | None = None) -> tuple[float, str]:
    env = dict(os.environ, COLUMNS="200", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    if expect is not None and expect not in proc.stdout:
        raise RuntimeError(f"{' '.join(args)}: expected {expect!r} in its output, got:\n{proc.stdout[:2000]}")
    return dt, proc.stdout


# --- 1. push / pull throughput ---------------------------------------------------------------


def bench_throughput(work: Path, size_mb: float, repeats: int, log) -> dict:
    base_dir = write_base(work / "bases" / "bench-llama-1024", BIG_HIDDEN, BIG_LAYERS, BIG_MODULES)
    rank = rank_for_size(size_mb * MB)
    log(f"writing a {size_mb:g} MB adapter (rank {rank}) ...")
    adapter = write_adapter(work / "big-adapter", base_dir, BIG_HIDDEN, BIG_LAYERS, BIG_MODULES, rank, seed=1)
    sources = dir_files(adapter)
    nbytes = dir_bytes(adapter)
    for p in sources:  # warm the page cache: every contender reads a cached source
        p.read_bytes()

    push_s, copy_fsync_s, copy_s = [], [], []
    pushed_home = None
    for i in range(repeats):
        home = work / f"push-home-{i}"
        reg = Registry(home)
        reg.add_base(str(base_dir), "bench-base")  # hashing the base is not part of a push
        push_s.append(timed(lambda: reg.push(adapter, "big", message="bench")))
        reg.close()
        copy_fsync_s.append(timed(lambda: copy_files(sources, work / f"copy-fsync-{i}", fsync=True)))
        copy_s.append(timed(lambda: copy_files(sources, work / f"copy-{i}", fsync=False)))
        remove(work / f"copy-fsync-{i}")
        remove(work / f"copy-{i}")
        if pushed_home is None:
            pushed_home = home
        else:
            remove(home)
        log(f"  push repeat {i + 1}/{repeats}: push {push_s[-1]:.3f} s, "
            f"copy+fsync {copy_fsync_s[-1]:.3f} s, copy {copy_s[-1]:.3f} s")

    reg = Registry(pushed_home)
    version = reg.resolve("big:1")
    blobs = [reg.blobs.path(f.sha256) for f in version.files]
    for p in blobs:
        p.read_bytes()
    pull_s, pull_copy_s = [], []
    for i in range(repeats):
        out = work / f"pull-out-{i}"
        pull_s.append(timed(lambda: reg.pull("big:1", out)))
        pull_copy_s.append(timed(lambda: copy_files(blobs, work / f"pull-copy-{i}", fsync=False)))
        for p in sources:
            assert (out / p.name).stat().st_size == p.stat().st_size
        remove(out)
        remove(work / f"pull-copy-{i}")
        log(f"  pull repeat {i + 1}/{repeats}: pull {pull_s[-1]:.3f} s, copy {pull_copy_s[-1]:.3f} s")
    reg.close()

    # The CLI end to end, once each: interpreter start, imports, then the same work.
    cli_home = work / "cli-home"
    reg = Registry(cli_home)
    reg.add_base(str(base_dir), "bench-base")
    reg.close()
    os.sync()
    cli_push_s, _ = run_cli(reg_command() + ["push", str(adapter), "--name", "big", "--home", str(cli_home)], work, "big:1")
    os.sync()
    pull_args = ["pull", "big:1", "--out", str(work / "cli-pull"), "--home", str(cli_home)]
    cli_pull_s, _ = run_cli(reg_command() + pull_args, work, "big:1")
    remove(work / "cli-pull")
    remove(cli_home)
    remove(pushed_home)

    def mbps(s: float) -> float:
        return nbytes / MB / s

    r = {
        "adapter_bytes": nbytes, "adapter_files": len(sources), "rank": rank, "repeats": repeats,
        "push_s": push_s, "copy_fsync_s": copy_fsync_s, "copy_s": copy_s, "pull_s": pull_s, "pull_copy_s": pull_copy_s,
        "push_MBps": mbps(median(push_s)), "copy_fsync_MBps": mbps(median(copy_fsync_s)), "copy_MBps": mbps(median(copy_s)),
        "pull_MBps": mbps(median(pull_s)), "pull_copy_MBps": mbps(median(pull_copy_s)),
        "cli_push_s": cli_push_s, "cli_pull_s": cli_pull_s, "cli_push_MBps": mbps(cli_push_s), "cli_pull_MBps": mbps(cli_pull_s),
    }
    r["push_ratio"] = r["push_MBps"] / r["copy_fsync_MBps"]
    r["push_ratio_vs_nofsync"] = r["push_MBps"] / r["copy_MBps"]
    r["pull_ratio"] = r["pull_MBps"] / r["pull_copy_MBps"]
    return r


# --- 2. many versions: ls / show latency -----------------------------------------------------


def bulk_insert_versions(reg: Registry, name: str, count: int) -> None:
    """Add `count` versions of `name` with exactly the rows `Registry.push` writes (a versions row,
    its files rows, adapters.next_version), cloned from the newest real version with a distinct
    manifest digest. Only used when real pushes would take too long."""
    conn = reg.conn
    template = conn.execute("SELECT * FROM versions WHERE adapter=? ORDER BY number DESC LIMIT 1", (name,)).fetchone()
    files = conn.execute("SELECT path, size, sha256 FROM files WHERE version_id=?", (template["id"],)).fetchall()
    columns = [c for c in template.keys() if c != "id"]
    insert = f"INSERT INTO versions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    with dbmod.transaction(conn):
        number = conn.execute("SELECT next_version FROM adapters WHERE name=?", (name,)).fetchone()[0]
        for _ in range(count):
            row = dict(template)
            row.update(
                number=number, parent=number - 1, created_at=dbmod.utcnow(), message=f"bench version {number} (bulk-inserted)",
                manifest_digest="sha256:" + hashlib.sha256(f"bench-bulk-{name}-{number}".encode()).hexdigest(),
            )
            cur = conn.execute(insert, [row[c] for c in columns])
            conn.executemany(
                "INSERT INTO files (version_id, path, size, sha256) VALUES (?, ?, ?, ?)",
                [(cur.lastrowid, f["path"], f["size"], f["sha256"]) for f in files],
            )
            number += 1
        conn.execute("UPDATE adapters SET next_version=? WHERE name=?", (number, name))


def build_many_versions(work: Path, home: Path, name: str, versions: int, push_budget_s: float, log) -> dict:
    base_dir = write_base(work / "bases" / "bench-llama-64", SMALL_HIDDEN, SMALL_LAYERS, SMALL_MODULES, vocab=256)
    adapter = work / "small-adapter"
    reg = Registry(home)
    reg.add_base(str(base_dir), "tiny-base")
    log(f"pushing up to {versions} versions of {name!r} for real (budget {push_budget_s:g} s) ...")
    push_total = 0.0
    real = 0
    durations: list[float] = []
    t_start = time.perf_counter()
    last_log = t_start
    while real < versions and push_total < push_budget_s:
        write_adapter(adapter, base_dir, SMALL_HIDDEN, SMALL_LAYERS, SMALL_MODULES, SMALL_RANK, seed=real, config_too=real == 0)
        t0 = time.perf_counter()
        result = reg.push(adapter, name, message=f"bench version {real + 1}")
        durations.append(time.perf_counter() - t0)
        push_total += durations[-1]
        assert result.created, "synthetic versions must differ"
        real += 1
        if time.perf_counter() - last_log > 15:
            last_log = time.perf_counter()
            log(f"  {real} pushed, {real / push_total:.0f} pushes/s")
    wall = time.perf_counter() - t_start
    bulk = versions - real
    if bulk:
        log(f"  real pushes hit the {push_budget_s:g} s budget after {real}; bulk-inserting the other {bulk} with SQL ...")
        t0 = time.perf_counter()
        bulk_insert_versions(reg, name, bulk)
        bulk_s = time.perf_counter() - t0
    else:
        bulk_s = 0.0
    reg.set_alias(name, "prod", max(1, versions // 2))
    reg.set_alias(name, "staging", versions)
    assert reg.count_versions(name) == versions
    reg.close()
    window = max(1, real // 10)  # push rate of the first and the last tenth: does a push slow down as versions grow?
    return {
        "versions": versions, "real_pushes": real,
        "window": window, "first_window_pushes_per_s": window / sum(durations[:window]) if real else None,
        "last_window_pushes_per_s": window / sum(durations[-window:]) if real else None,
        "push_seconds": push_total, "push_wall_seconds": wall,
        "pushes_per_s": real / push_total if push_total else None,
        "projected_real_seconds_for_all": versions * push_total / real if real else None,
        "bulk_inserted": bulk, "bulk_seconds": bulk_s,
        "db_bytes": sum(p.stat().st_size for p in home.glob("registry.db*")),
    }


def bench_latency(work: Path, home: Path, name: str, versions: int, cli_runs: int) -> list[dict]:
    rows = []

    def inproc(label: str, fn, runs: int = 7) -> None:
        fn()  # warm
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append({"kind": "in-process", "what": label, "median_s": median(times), "min_s": min(times), "runs": runs})

    def with_registry(call):
        def fn():
            reg = Registry(home)  # a fresh connection each time, as one CLI invocation opens one
            try:
                return call(reg)
            finally:
                reg.close()
        return fn

    inproc("Registry(home) open + close", with_registry(lambda r: r.conn))
    inproc("list_versions(name, limit=20)", with_registry(lambda r: r.list_versions(name, limit=20)))
    inproc("list_versions(name) (all, as ls --json)", with_registry(lambda r: r.list_versions(name)))
    inproc("count_versions(name)", with_registry(lambda r: r.count_versions(name)))
    inproc("describe(name)", with_registry(lambda r: r.describe(name)))
    inproc("list_adapters()", with_registry(lambda r: r.list_adapters()))

    from cli.main import main as cli_main

    def cli_inproc(args: list[str]):
        def fn():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                rc = cli_main(args + ["--home", str(home)])
            assert rc == 0, f"reg {' '.join(args)} returned {rc}"
        return fn

    for args in (["ls", name], ["show", name], ["ls", name, "--json"], ["ls"]):
        inproc(f"cli.main.main({' '.join(args)}) (no startup)", cli_inproc(args))

    def subproc(label: str, args: list[str], expect: str | None = None) -> None:
        run_cli(args, work, expect)  # warm .pyc and page cache
        times = [run_cli(args, work, expect)[0] for _ in range(cli_runs)]
        rows.append({"kind": "subprocess", "what": label, "median_s": median(times), "min_s": min(times), "runs": cli_runs})

    reg = reg_command()
    h = ["--home", str(home)]
    subproc("python -c pass (interpreter start)", [sys.executable, "-c", "pass"])
    subproc("python -c 'import cli.main' (start + imports)", [sys.executable, "-c", "import cli.main"])
    older = f"{versions - 20} older versions not shown" if versions > 20 else None
    subproc(f"reg ls {name}", reg + ["ls", name] + h, older)
    subproc(f"reg show {name}", reg + ["show", name] + h, f"{name}:{versions}")
    subproc(f"reg ls {name} --json", reg + ["ls", name, "--json"] + h, f'"{name}:1"')
    subproc("reg ls", reg + ["ls"] + h, name)
    for row in rows:
        targeted = row["what"].startswith(("reg ", "list_", "describe", "cli.main"))
        row["target_s"] = TARGET_LATENCY_S if targeted else None
        row["pass"] = (row["median_s"] < TARGET_LATENCY_S) if targeted else None
    return rows


# --- machine and report ----------------------------------------------------------------------


def machine_info(work: Path) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    device = fstype = options = "unknown"
    real = os.path.realpath(work)
    best = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fs, opts = line.split()[:4]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, device, fstype, options = mnt, dev, fs, opts
    usage = shutil.disk_usage(work)
    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu, "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}", "platform": platform.platform(),
        "numpy": np.__version__, "sqlite": __import__("sqlite3").sqlite_version,
        "workdir": str(work), "disk": f"{device} ({fstype}, {options}) mounted at {best}",
        "disk_free_gb": round(usage.free / 1e9, 1),
    }
