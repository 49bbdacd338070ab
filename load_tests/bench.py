#!/usr/bin/env python
"""Multi-adapter serving throughput: one batch over many LoRA adapters against the bare base and PEFT.

    python load_tests/bench_server.py [--base smollm2-135m-instruct] [--home DIR] [--quant none,nf4]
        [--batch 16] [--adapters 16] [--prompt-len 64] [--decode-steps 32] [--repeats 3]
        [--cold-loads 10] [--no-engine] [--profile] [--quick] [--json OUT]

A benchmark, not a test: it prints a table and exits 0. For each quantization the base is loaded
three times in this process (bare; wrapped by `server.lora.MultiLoraModel`; under PEFT) and the
same batch of B random prompts (fixed seed) is run through:

  (a) bare base          one prefill forward (B x prompt_len, logits_to_keep=1) into a DynamicCache,
                         then D single-token decode steps for the whole batch;
  (b) ours               the same on the MultiLoraModel, K adapters in K slots, row i -> slot 1 + i % K
                         (`rows()` entered per forward, as server.engine does);
  (c) PEFT mixed batch   PeftModel with the K adapters, forward(..., adapter_names=[...]) (eval mode);
  (d) PEFT one-by-one    for each request: set_adapter(name), prefill that single row, decode D steps
                         at batch 1; total tokens / total time (swap time counted in prefill).

(a)-(c) run interleaved step by step (the three prefills, then decode step t of each before step t+1
of any), (d) after them, in rounds: one warmup round, then --repeats timed ones. Reported: the median
tokens/s over the rounds, and the ratio to the bare base as the median of the per-round ratios (each
paired with the bare base's time in the same round, so background load on a shared machine cancels).
Targets (the issue): (b) >= 0.9x bare in prefill and >= 0.8x in decode.

Also measured: the real `server.engine.Engine` (continuous batching) decoding B requests spread
over the K adapters against the same B requests all on the base (slot 0), and the cold load of a
rank-16 all-linear adapter from the registry to a servable slot (resolve + pull to a fresh dir +
`load_lora_weights` + `MultiLoraModel.assign`, p50 over --cold-loads pushed versions), next to
PEFT's `load_adapter` of the same files. Cold loads use a scratch registry home (deleted at exit)
that registers the same base directory, so nothing is pushed into --home.

The adapters are real PEFT LoRA adapters (rank 16, alpha 32, target_modules="all-linear") with
seeded random A and non-zero random B, saved to a temporary directory.
`--quick` (batch 4, 4 adapters, prompt 16, decode 4, quant none, 2 repeats, 3 cold loads) is the CI
smoke run.
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
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

RANK, ALPHA = 16, 32
PREFILL_TARGET, DECODE_TARGET = 0.9, 0.8
VARIANTS = ("bare", "ours", "peft_mixed", "peft_one_by_one")
LABELS = {
    "bare": "bare base",
    "ours": "ours: MultiLoraModel, K adapters",
    "peft_mixed": "PEFT adapter_names mixed batch",
    "peft_one_by_one": "PEFT one-by-one set_adapter",
    "engine_base": "Engine, all rows on base (slot 0)",
    "engine_adapters": "Engine, rows over K adapters",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- machine ----------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import peft
    import transformers

    revision = "?"
    with contextlib.suppress(Exception):
        import subprocess

        git = ["git", "-C", str(REPO)]
        revision = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "server"], capture_output=True, text=True).stdout.strip()
        revision += " (server/ modified)" if dirty else ""
    return {
        "revision": revision,
        "nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# --- adapters ---------------------------------------------------------------------------------


def make_adapters(base_path: str, out: Path, count: int) -> list[Path]:
    """`count` real PEFT LoRA adapters (rank 16, all-linear) with seeded random A and non-zero random B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    params = [(n, p) for n, p in peft_model.named_parameters() if "lora_A" in n or "lora_B" in n]
    dirs = []
    with torch.no_grad():
        for i in range(count):
            gen = torch.Generator().manual_seed(i)
            for name, p in params:
                if "lora_A" in name:  # like PEFT's kaiming-uniform init: U(-1/sqrt(in), 1/sqrt(in))
                    bound = 1.0 / p.shape[1] ** 0.5
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            path = out / f"adapter-{i:03d}"
            peft_model.save_pretrained(path)
            dirs.append(path)
    del peft_model, model
    gc.collect()
    return dirs


