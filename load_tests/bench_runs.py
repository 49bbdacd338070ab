"""The timed runs behind `python -m load_tests bench`: batches through a model, the Engine, cold loads and hot swaps.

Every function here measures one thing on models `bench.py` has loaded; `bench.py` decides what to run
and reports it.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .bench_results import ColdLoads, EngineBench, EngineRun, HotSwaps


@dataclass
class Models:
    """The three loads of the base one quantization is measured on."""

    bare: Any  # the base alone
    ours: Any  # the base wrapped by `multi`
    multi: Any  # server.lora.MultiLoraModel over `ours`, adapters in slots 1..K
    peft: Any  # PeftModel over a third load, adapters a0..a(K-1)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def clock() -> float:
    """perf_counter once the accelerator (if any) has finished its queued work, so a timing covers it."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


# --- one batch through a model ----------------------------------------------------------------


def forward(model, ids, cache, past: int, **kwargs):
    """One forward of `ids` (B, T) after `past` cached tokens; returns (last logits, cache)."""
    from transformers import DynamicCache

    b, t = ids.shape
    mask = torch.ones((b, past + t), dtype=torch.long, device=ids.device)
    positions = torch.arange(past, past + t, dtype=torch.long, device=ids.device).expand(b, t)
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
    start = clock()
    with context():
        logits, cache = forward(model, prompt, None, 0, **kwargs)
    prefilled = clock()
    for t in range(steps.shape[1]):
        with context():
            _, cache = forward(model, steps[:, t:t + 1], cache, length + t, **kwargs)
    return prefilled - start, clock() - prefilled, logits


def run_interleaved(batched: dict, prompt, steps) -> tuple[dict, dict, dict]:
    """The batched variants step by step in turn: every prefill, then decode step t of each variant
    before step t + 1 of any, so noise from other work on the machine falls on all of them alike.

    `batched`: name -> (model, context factory or None, forward kwargs).
    Returns (prefill s, decode s, (prefill logits, last decode step's logits)) per name."""
    length = prompt.shape[1]
    prefill, decode, logits, caches, last = {}, dict.fromkeys(batched, 0.0), {}, {}, {}
    for name, (model, context, kwargs) in batched.items():
        start = clock()
        with (context or contextlib.nullcontext)():
            logits[name], caches[name] = forward(model, prompt, None, 0, **kwargs)
        prefill[name] = clock() - start
    for t in range(steps.shape[1]):
        for name, (model, context, kwargs) in batched.items():
            start = clock()
            with (context or contextlib.nullcontext)():
                last[name], caches[name] = forward(model, steps[:, t:t + 1], caches[name], length + t, **kwargs)
            decode[name] += clock() - start
    return prefill, decode, {name: (logits[name], last[name]) for name in batched}


def run_one_by_one(peft_model, names, prompt, steps) -> tuple[float, float]:
    """Each row alone: set_adapter(its adapter), prefill it, decode it; swap time counts as prefill."""
    prefill_s = decode_s = 0.0
    for row, name in enumerate(names):
        start = clock()
        peft_model.set_adapter(name)
        p, d, _ = run_batch(peft_model, prompt[row:row + 1], steps[row:row + 1])
        prefill_s += clock() - start - d
        decode_s += d
    return prefill_s, decode_s


# --- the engine -------------------------------------------------------------------------------


class _EngineOnce(NamedTuple):
    decode_tok_s: float
    wall_tok_s: float
    completion_tokens: int


def run_engine(model, tokenizer, multi, prompt, steps: int, slots: list[int]) -> _EngineOnce:
    """B requests through server.engines.native.NativeEngine (all admitted in one prefill), greedy, exactly `steps` tokens each."""
    from server.engines import EngineRequest, Sampling
    from server.engines.native import NativeEngine as Engine

    engine = Engine(model, tokenizer, multi, max_batch_size=len(slots))
    engine.eos_ids = set()  # random prompts: never stop early, every request decodes exactly `steps` tokens
    handles = [
        engine.submit(EngineRequest(f"r{i}", prompt[i].tolist(), Sampling(max_new_tokens=steps), slot=slot))
        for i, slot in enumerate(slots)
    ]  # queued before start(): the first turn admits them all together
    start = clock()
    engine.start()
    results = [h.result(timeout=3600) for h in handles]
    wall = clock() - start
    engine.stop()
    tokens = sum(r.completion_tokens for r in results)
    decode_tok_s = engine.decode_tokens / engine.decode_seconds if engine.decode_seconds else 0.0
    return _EngineOnce(decode_tok_s, tokens / wall, tokens)


def bench_engine(models: Models, tokenizer, prompt, d: int, b: int, k: int, rounds: int) -> EngineBench:
    """The Engine decoding B requests over K adapters against the same B requests on the base (slot 0), paired per round."""
    row_slots = [1 + i % k for i in range(b)]
    base: list[_EngineOnce] = []
    adapters: list[_EngineOnce] = []
    for r in range(rounds + 1):  # the first round warms up
        for runs, slots in ((base, [0] * b), (adapters, row_slots)):
            out = run_engine(models.ours, tokenizer, models.multi, prompt[:b], d, slots)
            if r:
                runs.append(out)

    def summary(outs: list[_EngineOnce]) -> EngineRun:
        pairs = list(zip(base, outs))
        return EngineRun(
            decode_tok_s=statistics.median(o.decode_tok_s for o in outs),
            wall_tok_s=statistics.median(o.wall_tok_s for o in outs),
            completion_tokens=outs[0].completion_tokens,
            decode_x_base=statistics.median(o.decode_tok_s / e.decode_tok_s for e, o in pairs),
            wall_x_base=statistics.median(o.wall_tok_s / e.wall_tok_s for e, o in pairs),
        )

    return EngineBench(batch=b, adapters=k, engine_base=summary(base), engine_adapters=summary(adapters))


