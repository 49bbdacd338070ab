#!/usr/bin/env python
"""Registry benchmark: push/pull throughput of a large adapter, and `reg ls` / `reg show` latency.

What it measures (a benchmark, not a test; it prints a table and exits 0 unless --fail-on-miss):

1. Push and pull throughput of a ~200 MB LoRA adapter against a plain file copy of the same
   bytes on the same disk. Push fsyncs its blobs, so its main baseline is `shutil.copyfile`
   plus fsync of the file and its directory; pull does not fsync, so its baseline is a plain
   `shutil.copyfile` of the stored blobs. Sources are warm in the page cache for both sides,
   and `os.sync()` runs before every timed step so no step pays for an earlier one's writeback.
   Target: push and pull >= 0.5x the plain copy.
2. `reg ls NAME` / `reg show NAME` latency with 10,000 registered versions of one adapter,
   in-process and as the real CLI (subprocess wall clock). Target: under 300 ms.

Everything is synthetic and torch-free: the bases are llama-shaped safetensors files written
with numpy (only their headers matter to the registry), the adapters random fp32 LoRA weights.

    .venv/bin/python load_tests/bench_registry.py            # full run (200 MB, 10,000 versions)
    .venv/bin/python load_tests/bench_registry.py --quick    # CI smoke (20 MB, 300 versions)
"""

from __future__ import annotations

import argparse
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
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from registry import Registry, default_home  # noqa: E402
from registry import db as dbmod  # noqa: E402

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


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def print_report(machine: dict, tp: dict | None, many: dict | None, lat: list[dict] | None) -> None:
    p = print
    p("")
    p("=" * 96)
    p("loradock registry benchmark")
    p("=" * 96)
    p(f"machine : {machine['nproc']} CPUs ({machine['usable_cpus']} usable), {machine['cpu']}, {machine['memory_gb']} GB RAM")
    p(f"python  : {machine['python']} on {machine['platform']}; numpy {machine['numpy']}, SQLite {machine['sqlite']}")
    p(f"disk    : {machine['disk']}, {machine['disk_free_gb']} GB free")
    p(f"workdir : {machine['workdir']}")
    if tp:
        p("")
        p(f"Push / pull throughput: {tp['adapter_bytes'] / MB:.1f} MB adapter in {tp['adapter_files']} files "
          f"(LoRA r={tp['rank']}, fp32), "
          f"median of {tp['repeats']}, page cache warm")
        p(f"  {'operation':<52} {'MB/s':>9} {'median s':>9}  runs (s)")
        rows = [
            ("push: Registry.push (hash, NaN scan, fsync)", tp["push_MBps"], tp["push_s"]),
            ("baseline: shutil.copyfile + fsync (file and dir)", tp["copy_fsync_MBps"], tp["copy_fsync_s"]),
            ("baseline: shutil.copyfile, no fsync", tp["copy_MBps"], tp["copy_s"]),
            ("pull: Registry.pull (verifying sha256, no fsync)", tp["pull_MBps"], tp["pull_s"]),
            ("baseline: shutil.copyfile of the blobs, no fsync", tp["pull_copy_MBps"], tp["pull_copy_s"]),
        ]
        for label, mbps, runs in rows:
            p(f"  {label:<52} {mbps:>9.1f} {median(runs):>9.3f}  {', '.join(f'{x:.3f}' for x in runs)}")
        p(f"  {'reg push (CLI, end to end, once)':<52} {tp['cli_push_MBps']:>9.1f} {tp['cli_push_s']:>9.3f}")
        p(f"  {'reg pull (CLI, end to end, once)':<52} {tp['cli_pull_MBps']:>9.1f} {tp['cli_pull_s']:>9.3f}")
        p(f"  {'ratio':<52} {'value':>9} {'target':>9}  verdict")
        p(f"  {'push / (copy + fsync)':<52} {tp['push_ratio']:>9.2f} {'>= 0.5':>9}  {verdict(tp['push_ratio'] >= TARGET_RATIO)}")
        p(f"  {'push / copy without fsync (for reference)':<52} {tp['push_ratio_vs_nofsync']:>9.2f} {'-':>9}  -")
        pull_ok = verdict(tp["pull_ratio"] >= TARGET_RATIO)
        p(f"  {'pull / copy (both without fsync)':<52} {tp['pull_ratio']:>9.2f} {'>= 0.5':>9}  {pull_ok}")
    if many:
        p("")
        p(f"Many versions: {many['versions']} versions of one adapter ({many['db_bytes'] / MB:.1f} MB of registry.db)")
        if many["real_pushes"]:
            p(f"  real Registry.push: {many['real_pushes']} versions in {many['push_seconds']:.1f} s of push time "
              f"({many['push_wall_seconds']:.1f} s wall with writing the adapters) = {many['pushes_per_s']:.1f} pushes/s; "
              f"all {many['versions']} would take ~{many['projected_real_seconds_for_all']:.0f} s")
        p(f"  push rate, first {many['window']} versions: {many['first_window_pushes_per_s']:.1f} pushes/s; "
          f"last {many['window']} (of {many['real_pushes']}): {many['last_window_pushes_per_s']:.1f} pushes/s")
        if many["bulk_inserted"]:
            p(f"  BULK-INSERTED: {many['bulk_inserted']} versions added with SQL mirroring push's rows "
              f"(versions + files + adapters.next_version) in {many['bulk_seconds']:.2f} s, "
              "because real pushes exceeded the budget")
        else:
            p("  every version was made by a real Registry.push (no bulk insert)")
    if lat:
        p("")
        p(f"Latency at {many['versions'] if many else '?'} versions (target < {TARGET_LATENCY_S * 1000:.0f} ms)")
        p(f"  {'kind':<11} {'operation':<52} {'median ms':>10} {'min ms':>8} {'runs':>5}  verdict")
        for r in lat:
            p(f"  {r['kind']:<11} {r['what']:<52} {r['median_s'] * 1000:>10.1f} {r['min_s'] * 1000:>8.1f} "
              f"{r['runs']:>5}  {verdict(r['pass'])}")
    p("")