# --- one batch through a model ----------------------------------------------------------------


def forward(model, ids, cache, past: int, **kwargs):
    """One forward of `ids` (B, T) after `past` cached tokens; returns (last logits, cache)."""
    from transformers import DynamicCache

    b, t = ids.shape
    mask = torch.ones((b, past + t), dtype=torch.long)
    positions = torch.arange(past, past + t, dtype=torch.long).expand(b, t)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions,
        cache=cache if cache is not None else DynamicCache(), use_cache=True, logits_to_keep=1, **kwargs,
    )
    return out.logits[:, -1, :], out.cache


def run_batch(model, prompt, steps, context=None, **kwargs) -> tuple[float, float, torch.Tensor]:
    """Prefill `prompt` (B, L), then decode `steps` (B, D) one token at a time; (prefill s, decode s, prefill logits).

    `context`: a callable giving a fresh context manager entered around every forward (rows())."""
    context = context or contextlib.nullcontext
    length = prompt.shape[1]
    start = time.perf_counter()
    with context():
        logits, cache = forward(model, prompt, None, 0, **kwargs)
    prefilled = time.perf_counter()
    for t in range(steps.shape[1]):
        with context():
            _, cache = forward(model, steps[:, t:t + 1], cache, length + t, **kwargs)
    return prefilled - start, time.perf_counter() - prefilled, logits


def run_interleaved(batched: dict, prompt, steps) -> tuple[dict, dict, dict]:
    """The batched variants step by step in turn: every prefill, then decode step t of each variant
    before step t + 1 of any, so noise from other work on the machine falls on all of them alike.

    `batched`: name -> (model, context factory or None, forward kwargs). Returns (prefill s, decode s, prefill logits)."""
    length = prompt.shape[1]
    prefill, decode, logits, caches = {}, dict.fromkeys(batched, 0.0), {}, {}
    for name, (model, context, kwargs) in batched.items():
        start = time.perf_counter()
        with (context or contextlib.nullcontext)():
            logits[name], caches[name] = forward(model, prompt, None, 0, **kwargs)
        prefill[name] = time.perf_counter() - start
    for t in range(steps.shape[1]):
        for name, (model, context, kwargs) in batched.items():
            start = time.perf_counter()
            with (context or contextlib.nullcontext)():
                _, caches[name] = forward(model, steps[:, t:t + 1], caches[name], length + t, **kwargs)
            decode[name] += time.perf_counter() - start
    return prefill, decode, logits


def run_one_by_one(peft_model, names, prompt, steps) -> tuple[float, float]:
    """Each row alone: set_adapter(its adapter), prefill it, decode it; swap time counts as prefill."""
    prefill_s = decode_s = 0.0
    for row, name in enumerate(names):
        start = time.perf_counter()
        peft_model.set_adapter(name)
        p, d, _ = run_batch(peft_model, prompt[row:row + 1], steps[row:row + 1])
        prefill_s += time.perf_counter() - start - d
        decode_s += d
    return prefill_s, decode_s


# --- the engine -------------------------------------------------------------------------------


def run_engine(model, tokenizer, multi, prompt, steps: int, slots: list[int]) -> dict:
    """B requests through server.engine.Engine (all admitted in one prefill), greedy, exactly `steps` tokens each."""
    from server.engine import Engine, EngineRequest
    from server.sampling import Sampling

    engine = Engine(model, tokenizer, multi, max_batch_size=len(slots))
    engine.eos_ids = set()  # random prompts: never stop early, every request decodes exactly `steps` tokens
    handles = [
        engine.submit(EngineRequest(f"r{i}", prompt[i].tolist(), Sampling(max_new_tokens=steps), slot=slot))
        for i, slot in enumerate(slots)
    ]  # queued before start(): the first turn admits them all together
    start = time.perf_counter()
    engine.start()
    results = [h.result(timeout=3600) for h in handles]
    wall = time.perf_counter() - start
    engine.stop()
    tokens = sum(r.completion_tokens for r in results)
    return {
        "decode_tok_s": engine.decode_tokens / engine.decode_seconds if engine.decode_seconds else 0.0,
        "wall_tok_s": tokens / wall, "completion_tokens": tokens, "wall_s": wall,
        "texts": [r.text for r in results],
    }