# --- cold load and hot swap -------------------------------------------------------------------


def push_cold_versions(base_path: Path, base_name: str, adapter_dirs: list[Path], home: Path) -> tuple[object, list[str]]:
    """A scratch registry holding the same base, with one version of `bench-cold` per adapter directory."""
    from registry import Registry

    reg = Registry(home)
    reg.add_base(str(base_path), base_name)
    refs = [reg.push(d, "bench-cold", base=base_name, message="bench cold load").version.ref for d in adapter_dirs]
    return reg, refs


def ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 2)


def measure_cold_loads(reg, refs, multi, peft_model, slot: int, scratch: Path) -> ColdLoads:
    """Registry -> servable for each ref (resolve, pull to a fresh dir, load_lora_weights, assign), and PEFT's load_adapter."""
    from registry.names import parse_ref
    from server.lora import load_lora_weights

    ours, parts, peft_times, dirs = [], {"pull": [], "load": [], "assign": []}, [], []
    for ref in refs:
        t0 = clock()
        version = reg.resolve(parse_ref(ref))
        _, path = reg.pull(version.ref, scratch / f"pull-{uuid.uuid4().hex}", force=True)
        t1 = clock()
        weights = load_lora_weights(path, multi)
        t2 = clock()
        multi.assign(slot, weights)
        t3 = clock()
        ours.append(t3 - t0)
        parts["pull"].append(t1 - t0)
        parts["load"].append(t2 - t1)
        parts["assign"].append(t3 - t2)
        dirs.append(path)
    multi.clear(slot)
    for i, path in enumerate(dirs):
        name = f"cold{i}"
        t0 = clock()
        peft_model.load_adapter(str(path), adapter_name=name)
        peft_times.append(clock() - t0)
        peft_model.delete_adapter(name)
    return ColdLoads(
        n=len(refs), ours_p50_ms=ms(ours), ours_max_ms=round(1000 * max(ours), 1), ours_first_ms=round(1000 * ours[0], 1),
        pull_p50_ms=ms(parts["pull"]), load_lora_weights_p50_ms=ms(parts["load"]), assign_p50_ms=ms(parts["assign"]),
        ours_without_pull_p50_ms=ms([a + b for a, b in zip(parts["load"], parts["assign"])]),
        peft_load_adapter_p50_ms=ms(peft_times),
    )


def measure_hot_swaps(models: Models, adapter_dirs: list[Path], spare_slot: int, prompt, b: int, k: int, n: int) -> HotSwaps:
    """Switching requests to other resident adapters.

    Ours: a decode step for B rows whose slots all changed since the previous step (`rows()` builds a new plan
    and every layer re-gathers its rows' A/B) against a step under the unchanged plan; and `assign` of an
    adapter already read into memory (LoraTensors) into a slot. PEFT: `set_adapter` to another loaded adapter."""
    from server.lora import load_lora_weights

    model, multi, peft_model = models.ours, models.multi, models.peft
    plans = ([1 + i % k for i in range(b)], [1 + (i + 1) % k for i in range(b)])  # every row moves to another slot
    ids = prompt[:b]
    token = ids[:, :1]
    with multi.rows(plans[0]):
        _, cache = forward(model, ids, None, 0)
    past = ids.shape[1]

    def step(slots) -> tuple[float, float]:
        nonlocal cache, past
        t0 = clock()
        rows = multi.rows(slots)
        t1 = clock()
        with rows:
            _, cache = forward(model, token, cache, past)
        past += 1
        return t1 - t0, clock() - t1

    current = 0
    step(plans[current])  # warm: the first step under this plan gathers
    same, switched, plan_s = [], [], []
    for _ in range(n):
        same.append(step(plans[current])[1])
        current = 1 - current
        p, f = step(plans[current])
        plan_s.append(p)
        switched.append(f)
    weights = [load_lora_weights(path, multi) for path in adapter_dirs[:2]]
    assign = []
    for i in range(n):
        t0 = clock()
        multi.assign(spare_slot, weights[i % len(weights)])
        assign.append(clock() - t0)
    multi.clear(spare_slot)
    names = [f"a{i}" for i in range(k)]
    set_adapter = []
    for i in range(n):
        t0 = clock()
        peft_model.set_adapter(names[(i + 1) % k])
        set_adapter.append(clock() - t0)
    return HotSwaps(
        batch=b, adapters=k, n=n, ours_plan_ms=ms(plan_s), ours_step_unchanged_ms=ms(same),
        ours_step_after_switch_ms=ms(switched), ours_switch_overhead_ms=round(ms(plan_s) + ms(switched) - ms(same), 2),
        ours_assign_in_memory_ms=ms(assign), peft_set_adapter_ms=ms(set_adapter),
    )


# --- profile ----------------------------------------------------------------------------------


def profile_decode_step(model, prompt, steps, context, label: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    length = prompt.shape[1]
    context = context or contextlib.nullcontext
    with context():
        _, cache = forward(model, prompt, None, 0)
    with context():  # one warm decode step
        _, cache = forward(model, steps[:, :1], cache, length)
    with profile(activities=[ProfilerActivity.CPU]) as prof, context():
        forward(model, steps[:, 1:2], cache, length + 1)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40)
    return f"\n--- one decode step, {label} ---\n{table}"
