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
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The measurements are load_tests/registry_timings.py's; they are imported inside main(), so that
# `python load_tests/bench_registry.py` can first make the repository importable.


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def print_report(machine: dict, tp: dict | None, many: dict | None, lat: list[dict] | None) -> None:
    from load_tests.registry_timings import MB, TARGET_LATENCY_S, TARGET_RATIO, median

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
    from registry import default_home

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
    from load_tests import use_offline_hub
    from load_tests.registry_timings import (
        TARGET_RATIO, bench_latency, bench_throughput, build_many_versions, machine_info, remove,
    )

    use_offline_hub()
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


if __name__ == "__main__":  # `python load_tests/bench_registry.py`: make the repository importable first (only when run so)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