# --- main ------------------------------------------------------------------------------------


def default_workdir_parent() -> Path:
    """The directory that holds the registry home, so the bench runs on the disk the registry uses."""
    parent = default_home().expanduser().resolve().parent
    return parent if os.access(parent, os.W_OK) else Path(tempfile.gettempdir())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark loradock's registry: push/pull throughput of a large adapter against a plain copy, "
        "and reg ls / reg show latency with many versions.",
    )
    ap.add_argument("--workdir", type=Path, default=None,
                    help="Where to make the scratch directory (bases, adapters, registry homes); it is removed at the end "
                    f"unless --keep (default: next to the registry home, i.e. under {default_workdir_parent()}, "
                    "so the bench runs on the registry's disk).")
    ap.add_argument("--size-mb", type=float, default=None,
                    help="Adapter size in MB of 10^6 bytes (default 200; 20 with --quick).")
    ap.add_argument("--versions", type=int, default=None,
                    help="Versions of one adapter for the ls/show latency (default 10000; 300 with --quick).")
    ap.add_argument("--repeats", type=int, default=None,
                    help="Repeats of each push/pull/copy timing; the median is reported (default 3; 1 with --quick).")
    ap.add_argument("--cli-runs", type=int, default=5, help="Timed runs of each CLI command, after one warm-up (default 5).")
    ap.add_argument("--push-budget-s", type=float, default=300.0,
                    help="Seconds of real pushes for the many-versions adapter; versions beyond it are bulk-inserted "
                    "with SQL (default 300).")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 20 MB adapter, 300 versions, 1 repeat.")
    ap.add_argument("--skip-throughput", action="store_true", help="Skip the push/pull throughput part.")
    ap.add_argument("--skip-latency", action="store_true", help="Skip the many-versions latency part.")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, metavar="OUT",
                    help="Also write all results as JSON to OUT.")
    ap.add_argument("--keep", action="store_true", help="Keep the workdir (registry homes, adapters) for inspection.")
    ap.add_argument("--fail-on-miss", action="store_true", help="Exit 1 if any target is missed.")
    args = ap.parse_args(argv)
    args.size_mb = args.size_mb if args.size_mb is not None else (20.0 if args.quick else 200.0)
    args.versions = args.versions if args.versions is not None else (300 if args.quick else 10_000)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if args.size_mb <= 0 or args.versions < 1 or args.repeats < 1 or args.cli_runs < 1:
        ap.error("--size-mb, --versions, --repeats and --cli-runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LORADOCK_USER", "bench@localhost")  # skip getpass/socket lookups in every push

    def log(msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix=".loradock-bench-", dir=default_workdir_parent()))
    log(f"workdir {work}")
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        machine = results["machine"] = machine_info(work)
        tp = many = lat = None
        if not args.skip_throughput:
            log(f"push/pull throughput, {args.size_mb:g} MB, {args.repeats} repeat(s)")
            tp = results["throughput"] = bench_throughput(work / "throughput", args.size_mb, args.repeats, log)
            remove(work / "throughput")
        if not args.skip_latency:
            home = work / "many-home"
            many = results["many_versions"] = build_many_versions(work, home, "many", args.versions, args.push_budget_s, log)
            log(f"latency: {args.cli_runs} CLI runs per command")
            lat = results["latency"] = bench_latency(work, home, "many", args.versions, args.cli_runs)
        print_report(machine, tp, many, lat)
        misses = []
        if tp:
            misses += [k for k in ("push_ratio", "pull_ratio") if tp[k] < TARGET_RATIO]
        if lat:
            misses += [r["what"] for r in lat if r["pass"] is False]
        results["misses"] = misses
        print("targets: " + ("all met" if not misses else f"{len(misses)} missed: {'; '.join(misses)}"))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(results, indent=2))
            print(f"results written to {args.json_out}")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            remove(work)
    return 1 if (args.fail_on_miss and results.get("misses")) else 0


if __name__ == "__main__":
    sys.exit(main())
