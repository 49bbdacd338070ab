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
                         (`rows()` entered per forward, as server.engine does);
  (c) PEFT mixed batch   PeftModel, forward(..., adapter_names=[...]) (eval mode), row i -> adapter i % K;
  (d) PEFT one-by-one    each request alone: set_adapter(its adapter), prefill that row, decode D steps at
                         batch 1 (swap time counted in prefill). A request's throughput does not depend on B,
                         so only the first min(B, --one-by-one-requests) requests are timed.

(a)-(c) run interleaved step by step (the three prefills, then decode step t of each before step t+1
of any), (d) after them, in rounds: one warmup round on the first cell of each quantization, then
--repeats timed rounds per cell. Reported: the median tokens/s over the rounds, and ratios (x bare,
ours x one-by-one, ours x PEFT mixed) as the median of per-round ratios (each paired with the other
variant's time in the same round, so background load on a shared machine cancels).

Also measured per quantization: the real `server.engine.Engine` (continuous batching) on one cell;
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
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from load_tests import bench_report  # noqa: E402
from load_tests.bench_report import TARGET_CELL  # noqa: E402
from load_tests.bench_runs import (  # noqa: E402
    bench_engine, clock, forward, log, measure_cold_loads, measure_hot_swaps, profile_decode_step, push_cold_versions,
    run_interleaved, run_one_by_one,
)
from load_tests.roofline import ModelShape, machine_peaks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RANK, ALPHA = 16, 32
BATCHED = ("bare", "ours", "peft_mixed")
VARIANTS = BATCHED + ("peft_one_by_one",)
PHASES = ("prefill", "decode", "total")
DEFAULTS = {"quant": "none,nf4", "batches": "1,8,16,32", "adapters": "1,4,16,32", "prompt_len": 64,
            "decode_steps": 8, "repeats": 2, "cold_loads": 10}
QUICK = {"quant": "none", "batches": "1,4", "adapters": "1,4", "prompt_len": 16,
         "decode_steps": 4, "repeats": 1, "cold_loads": 2}
RANDOM_LLAMAS = {
    # Llama-3.1-8B's shape (rope scaling left out: it does not change the work done).
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
               rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Dimensions multiples of 64, so bitsandbytes' 4-bit blocks fit (NF4 works on it, on CPU too).
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False),
}
# Each variant's cost relative to the bare base's forward, from BENCHMARKS.md (B=16, K=16, 2 CPU cores);
# used only for the rough duration printed before a run: (prefill factor, decode factor), PEFT's grow with K.
COST = {"ours": (1.25, 1.5), "peft_mixed": (1.2, 1.3), "peft_mixed_per_k": (0.05, 0.22), "one_by_one": (1.3, 1.3)}


# --- machine ----------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import peft
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__}
    with contextlib.suppress(ImportError):
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    revision = "?"
    with contextlib.suppress(Exception):
        import subprocess

        git = ["git", "-C", str(REPO)]
        revision = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "server", "load_tests/bench.py", "load_tests/roofline.py"],
                               capture_output=True, text=True).stdout.strip()
        revision += " (server/ or the benchmark modified)" if dirty else ""
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {
        "revision": revision, "date": time.strftime("%Y-%m-%d"), "nproc": os.cpu_count(), "cpu": cpu,
        "memory_gb": memory_gb, "torch_threads": torch.get_num_threads(), "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None, **versions,
    }


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --- models and adapters ----------------------------------------------------------------------


