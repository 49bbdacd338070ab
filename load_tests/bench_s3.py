"""S3 blob store throughput: `reg push` / `reg pull` of a large adapter with `--blob-store s3://...`, against a plain
boto3 upload / download of the same bytes to the same S3-protocol server (moto's standalone server on 127.0.0.1,
started here). The ratio says what loradock adds on top of the transfer (hashing, the local staging copy, the
verified write on pull); the absolute numbers are moto's, not a real bucket's.

    python -m load_tests.bench_s3 [--size-mb 256] [--repeats 3] [--out load-test-out/s3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=256, help="size of the adapter's weights file (MB)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each transfer (medians are reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "load-test-out" / "s3", help="work and results folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from s3_server import start_s3_server

    from load_tests.registry_timings import (BIG_HIDDEN, BIG_LAYERS, BIG_MODULES, rank_for_size, write_adapter,
                                             write_base)
    from registry import Registry

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = start_s3_server(work / "moto")
    os.environ.update(server.env)
    try:
        base = write_base(work / "base", BIG_HIDDEN, BIG_LAYERS, BIG_MODULES)
        adapter = write_adapter(work / "adapter", base, BIG_HIDDEN, BIG_LAYERS, BIG_MODULES,
                                rank_for_size(args.size_mb * MB), seed=0)
        weights = adapter / "adapter_model.safetensors"
        size = weights.stat().st_size + (adapter / "adapter_config.json").stat().st_size
        client = server.client()
        rows = {"push": [], "plain upload": [], "pull": [], "plain download": []}
        for i in range(args.repeats):
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            client.create_bucket(Bucket=bucket)
            reg = Registry(work / f"home-{i}", blob_store=f"s3://{bucket}/reg")
            reg.add_base(str(base), "bench-base")
            t0 = time.perf_counter()
            reg.push(adapter, "big")
            rows["push"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for f in sorted(adapter.iterdir()):
                client.upload_file(str(f), bucket, f"plain/{f.name}")
            rows["plain upload"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reg.pull("big", work / f"pulled-{i}")
            rows["pull"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (work / f"plain-{i}").mkdir()
            for f in sorted(adapter.iterdir()):
                client.download_file(bucket, f"plain/{f.name}", str(work / f"plain-{i}" / f.name))
            rows["plain download"].append(time.perf_counter() - t0)
            reg.close()
            shutil.rmtree(work / f"pulled-{i}")
            shutil.rmtree(work / f"plain-{i}")
            print(f"round {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    finally:
        server.stop()
    median = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "bytes": size, "repeats": args.repeats, "seconds": rows,
        "MB_per_s": {k: size / MB / v for k, v in median.items()},
        "push_vs_plain_upload": median["plain upload"] / median["push"],
        "pull_vs_plain_download": median["plain download"] / median["pull"],
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\n{size / MB:.0f} MB adapter, median of {args.repeats}:")
    print("| transfer | s | MB/s |\n|---|---|---|")
    for k, v in median.items():
        print(f"| {k} | {v:.2f} | {size / MB / v:.0f} |")
    print(f"push / plain upload throughput: {result['push_vs_plain_upload']:.2f}x; "
          f"pull / plain download: {result['pull_vs_plain_download']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