# --- cold load --------------------------------------------------------------------------------


def push_cold_versions(base, adapter_dirs: list[Path], home: Path) -> tuple[object, list[str]]:
    """A scratch registry holding the same base, with one version of `bench-cold` per adapter directory."""
    from registry import Registry

    reg = Registry(home)
    reg.add_base(str(base.path), base.name)
    refs = [reg.push(d, "bench-cold", base=base.name, message="bench_server cold load").version.ref for d in adapter_dirs]
    return reg, refs


def measure_cold_loads(reg, refs, multi, peft_model, slot: int, scratch: Path) -> dict:
    """Registry -> servable for each ref (resolve, pull to a fresh dir, load_lora_weights, assign), and PEFT's load_adapter."""
    from registry.names import parse_ref
    from server.lora import load_lora_weights

    ours, parts, peft_times, dirs = [], {"pull": [], "load": [], "assign": []}, [], []
    for ref in refs:
        t0 = time.perf_counter()
        version = reg.resolve(parse_ref(ref))
        _, path = reg.pull(version.ref, scratch / f"pull-{uuid.uuid4().hex}", force=True)
        t1 = time.perf_counter()
        weights = load_lora_weights(path, multi)
        t2 = time.perf_counter()
        multi.assign(slot, weights)
        t3 = time.perf_counter()
        ours.append(t3 - t0)
        parts["pull"].append(t1 - t0)
        parts["load"].append(t2 - t1)
        parts["assign"].append(t3 - t2)
        dirs.append(path)
    multi.clear(slot)
    for i, path in enumerate(dirs):
        name = f"cold{i}"
        t0 = time.perf_counter()
        peft_model.load_adapter(str(path), adapter_name=name)
        peft_times.append(time.perf_counter() - t0)
        peft_model.delete_adapter(name)
    ms = lambda xs: round(1000 * statistics.median(xs), 1)  # noqa: E731
    return {
        "n": len(refs), "ours_p50_ms": ms(ours), "ours_max_ms": round(1000 * max(ours), 1),
        "ours_first_ms": round(1000 * ours[0], 1),
        "pull_p50_ms": ms(parts["pull"]), "load_lora_weights_p50_ms": ms(parts["load"]), "assign_p50_ms": ms(parts["assign"]),
        "ours_without_pull_p50_ms": ms([a + b for a, b in zip(parts["load"], parts["assign"])]),
        "peft_load_adapter_p50_ms": ms(peft_times),
    }


# --- profile ----------------------------------------------------------------------------------


def profile_decode_step(model, prompt, steps, context, label: str, **kwargs) -> str:
    from torch.profiler import ProfilerActivity, profile

    length = prompt.shape[1]
    context = context or contextlib.nullcontext
    with context():
        _, cache = forward(model, prompt, None, 0, **kwargs)
    with context():  # one warm decode step
        _, cache = forward(model, steps[:, :1], cache, length, **kwargs)
    with profile(activities=[ProfilerActivity.CPU]) as prof, context():
        forward(model, steps[:, 1:2], cache, length + 1, **kwargs)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40)
    return f"\n--- one decode step, {label} ---\n{table}"


# --- one quantization -------------------------------------------------------------------------


