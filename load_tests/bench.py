#!/usr/bin/env python
"""Multi-adapter serving, side by side: our batched multi-LoRA against the bare base and PEFT, over a grid.

    python -m load_tests bench [--base NAME|DIR | --random-llama 8b|tiny] [--home DIR] [--quant none,nf4]
        [--batches 1,8,16,32] [--adapters 1,4,16,32] [--prompt-len 64] [--decode-steps 8] [--repeats 2]
        [--cold-loads 10] [--device cpu|cuda] [--dtype auto|fp32|bf16] [--gather-cache-mb MB] [--no-engine] [--profile]
        [--quick] [--json OUT] [--markdown OUT]
    python load_tests/bench.py ...   (the same)

A benchmark, not a test: it prints tables and exits 0. For each quantization the base is loaded
three times in this process (bare; wrapped by `server.lora.MultiLoraModel` with max(K) adapters in
slots; under PEFT with the same max(K) adapters), and for every batch size B and adapter count
K <= B (B rows cannot use more than B adapters, so K > B is skipped) the same B random prompts
(fixed seed) run through:

  (a) bare base          one prefill forward (B x prompt_len, logits_to_keep=1) into a DynamicCache,
                         then D single-token decode steps for the whole batch;
  (b) ours               the same on the MultiLoraModel, row i -> slot 1 + i % K
                         (`rows()` entered per forward, as server.engines.native does);
  (c) PEFT mixed batch   PeftModel, forward(..., adapter_names=[...]) (eval mode), row i -> adapter i % K;
  (d) PEFT one-by-one    each request alone: set_adapter(its adapter), prefill that row, decode D steps at
                         batch 1 (swap time counted in prefill). A request's throughput does not depend on B,
                         so only the first min(B, --one-by-one-requests) requests are timed.

(a)-(c) run interleaved step by step (the three prefills, then decode step t of each before step t+1
of any), (d) after them, in rounds: one warmup round on the first cell of each quantization, then
--repeats timed rounds per cell. Reported: the median tokens/s over the rounds, and ratios (x bare,
ours x one-by-one, ours x PEFT mixed) as the median of per-round ratios (each paired with the other
variant's time in the same round, so background load on a shared machine cancels).

Also measured per quantization: the real `server.engines.native.NativeEngine` (continuous batching) on one cell;
the cold load of a rank-16 all-linear adapter from the registry to a servable slot (resolve + pull to
a fresh dir + `load_lora_weights` + `MultiLoraModel.assign`) against PEFT's `load_adapter` of the same
files (a scratch registry home, deleted at exit, so nothing is pushed into --home); the hot swap
(ours: re-planning a batch onto other resident slots and its first decode step, and `assign` of
in-memory weights into a slot; PEFT: `set_adapter`); and the roofline: this machine's matmul peak and
copy bandwidth (load_tests/roofline.py) against the FLOP/s of prefill and bytes/s of decode achieved.

The adapters are real PEFT LoRA adapters (rank 16, alpha 32, target_modules="all-linear") with
seeded random A and non-zero random B. `--random-llama 8b` benchmarks a randomly initialised
Llama-3.1-8B-shaped model (no weights downloaded; meant for `--device cuda`), `--random-llama tiny`
a tiny one. `--quick` (B 1,4; K 1,4; prompt 16; decode 4; quant none; 1 round; 2 cold loads) is
the CI smoke run: it checks the script, not the speed.
"""


from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULTS = {"quant": "none,nf4", "batches": "1,8,16,32", "adapters": "1,4,16,32", "prompt_len": 64,
            "decode_steps": 8, "repeats": 2, "cold_loads": 10}