def build_random_llama(preset: str, out: Path, device: str, dtype: torch.dtype) -> Path:
    """A randomly initialised Llama of a preset shape, saved as a model directory (weights are not needed for speed).

    Initialised on `device` (seconds for 8B on a GPU), with a placeholder tokenizer: the benchmark feeds token ids."""
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(**RANDOM_LLAMAS[preset], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    del model
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>")
    tokenizer.save_pretrained(out)
    gc.collect()
    return out


def make_adapters(base_path: str | Path, out: Path, count: int) -> list[Path]:
    """`count` real PEFT LoRA adapters (rank 16, all-linear) with seeded random A and non-zero random B.

    PEFT wraps the base built on the meta device (no weights read), so this is quick for an 8B shape too."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_path))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    shapes = {n: p.shape for n, p in peft_model.named_parameters() if "lora_A" in n or "lora_B" in n}
    dirs = []
    for i in range(count):
        gen = torch.Generator().manual_seed(i)
        tensors = {}
        for name, shape in shapes.items():
            if "lora_A" in name:  # like PEFT's kaiming-uniform init: U(-1/sqrt(in), 1/sqrt(in))
                tensors[name] = (torch.rand(shape, generator=gen) * 2 - 1) / shape[1] ** 0.5
            else:
                tensors[name] = torch.randn(shape, generator=gen) * 0.01
        peft_model.load_state_dict(tensors, strict=False, assign=True)
        path = out / f"adapter-{i:03d}"
        peft_model.save_pretrained(path)
        dirs.append(path)
    del peft_model, model
    gc.collect()
    return dirs


def grid(batches: list[int], adapters: list[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(cells to run, cells skipped): every (B, K) with K <= B, in order of B then K."""
    cells = [(b, k) for b in batches for k in adapters]
    return [c for c in cells if c[1] <= c[0]], [c for c in cells if c[1] > c[0]]


# --- one cell of the grid ---------------------------------------------------------------------


def bench_cell(models: dict, b: int, k: int, prompt, steps, rounds: int, warmup: int, one_by_one_max: int) -> dict:
    """B rows over K adapters: the batched variants interleaved and PEFT one-by-one, `warmup` + `rounds` rounds."""
    bare, ours_model, multi, peft_model = models["bare"], models["ours"], models["multi"], models["peft"]
    row_slots = [1 + i % k for i in range(b)]
    row_names = [f"a{s - 1}" for s in row_slots]
    prompt, steps = prompt[:b], steps[:b]
    batched = {
        "bare": (bare, None, {}),
        "ours": (ours_model, lambda: multi.rows(row_slots), {}),  # rows() per forward, as server.engine does
        "peft_mixed": (peft_model, None, {"adapter_names": row_names}),
    }
    one = min(b, one_by_one_max)
    length, d = prompt.shape[1], steps.shape[1]
    tokens = {v: (b * length, b * d) for v in BATCHED} | {"peft_one_by_one": (one * length, one * d)}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    check = {}
    for r in range(warmup + rounds):
        prefill, decode, logits = run_interleaved(batched, prompt, steps)
        obo = run_one_by_one(peft_model, row_names[:one], prompt, steps)
        if r < warmup:
            continue
        if not check:
            (ours_p, ours_d), (peft_p, peft_d) = logits["ours"], logits["peft_mixed"]
            check = {
                "max_abs_logit_diff_ours_vs_peft_prefill": float((ours_p.float() - peft_p.float()).abs().max()),
                "max_abs_logit_diff_ours_vs_peft_decode": float((ours_d.float() - peft_d.float()).abs().max()),
                "max_abs_logit_diff_ours_vs_bare_prefill": float((ours_p.float() - logits["bare"][0].float()).abs().max()),
            }
        for v in BATCHED:
            times[v].append((prefill[v], decode[v]))
        times["peft_one_by_one"].append(obo)

    def rates(v: str) -> list[tuple[float, float, float]]:
        """Per round: prefill, decode and total (prefill + decode tokens over both times) tokens/s."""
        p_tok, d_tok = tokens[v]
        return [(p_tok / p, d_tok / dd, (p_tok + d_tok) / (p + dd)) for p, dd in times[v]]

    def paired(x: str, y: str) -> dict:
        """x's tokens/s over y's, per phase: the median of the per-round ratios."""
        return {ph: statistics.median(rx[i] / ry[i] for rx, ry in zip(rates(x), rates(y))) for i, ph in enumerate(PHASES)}

    variants = {}
    for v in VARIANTS:
        per_round = rates(v)
        variants[v] = {f"{ph}_tok_s": statistics.median(r[i] for r in per_round) for i, ph in enumerate(PHASES)}
        variants[v] |= {"prefill_s": statistics.median(t[0] for t in times[v]),
                        "decode_s": statistics.median(t[1] for t in times[v]),
                        "requests": one if v == "peft_one_by_one" else b, "x_bare": paired(v, "bare")}
    return {
        "batch": b, "adapters": k, "variants": variants, "check": check,
        "ours_x_one_by_one": paired("ours", "peft_one_by_one"), "ours_x_peft_mixed": paired("ours", "peft_mixed"),
    }


def roofline_of_cell(cell: dict, shape: ModelShape, peaks: dict, length: int, d: int, adapter_bytes_per_row: int) -> dict:
    """Achieved prefill GFLOP/s and decode GB/s of bare and ours, and their fractions of the machine's peaks."""
    b = cell["batch"]
    flops = shape.prefill_flops(b, length)
    step_bytes = shape.decode_bytes(b, length + (d + 1) / 2)  # the mean context over the decode steps
    out = {"prefill_gflop": flops / 1e9, "decode_step_mb": step_bytes / 2**20,
           "adapter_mb_per_step": b * adapter_bytes_per_row / 2**20}
    for v in ("bare", "ours"):
        m = cell["variants"][v]
        gflops = flops / m["prefill_s"] / 1e9
        gbs = step_bytes * d / m["decode_s"] / 1e9
        out[v] = {"prefill_gflops": gflops, "prefill_of_peak": gflops / peaks["gflops"],
                  "decode_gbs": gbs, "decode_of_bandwidth": gbs / peaks["gbs"]}
    # ours also reads every row's adapter A/B each step (the gathered copies): the bytes it actually moves
    ours_gbs = (step_bytes + b * adapter_bytes_per_row) * d / cell["variants"]["ours"]["decode_s"] / 1e9
    out["ours"] |= {"decode_gbs_with_adapters": ours_gbs, "decode_with_adapters_of_bandwidth": ours_gbs / peaks["gbs"]}
    return out


# --- duration estimate ------------------------------------------------------------------------


def calibrate(model, length: int, rows: int, device: str) -> tuple[float, float, float]:
    """(seconds per forward, per prompt token, per decode row) of the bare base, from forwards of 1 x 1,
    1 x `length` and `rows` x 1 tokens (a decode row costs more than a prompt token: smaller, less efficient matmuls)."""

    def timed(shape) -> float:
        ids = torch.zeros(shape, dtype=torch.long, device=device)
        forward(model, ids, None, 0)
        times = []
        for _ in range(3):
            start = clock()
            forward(model, ids, None, 0)
            times.append(clock() - start)
        return statistics.median(times)

    with torch.inference_mode():
        one, prompt, batch = timed((1, 1)), timed((1, length)), timed((rows, 1))
    return one, max(prompt - one, 0.0) / max(length - 1, 1), max(batch - one, 0.0) / max(rows - 1, 1)


def estimate_seconds(cells, args, calibration: tuple[float, float, float], load_s: float, engine_cell) -> float:
    """A rough duration of one quantization's runs, from the bare base's calibration and COST."""
    per_forward, per_token, per_row = calibration
    length, d = args.prompt_len, args.decode_steps

    def run(b: int, prefill_factor: float, decode_factor: float) -> float:
        return prefill_factor * (per_forward + per_token * b * length) + decode_factor * d * (per_forward + per_row * b)

    total = 2 * load_s
    for i, (b, k) in enumerate(cells):
        peft = (COST["peft_mixed"][0] + COST["peft_mixed_per_k"][0] * k, COST["peft_mixed"][1] + COST["peft_mixed_per_k"][1] * k)
        batched = run(b, 1, 1) + run(b, *COST["ours"]) + run(b, *peft)
        one_by_one = min(b, args.one_by_one_requests) * run(1, *COST["one_by_one"])
        total += (args.repeats + (i == 0)) * (batched + one_by_one)
    if engine_cell:
        total += 2 * (args.repeats + 1) * run(engine_cell[0], *COST["ours"])
    return total + args.cold_loads * 1.0  # about 1 s per cold load (ours and PEFT's), on 2 cores


# --- one quantization -------------------------------------------------------------------------


def bench_quant(args, quant: str, bare_loaded, base_path: Path, adapter_dirs, cold, scratch: Path, cells, peaks) -> dict:
    from peft import PeftModel

    from registry.loading import load_base_model
    from server.lora import MultiLoraModel, load_lora_weights

    k_max = max(k for _, k in cells)
    log(f"[{quant}] loading the base twice more (ours, PEFT) with {k_max} adapters each")
    bare, tokenizer = bare_loaded.model, bare_loaded.tokenizer
    ours_model = load_base_model(base_path, quant, args.device, args.bf16).model
    spare_slot = k_max + 1  # cold loads and in-memory assigns go here
    gather = {} if args.gather_cache_mb is None else {"gather_cache_bytes": int(args.gather_cache_mb * 2**20)}
    # as server.app with its default --lora-rank 16: slots allocated for the adapters' rank up front
    multi = MultiLoraModel(ours_model, max_slots=spare_slot, rank=RANK, **gather)
    peft_model = PeftModel.from_pretrained(
        load_base_model(base_path, quant, args.device, args.bf16).model, str(adapter_dirs[0]), adapter_name="a0")
    models = {"bare": bare, "ours": ours_model, "multi": multi, "peft": peft_model}
    result: dict = {"quant": quant, "compute_dtype": bare_loaded.compute_dtype}
    if cold is not None:
        log(f"[{quant}] cold loads ({len(cold[1])} versions)")
        # outside inference_mode, as server.cache assigns (stacks grown under it could not be written later)
        result["cold_load"] = measure_cold_loads(cold[0], cold[1], multi, peft_model, spare_slot, scratch)
    for i, path in enumerate(adapter_dirs[:k_max]):
        multi.assign(i + 1, load_lora_weights(path, multi))
        if i:
            peft_model.load_adapter(str(path), adapter_name=f"a{i}")
    peft_model.eval()

    b_max, length, d = max(b for b, _ in cells), args.prompt_len, args.decode_steps
    gen = torch.Generator().manual_seed(1234)
    vocab = bare.config.vocab_size
    prompt = torch.randint(0, vocab, (b_max, length), generator=gen).to(args.device)
    steps = torch.randint(0, vocab, (b_max, d), generator=gen).to(args.device)
    shape = ModelShape.of(bare)
    result["model"] = {"decode_weight_mb": shape.weight_bytes / 2**20, "linear_params": shape.linear_params,
                       "adapter_mb_per_slot": multi.nbytes_per_slot / 2**20}
    result["cells"] = []
    with torch.inference_mode():
        with multi.rows([0] * b_max):  # slot 0 everywhere must be the bare base exactly
            slot0, _ = forward(ours_model, prompt, None, 0)
        bare_logits, _ = forward(bare, prompt, None, 0)
        result["check_slot0_vs_bare"] = float((slot0.float() - bare_logits.float()).abs().max())
        for i, (b, k) in enumerate(cells):
            began = clock()
            cell = bench_cell(models, b, k, prompt, steps, args.repeats, warmup=int(i == 0),
                              one_by_one_max=args.one_by_one_requests)
            cell["roofline"] = roofline_of_cell(cell, shape, peaks, length, d, multi.nbytes_per_slot)
            result["cells"].append(cell)
            log(f"[{quant}] B={b} K={k}: {clock() - began:.1f}s, ours {cell['variants']['ours']['x_bare']['prefill']:.2f}x/"
                f"{cell['variants']['ours']['x_bare']['decode']:.2f}x bare (load {loadavg()})")
        b_hot = min(TARGET_CELL[0], b_max)
        k_hot = min(b_hot, k_max)
        if k_hot >= 2:
            log(f"[{quant}] hot swaps (B={b_hot}, K={k_hot})")
            result["hot_swap"] = measure_hot_swaps(models, adapter_dirs, spare_slot, prompt, b_hot, k_hot,
                                                   n=3 if args.quick else 10)
    engine_cell = pick_engine_cell(cells)
    if args.engine:
        log(f"[{quant}] engine runs (B={engine_cell[0]}, K={engine_cell[1]})")
        result["engine"] = bench_engine(models, tokenizer, prompt, d, *engine_cell, rounds=args.repeats)
    if args.profile:
        b, k = engine_cell
        row_slots = [1 + i % k for i in range(b)]
        with torch.inference_mode():
            result["profile"] = (
                profile_decode_step(bare, prompt[:b], steps[:b], None, f"bare base, {quant}, batch {b}")
                + profile_decode_step(ours_model, prompt[:b], steps[:b], partial(multi.rows, row_slots),
                                      f"ours, {quant}, batch {b}, {k} adapters")
            )
    del ours_model, multi, peft_model, models
    gc.collect()
    return result


def pick_engine_cell(cells: list[tuple[int, int]]) -> tuple[int, int]:
    """The issue's target cell (16 requests, 16 adapters) when the grid has it, else the largest cell."""
    return TARGET_CELL if TARGET_CELL in cells else max(cells)


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    parser.add_argument("--no-engine", dest="engine", action="store_false", help="skip the server.engine.Engine runs")
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
    args = parse_args(argv)
    from registry.loading import load_base_model, pick_compute_dtype

    cells, skipped = grid(args.batch_list, args.adapter_list)
    if not cells:
        print("no cell to run: every K is larger than every B", file=sys.stderr)
        return 2
    info = machine_info(args.device)
    info["load_start"] = loadavg()
    log(f"{info['nproc']} CPUs ({info['cpu']}), torch threads {info['torch_threads']}, device {args.device}, "
        f"load {info['load_start']}")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="loradock-bench-") as tmp:
        tmp = Path(tmp)
        base_path, base_name = resolve_bench_base(args, tmp)
        info["base"] = base_name
        log(f"base {base_name} at {base_path}")
        peaks = machine_peaks(args.device, pick_compute_dtype(args.device, args.bf16), quick=args.quick)
        info["peaks"] = peaks
        log(f"machine peaks: matmul {peaks['gflops']:.1f} GFLOP/s ({peaks['dtype']}), copy {peaks['gbs']:.1f} GB/s "
            f"({peaks['seconds']}s)")

        bare, estimate = {}, 0.0
        for quant in args.quants:
            began = time.perf_counter()
            bare[quant] = load_base_model(base_path, quant, args.device, args.bf16)
            load_s = time.perf_counter() - began
            calibration = calibrate(bare[quant].model, args.prompt_len, max(args.batch_list), args.device)
            engine_cell = pick_engine_cell(cells) if args.engine else None
            estimate += load_s + estimate_seconds(cells, args, calibration, load_s, engine_cell)
        info["estimate_s"] = round(estimate)
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
                info["load_end"] = loadavg()
                print(bench_report.text(info, args, results[-1:], skipped), flush=True)
                write_outputs(args, info, results, skipped)
        if cold is not None:
            cold[0].close()
    info["load_end"] = loadavg()
    info["seconds"] = round(time.perf_counter() - started, 1)
    print(bench_report.text(info, args, results, skipped))
    print(bench_report.targets(results))
    print(f"\n(total {info['seconds']} s, estimated {info['estimate_s']} s)")
    write_outputs(args, info, results, skipped)
    return 0


def resolve_bench_base(args, tmp: Path) -> tuple[Path, str]:
    """(model dir, base name): a random Llama built into `tmp`, or --base resolved in the --home registry."""
    if args.random_llama:
        from registry.loading import pick_compute_dtype

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


def write_outputs(args, info: dict, results: list[dict], skipped) -> None:
    if args.json_out:
        settings = {k: v for k, v in vars(args).items() if k not in ("json_out", "markdown_out")}
        payload = {"machine": info, "settings": settings, "skipped_cells": [{"batch": b, "adapters": k} for b, k in skipped],
                   "results": results}
        Path(args.json_out).write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown_out:
        Path(args.markdown_out).write_text(bench_report.markdown(info, args, results, skipped))


if __name__ == "__main__":
    sys.exit(main())