def bench_quant(args, base, quant: str, adapter_dirs, cold, scratch: Path) -> dict:
    from peft import PeftModel

    from registry.loading import load_base_model
    from server.lora import MultiLoraModel, load_lora_weights

    log(f"[{quant}] loading the base three times")
    bare_loaded = load_base_model(base, quant)
    bare, tokenizer = bare_loaded.model, bare_loaded.tokenizer
    ours_model = load_base_model(base, quant).model
    cold_slot = args.adapters + 1
    multi = MultiLoraModel(ours_model, max_slots=cold_slot)  # as server.app: rank grows on first assign
    peft_model = PeftModel.from_pretrained(load_base_model(base, quant).model, str(adapter_dirs[0]), adapter_name="a0")
    peft_model.eval()

    result: dict = {"quant": quant, "compute_dtype": bare_loaded.compute_dtype}
    if cold is not None:
        log(f"[{quant}] cold loads ({len(cold[1])} versions)")
        # outside inference_mode, as server.cache assigns (stacks grown under it could not be written later)
        result["cold_load"] = measure_cold_loads(cold[0], cold[1], multi, peft_model, cold_slot, scratch)
        log(f"[{quant}] cold loads done")

    names = [f"a{i}" for i in range(args.adapters)]
    for i, path in enumerate(adapter_dirs):
        multi.assign(i + 1, load_lora_weights(path, multi))
        if i:
            peft_model.load_adapter(str(path), adapter_name=names[i])
    peft_model.eval()

    b, length, d = args.batch, args.prompt_len, args.decode_steps
    gen = torch.Generator().manual_seed(1234)
    vocab = bare.config.vocab_size
    prompt = torch.randint(0, vocab, (b, length), generator=gen)
    steps = torch.randint(0, vocab, (b, d), generator=gen)
    row_slots = [1 + i % args.adapters for i in range(b)]
    row_names = [names[s - 1] for s in row_slots]

    batched = {
        "bare": (bare, None, {}),
        "ours": (ours_model, lambda: multi.rows(row_slots), {}),  # rows() per forward, as server.engine does
        "peft_mixed": (peft_model, None, {"adapter_names": row_names}),
    }
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for r in range(args.repeats + 1):
            began = time.perf_counter()
            prefill, decode, logits = run_interleaved(batched, prompt, steps)
            middle = time.perf_counter()
            one = run_one_by_one(peft_model, row_names, prompt, steps)
            if r == 0:
                log(f"[{quant}] warmup: batched variants {middle - began:.1f}s, one-by-one {time.perf_counter() - middle:.1f}s")
                first_logits = {v: lg.float() for v, lg in logits.items()}
                continue
            for v in batched:
                times[v].append((prefill[v], decode[v]))
            times["peft_one_by_one"].append(one)
            log(f"[{quant}] round {r}/{args.repeats} done (load {loadavg()})")
        logits = first_logits
        check = {
            "max_abs_logit_diff_ours_vs_peft": float((logits["ours"] - logits["peft_mixed"]).abs().max()),
            "max_abs_logit_diff_ours_vs_bare": float((logits["ours"] - logits["bare"]).abs().max()),
        }
        with multi.rows([0] * b):  # slot 0 everywhere must be the bare base exactly
            base_logits, _ = forward(ours_model, prompt, None, 0)
        check["max_abs_logit_diff_slot0_vs_bare"] = float((base_logits.float() - logits["bare"]).abs().max())
    result["check"] = check

    prefill_tokens, decode_tokens = b * length, b * d
    variants = {}
    for v in VARIANTS:
        p = statistics.median(t[0] for t in times[v])
        dd = statistics.median(t[1] for t in times[v])
        variants[v] = {
            "prefill_s": p, "decode_s": dd, "prefill_tok_s": prefill_tokens / p, "decode_tok_s": decode_tokens / dd,
            "prefill_runs_s": [t[0] for t in times[v]], "decode_runs_s": [t[1] for t in times[v]],
        }
    for v in VARIANTS:  # ratios paired within each round (same moment, same background load), then the median
        variants[v]["prefill_x_bare"] = statistics.median(
            bt[0] / vt[0] for bt, vt in zip(times["bare"], times[v]))
        variants[v]["decode_x_bare"] = statistics.median(
            bt[1] / vt[1] for bt, vt in zip(times["bare"], times[v]))

    if args.engine:
        log(f"[{quant}] engine runs")
        eng: dict[str, list[dict]] = {"engine_base": [], "engine_adapters": []}
        for r in range(args.repeats + 1):
            for key, slots in (("engine_base", [0] * b), ("engine_adapters", row_slots)):
                out = run_engine(ours_model, tokenizer, multi, prompt, d, slots)
                if r:
                    eng[key].append(out)
        for key, outs in eng.items():
            variants[key] = {
                "decode_tok_s": statistics.median(o["decode_tok_s"] for o in outs),
                "wall_tok_s": statistics.median(o["wall_tok_s"] for o in outs),
                "completion_tokens": outs[0]["completion_tokens"],
            }
        for key in eng:  # paired within each round, then the median
            pairs = list(zip(eng["engine_base"], eng[key]))
            variants[key]["decode_x_engine_base"] = statistics.median(o["decode_tok_s"] / e["decode_tok_s"] for e, o in pairs)
            variants[key]["wall_x_engine_base"] = statistics.median(o["wall_tok_s"] / e["wall_tok_s"] for e, o in pairs)
    result["variants"] = variants

    if args.profile:
        with torch.inference_mode():
            result["profile"] = (
                profile_decode_step(bare, prompt, steps, None, f"bare base, {quant}, batch {b}")
                + profile_decode_step(ours_model, prompt, steps, lambda: multi.rows(row_slots),
                                      f"ours, {quant}, batch {b}, {len(set(row_slots))} adapters")
            )
    del bare, ours_model, multi, peft_model, bare_loaded
    gc.collect()
    return result