QUICK = {"quant": "none", "batches": "1,4", "adapters": "1,4", "prompt_len": 16,
         "decode_steps": 4, "repeats": 1, "cold_loads": 2}


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import torch

    from load_tests.bench_grid import RANDOM_LLAMAS

    parser = argparse.ArgumentParser(prog="python -m load_tests bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="registered base name or model dir (default: the default base)")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS),
                        help="instead of --base: a randomly initialised Llama of this shape (8b: Llama-3.1-8B; no download)")
    parser.add_argument("--home", default=os.environ.get("LORADOCK_HOME") or str(Path.home() / ".loradock"),
                        help="registry home holding the base (default $LORADOCK_HOME or ~/.loradock)")
    parser.add_argument("--quant", help=f"comma-separated quantizations: none, nf4, int8 (default {DEFAULTS['quant']})")
    parser.add_argument("--batches", help=f"comma-separated batch sizes B (default {DEFAULTS['batches']})")
    parser.add_argument("--adapters", help=f"comma-separated adapter counts K; cells with K > B are skipped "
                                           f"(default {DEFAULTS['adapters']})")
    parser.add_argument("--prompt-len", type=int, help=f"prompt tokens (default {DEFAULTS['prompt_len']})")
    parser.add_argument("--decode-steps", type=int, help=f"decode steps (default {DEFAULTS['decode_steps']})")
    parser.add_argument("--repeats", type=int, help=f"timed rounds per cell (default {DEFAULTS['repeats']})")
    parser.add_argument("--cold-loads", type=int,
                        help=f"pushed versions to cold-load, 0: skip (default {DEFAULTS['cold_loads']})")
    parser.add_argument("--one-by-one-requests", type=int, default=8,
                        help="requests timed one by one per cell, at most (a request's throughput does not depend on B)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                        help="compute dtype: auto = bf16 on a GPU that has it, else fp32")
    parser.add_argument("--gather-cache-mb", type=float, default=None,
                        help="MultiLoraModel's bound on per-row A/B copies kept between decode steps, as the server's "
                             "--gather-cache-mb (default: the server's default)")
    parser.add_argument("--no-engine", dest="engine", action="store_false", help="skip the server.engines.native.NativeEngine runs")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of one decode step")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: B 1,4; K 1,4; prompt 16; decode 4; quant none; 1 round; 2 cold loads")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    parser.add_argument("--markdown", dest="markdown_out", help="also write the tables as Markdown (for BENCHMARKS.md) here")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.quants = [q.strip() for q in args.quant.split(",") if q.strip()]
        args.batch_list = sorted({int(x) for x in args.batches.split(",") if x.strip()})
        args.adapter_list = sorted({int(x) for x in args.adapters.split(",") if x.strip()})
    except ValueError as e:
        parser.error(f"--batches and --adapters take comma-separated integers ({e})")
    if not args.quants or not args.batch_list or not args.adapter_list:
        parser.error("--quant, --batches and --adapters need at least one value each")
    if min(args.batch_list + args.adapter_list) < 1 or args.prompt_len < 1 or args.repeats < 1 or args.one_by_one_requests < 1:
        parser.error("batches, adapters, prompt-len, repeats and one-by-one-requests must be >= 1")
    if args.decode_steps < 2 or args.cold_loads < 0:
        parser.error("decode-steps must be >= 2 and cold-loads >= 0")
    if args.base and args.random_llama:
        parser.error("give --base or --random-llama, not both")
    if args.random_llama == "8b" and args.device != "cuda":
        parser.error("--random-llama 8b is meant for --device cuda (its 8B weights do not fit a small CPU machine)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here")
    args.bf16 = {"auto": "auto", "fp32": False, "bf16": True}[args.dtype]
    args.command = "python -m load_tests bench " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; its parts are imported here, so `python load_tests/bench.py` can first make them importable."""
    from load_tests import use_offline_hub

    use_offline_hub()
    args = parse_args(argv)
    from load_tests import bench_report
    from load_tests.bench_grid import (
        bench_quant, calibrate, estimate_seconds, grid, loadavg, machine_info, make_adapters, pick_engine_cell,
    )
    from load_tests.bench_runs import log, push_cold_versions
    from load_tests.roofline import machine_peaks
    from registry.modeling.loading import load_base_model, pick_compute_dtype

    cells, skipped = grid(args.batch_list, args.adapter_list)
    if not cells:
        print("no cell to run: every K is larger than every B", file=sys.stderr)
        return 2
    info = machine_info(args.device)
    log(f"{info.nproc} CPUs ({info.cpu}), torch threads {info.torch_threads}, device {args.device}, load {info.load_start}")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="loradock-bench-") as tmp:
        tmp = Path(tmp)
        base_path, base_name = resolve_bench_base(args, tmp)
        info.base = base_name
        log(f"base {base_name} at {base_path}")
        peaks = machine_peaks(args.device, pick_compute_dtype(args.device, args.bf16), quick=args.quick)
        info.peaks = peaks
        log(f"machine peaks: matmul {peaks.gflops:.1f} GFLOP/s ({peaks.dtype}), copy {peaks.gbs:.1f} GB/s ({peaks.seconds}s)")

        bare, estimate = {}, 0.0
        for quant in args.quants:
            began = time.perf_counter()
            bare[quant] = load_base_model(base_path, quant, args.device, args.bf16)
            load_s = time.perf_counter() - began
            calibration = calibrate(bare[quant].model, args.prompt_len, max(args.batch_list), args.device)
            engine_cell = pick_engine_cell(cells) if args.engine else None
            estimate += load_s + estimate_seconds(cells, args, calibration, load_s, engine_cell)
        info.estimate_s = round(estimate)
        print(f"{len(cells)} cells x {len(args.quants)} quantizations (skipped, K > B: B rows cannot use more than B "
              f"adapters: {', '.join(f'B={b} K={k}' for b, k in skipped) or 'none'}); expected duration ~{estimate / 60:.1f} "
              "min (rough: from a calibration forward of the bare base)", flush=True)

        k_max = max(k for _, k in cells)
        log(f"making {k_max} + {args.cold_loads} adapters")
        dirs = make_adapters(base_path, tmp / "adapters", k_max + args.cold_loads)
        adapter_dirs, cold_dirs = dirs[:k_max], dirs[k_max:]
        cold = push_cold_versions(base_path, base_name, cold_dirs, tmp / "cold-home") if cold_dirs else None
        for quant in args.quants:
            results.append(bench_quant(args, quant, bare.pop(quant), base_path, adapter_dirs, cold, tmp, cells, peaks))
            gc.collect()
            if quant != args.quants[-1]:  # partial results first, in case a later quant fails or is cut short
                info.load_end = loadavg()
                print(bench_report.text(info, args, results[-1:], skipped), flush=True)
                write_outputs(args, info, results, skipped)
        if cold is not None:
            cold[0].close()
    info.load_end = loadavg()
    info.seconds = round(time.perf_counter() - started, 1)
    print(bench_report.text(info, args, results, skipped))
    print(bench_report.targets(results))
    print(f"\n(total {info.seconds} s, estimated {info.estimate_s} s)")
    write_outputs(args, info, results, skipped)
    return 0


def resolve_bench_base(args, tmp: Path) -> tuple[Path, str]:
    """(model dir, base name): a random Llama built into `tmp`, or --base resolved in the --home registry."""
    from load_tests.bench_runs import log

    if args.random_llama:
        from load_tests.bench_grid import build_random_llama
        from registry.modeling.loading import pick_compute_dtype

        log(f"building a random-init Llama ({args.random_llama}) on {args.device}")
        dtype = pick_compute_dtype(args.device, args.bf16)
        path = build_random_llama(args.random_llama, tmp / "random-llama", args.device, dtype)
        return path, f"random-llama-{args.random_llama}"
    from registry import Registry
    from registry.bases import DEFAULT_BASE

    registry = Registry(args.home)
    try:
        base = registry.resolve_base(args.base or DEFAULT_BASE)
    finally:
        registry.close()
    return Path(base.path), base.name


def write_outputs(args, info, results: list, skipped) -> None:
    """--json (the results as plain JSON, bench_results.as_json) and --markdown (the tables for BENCHMARKS.md)."""
    from load_tests import bench_report
    from load_tests.bench_results import as_json

    if args.json_out:
        settings = {k: v for k, v in vars(args).items() if k not in ("json_out", "markdown_out")}
        payload = {"machine": as_json(info), "settings": settings,
                   "skipped_cells": [{"batch": b, "adapters": k} for b, k in skipped], "results": as_json(results)}
        Path(args.json_out).write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown_out:
        Path(args.markdown_out).write_text(bench_report.markdown(info, args, results, skipped))


if __name__ == "__main__":  # `python load_tests/bench.py`: make the repository importable first (only when run so)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
