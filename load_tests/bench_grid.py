"""The side-by-side benchmark's grid (load_tests/bench.py): the models and adapters it builds, one cell, one quantization.

`bench_quant` loads the base three times (bare; wrapped by `server.lora.MultiLoraModel`; under PEFT), runs every
(B, K) cell through `bench_cell`, and returns a `QuantResult`; the timed runs themselves are bench_runs.py's.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from .bench_report import TARGET_CELL
from .bench_results import (
    BATCHED, PHASES, VARIANTS, Cell, LogitCheck, MachineInfo, ModelSizes, OursRoofline, Peaks, PhaseRatios, QuantResult,
    Roofline, RooflineSide, VariantRates,
)
from .bench_runs import (
    Models, bench_engine, clock, forward, log, measure_cold_loads, measure_hot_swaps, profile_decode_step, run_interleaved,
    run_one_by_one,
)
from .roofline import ModelShape

REPO = Path(__file__).resolve().parents[1]
RANK, ALPHA = 16, 32
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


def machine_info(device: str) -> MachineInfo:
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
        dirty = subprocess.run(git + ["status", "--porcelain", "server", "load_tests"],
                               capture_output=True, text=True).stdout.strip()
        revision += " (server/ or the benchmark modified)" if dirty else ""
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return MachineInfo(
        revision=revision, date=time.strftime("%Y-%m-%d"), nproc=os.cpu_count(), cpu=cpu, memory_gb=memory_gb,
        torch_threads=torch.get_num_threads(), device=device, gpu=torch.cuda.get_device_name() if device == "cuda" else None,
        versions=versions, load_start=loadavg(),
    )


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


def bench_cell(models: Models, b: int, k: int, prompt, steps, rounds: int, warmup: int, one_by_one_max: int) -> Cell:
    """B rows over K adapters: the batched variants interleaved and PEFT one-by-one, `warmup` + `rounds` rounds."""
    bare, ours_model, multi, peft_model = models.bare, models.ours, models.multi, models.peft
    row_slots = [1 + i % k for i in range(b)]
    row_names = [f"a{s - 1}" for s in row_slots]
    prompt, steps = prompt[:b], steps[:b]
    batched = {
        "bare": (bare, None, {}),
        "ours": (ours_model, lambda: multi.rows(row_slots), {}),  # rows() per forward, as server.engines.native does
        "peft_mixed": (peft_model, None, {"adapter_names": row_names}),
    }
    one = min(b, one_by_one_max)
    length, d = prompt.shape[1], steps.shape[1]
    tokens = {v: (b * length, b * d) for v in BATCHED} | {"peft_one_by_one": (one * length, one * d)}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    check = None
    for r in range(warmup + rounds):
        prefill, decode, logits = run_interleaved(batched, prompt, steps)
        obo = run_one_by_one(peft_model, row_names[:one], prompt, steps)
        if r < warmup:
            continue
        if check is None:
            (ours_p, ours_d), (peft_p, peft_d) = logits["ours"], logits["peft_mixed"]
            check = LogitCheck(
                max_abs_logit_diff_ours_vs_peft_prefill=float((ours_p.float() - peft_p.float()).abs().max()),
                max_abs_logit_diff_ours_vs_peft_decode=float((ours_d.float() - peft_d.float()).abs().max()),
                max_abs_logit_diff_ours_vs_bare_prefill=float((ours_p.float() - logits["bare"][0].float()).abs().max()),
            )
        for v in BATCHED:
            times[v].append((prefill[v], decode[v]))
        times["peft_one_by_one"].append(obo)

    def rates(v: str) -> list[tuple[float, float, float]]:
        """Per round: prefill, decode and total (prefill + decode tokens over both times) tokens/s."""
        p_tok, d_tok = tokens[v]
        return [(p_tok / p, d_tok / dd, (p_tok + d_tok) / (p + dd)) for p, dd in times[v]]

    def paired(x: str, y: str) -> PhaseRatios:
        """x's tokens/s over y's, per phase: the median of the per-round ratios."""
        return PhaseRatios(*(statistics.median(rx[i] / ry[i] for rx, ry in zip(rates(x), rates(y)))
                             for i in range(len(PHASES))))

    variants = {}
    for v in VARIANTS:
        per_round = rates(v)
        prefill, decode, total = (statistics.median(r[i] for r in per_round) for i in range(len(PHASES)))
        variants[v] = VariantRates(
            prefill_tok_s=prefill, decode_tok_s=decode, total_tok_s=total,
            prefill_s=statistics.median(t[0] for t in times[v]), decode_s=statistics.median(t[1] for t in times[v]),
            requests=one if v == "peft_one_by_one" else b, x_bare=paired(v, "bare"),
        )
    return Cell(batch=b, adapters=k, variants=variants, check=check,
                ours_x_one_by_one=paired("ours", "peft_one_by_one"), ours_x_peft_mixed=paired("ours", "peft_mixed"))


def roofline_of_cell(cell: Cell, shape: ModelShape, peaks: Peaks, length: int, d: int, adapter_bytes_per_row: int) -> Roofline:
    """Achieved prefill GFLOP/s and decode GB/s of bare and ours, and their fractions of the machine's peaks."""
    b = cell.batch
    flops = shape.prefill_flops(b, length)
    step_bytes = shape.decode_bytes(b, length + (d + 1) / 2)  # the mean context over the decode steps

    def side(v: str, kind: type[RooflineSide]) -> RooflineSide:
        m = cell.variants[v]
        gflops = flops / m.prefill_s / 1e9
        gbs = step_bytes * d / m.decode_s / 1e9
        return kind(prefill_gflops=gflops, prefill_of_peak=gflops / peaks.gflops, decode_gbs=gbs,
                    decode_of_bandwidth=gbs / peaks.gbs)

    ours = side("ours", OursRoofline)
    # ours also reads every row's adapter A/B each step (the gathered copies): the bytes it actually moves
    ours.decode_gbs_with_adapters = (step_bytes + b * adapter_bytes_per_row) * d / cell.variants["ours"].decode_s / 1e9
    ours.decode_with_adapters_of_bandwidth = ours.decode_gbs_with_adapters / peaks.gbs
    return Roofline(prefill_gflop=flops / 1e9, decode_step_mb=step_bytes / 2**20,
                    adapter_mb_per_step=b * adapter_bytes_per_row / 2**20, bare=side("bare", RooflineSide), ours=ours)


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