# --- report -----------------------------------------------------------------------------------


def report(info: dict, args, results: list[dict]) -> str:
    busy = ""
    with contextlib.suppress(ValueError, IndexError):
        if float(info["load_start"].split()[0]) > 0.5 * (info["nproc"] or 1):
            busy = "  (other work was running: absolute tok/s suffer, ratios are paired per round)"
    lines = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), torch threads {info['torch_threads']}, device {info['device']}; "
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}",
        f"code: {info['revision']}",
        f"load average: start {info['load_start']}, end {info['load_end']}{busy}",
        f"base {args.base}; batch {args.batch}, {args.adapters} adapters (rank {RANK}, all-linear), prompt {args.prompt_len} "
        f"tokens, {args.decode_steps} decode steps; median of {args.repeats} rounds after a warmup "
        "(x bare: median of per-round paired ratios)",
        "",
    ]
    head = f"{'quant':<6} {'variant':<36} {'prefill tok/s':>13} {'x bare':>7} {'decode tok/s':>13} {'x bare':>7}"
    lines += [head, "-" * len(head)]
    for res in results:
        q = res["quant"]
        for v, m in res["variants"].items():
            if v.startswith("engine"):
                continue
            mark = ""
            if v == "ours":
                ok_p = m["prefill_x_bare"] >= PREFILL_TARGET
                ok_d = m["decode_x_bare"] >= DECODE_TARGET
                mark = (f"  targets {PREFILL_TARGET}/{DECODE_TARGET}: "
                        f"prefill {'ok' if ok_p else 'MISS'}, decode {'ok' if ok_d else 'MISS'}")
            lines.append(
                f"{q:<6} {LABELS[v]:<36} {m['prefill_tok_s']:>13.1f} {m['prefill_x_bare']:>6.2f}x "
                f"{m['decode_tok_s']:>13.1f} {m['decode_x_bare']:>6.2f}x{mark}"
            )
        lines.append("")
    if any("engine_base" in r["variants"] for r in results):
        head = (f"{'quant':<6} {'Engine (continuous batching)':<36} {'decode tok/s':>13} {'x base':>7} "
                f"{'wall tok/s':>11} {'x base':>7}")
        lines += [head, "-" * len(head)]
        for res in results:
            for v in ("engine_base", "engine_adapters"):
                m = res["variants"].get(v)
                if m:
                    lines.append(
                        f"{res['quant']:<6} {LABELS[v]:<36} {m['decode_tok_s']:>13.1f} {m['decode_x_engine_base']:>6.2f}x "
                        f"{m['wall_tok_s']:>11.1f} {m['wall_x_engine_base']:>6.2f}x"
                    )
        lines += ["  (decode tok/s: Engine's own decode-step forwards; wall: completion tokens / wall time incl. prefill)", ""]
    cold = [r for r in results if "cold_load" in r]
    if cold:
        head = (f"{'quant':<6} {'cold load, rank-16 all-linear':<30} {'p50 ms':>7} {'first':>7} {'max':>7} "
                f"{'pull':>6} {'read':>6} {'assign':>6} {'PEFT load_adapter p50':>22}")
        lines += [head, "-" * len(head)]
        for r in cold:
            c = r["cold_load"]
            lines.append(
                f"{r['quant']:<6} {'registry -> servable (n=' + str(c['n']) + ')':<30} {c['ours_p50_ms']:>7.1f} "
                f"{c['ours_first_ms']:>7.1f} {c['ours_max_ms']:>7.1f} {c['pull_p50_ms']:>6.1f} "
                f"{c['load_lora_weights_p50_ms']:>6.1f} {c['assign_p50_ms']:>6.1f} {c['peft_load_adapter_p50_ms']:>20.1f}ms"
            )
        lines += ["  (pull = resolve + registry.pull to a fresh dir; read = load_lora_weights; first includes slot growth;",
                  "   PEFT load_adapter reads the already pulled files, compare with read + assign)", ""]
    for r in results:
        c = r["check"]
        lines.append(
            f"{r['quant']}: max |logit diff| prefill: ours vs PEFT mixed {c['max_abs_logit_diff_ours_vs_peft']:.2e}, "
            f"ours vs bare {c['max_abs_logit_diff_ours_vs_bare']:.2e} (adapters change the output), "
            f"slot 0 vs bare {c['max_abs_logit_diff_slot0_vs_bare']:.2e}"
        )
    for r in results:
        if "profile" in r:
            lines.append(r["profile"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="registered base name or model dir (default: the default base)")
    parser.add_argument("--home", default=os.environ.get("LORADOCK_HOME") or str(Path.home() / ".loradock"),
                        help="registry home holding the base (default $LORADOCK_HOME or ~/.loradock)")
    parser.add_argument("--quant", default="none,nf4", help="comma-separated quantizations: none, nf4, int8")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-loads", type=int, default=10, help="pushed versions to cold-load (0: skip)")
    parser.add_argument("--no-engine", dest="engine", action="store_false", help="skip the server.engine.Engine runs")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables of one decode step")
    parser.add_argument("--quick", action="store_true", help="CI smoke: batch 4, 4 adapters, prompt 16, decode 4, quant none")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.adapters, args.prompt_len, args.decode_steps = 4, 4, 16, 4
        args.quant, args.repeats, args.cold_loads = "none", 2, 3
    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    if args.batch < 1 or args.adapters < 1 or args.prompt_len < 1 or args.decode_steps < 2 or args.repeats < 1:
        parser.error("batch, adapters, prompt-len, repeats must be >= 1 and decode-steps >= 2")

    from registry import Registry
    from registry.bases import DEFAULT_BASE
    from trainer.train import resolve_base

    args.base = args.base or DEFAULT_BASE
    info = machine_info()
    info["load_start"] = loadavg()
    log(f"{info['nproc']} CPUs ({info['cpu']}), load {info['load_start']}")
    registry = Registry(args.home)
    started = time.perf_counter()
    base = resolve_base(registry, args.base)
    registry.close()
    log(f"base {base.name} at {base.path} ({time.perf_counter() - started:.1f}s)")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        log(f"making {args.adapters} + {args.cold_loads} adapters")
        dirs = make_adapters(base.path, tmp / "adapters", args.adapters + args.cold_loads)
        adapter_dirs, cold_dirs = dirs[:args.adapters], dirs[args.adapters:]
        cold = push_cold_versions(base, cold_dirs, tmp / "cold-home") if cold_dirs else None
        for quant in quants:
            results.append(bench_quant(args, base, quant, adapter_dirs, cold, tmp))
            if len(quants) > 1 and quant != quants[-1]:  # partial results first, in case a later quant fails or is cut short
                info["load_end"] = loadavg()
                print(f"=== {quant} ===\n{report(info, args, results[-1:])}\n", flush=True)
                write_json(args, info, results)
        if cold is not None:
            cold[0].close()
    info["load_end"] = loadavg()
    info["seconds"] = round(time.perf_counter() - started, 1)

    print(report(info, args, results))
    print(f"\n(total {info['seconds']} s)")
    write_json(args, info, results)


def write_json(args, info: dict, results: list[dict]) -> None:
    if args.json_out:
        payload = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "json_out"}, "results": results}
        Path(args.json_out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