def bench_quant(args, quant: str, bare_loaded, base_path: Path, adapter_dirs, cold, scratch: Path, cells,
                peaks: Peaks) -> QuantResult:
    from peft import PeftModel

    from registry.modeling.loading import load_base_model
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
    models = Models(bare=bare, ours=ours_model, multi=multi, peft=peft_model)
    result = QuantResult(quant=quant, compute_dtype=bare_loaded.compute_dtype)
    if cold is not None:
        log(f"[{quant}] cold loads ({len(cold[1])} versions)")
        # outside inference_mode, as server.cache assigns (stacks grown under it could not be written later)
        result.cold_load = measure_cold_loads(cold[0], cold[1], multi, peft_model, spare_slot, scratch)
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
    result.model = ModelSizes(decode_weight_mb=shape.weight_bytes / 2**20, linear_params=shape.linear_params,
                              adapter_mb_per_slot=multi.nbytes_per_slot / 2**20)
    with torch.inference_mode():
        with multi.rows([0] * b_max):  # slot 0 everywhere must be the bare base exactly
            slot0, _ = forward(ours_model, prompt, None, 0)
        bare_logits, _ = forward(bare, prompt, None, 0)
        result.check_slot0_vs_bare = float((slot0.float() - bare_logits.float()).abs().max())
        for i, (b, k) in enumerate(cells):
            began = clock()
            cell = bench_cell(models, b, k, prompt, steps, args.repeats, warmup=int(i == 0),
                              one_by_one_max=args.one_by_one_requests)
            cell.roofline = roofline_of_cell(cell, shape, peaks, length, d, multi.nbytes_per_slot)
            result.cells.append(cell)
            ours = cell.variants["ours"].x_bare
            log(f"[{quant}] B={b} K={k}: {clock() - began:.1f}s, ours {ours.prefill:.2f}x/{ours.decode:.2f}x bare "
                f"(load {loadavg()})")
        b_hot = min(TARGET_CELL[0], b_max)
        k_hot = min(b_hot, k_max)
        if k_hot >= 2:
            log(f"[{quant}] hot swaps (B={b_hot}, K={k_hot})")
            result.hot_swap = measure_hot_swaps(models, adapter_dirs, spare_slot, prompt, b_hot, k_hot,
                                                   n=3 if args.quick else 10)
    engine_cell = pick_engine_cell(cells)
    if args.engine:
        log(f"[{quant}] engine runs (B={engine_cell[0]}, K={engine_cell[1]})")
        result.engine = bench_engine(models, tokenizer, prompt, d, *engine_cell, rounds=args.repeats)
    if args.profile:
        b, k = engine_cell
        row_slots = [1 + i % k for i in range(b)]
        with torch.inference_mode():
            result.profile = (
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


