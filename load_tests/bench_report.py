"""The side-by-side benchmark's tables (load_tests/bench.py), as aligned text and as Markdown for BENCHMARKS.md.

Each table is built once (`Table`) and rendered either way, so the printed numbers and the pasted ones agree.
The numbers come as load_tests/bench_results.py's dataclasses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .bench_results import MachineInfo, Peaks, QuantResult

PREFILL_TARGET, DECODE_TARGET, ONE_BY_ONE_TARGET = 0.9, 0.8, 5.0
TARGET_CELL = (16, 16)
_NUMBER = re.compile(r"[0-9.e+-]+[x%]?")


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        columns = list(zip(self.header, *self.rows))
        widths = [max(len(c) for c in col) for col in columns]
        numeric = [all(_NUMBER.fullmatch(c) for c in col[1:] if c) for col in columns]  # right-aligned
        line = lambda cells: "  ".join(  # noqa: E731
            c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric))
        head = line(self.header)
        return "\n".join([self.title, head, "-" * len(head), *map(line, self.rows), *(f"  {n}" for n in self.notes)])

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else []))


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def throughput_table(results: list[QuantResult]) -> Table:
    table = Table(
        "tokens/s per variant, and ratios (median of per-round paired ratios)",
        ["quant", "B", "K", "phase", "bare", "ours", "PEFT mixed", "one-by-one",
         "ours x bare", "PEFT x bare", "1-by-1 x bare", "ours x 1-by-1", "ours x PEFT"],
    )
    for res in results:
        for cell in res.cells:
            v = cell.variants
            for phase in ("prefill", "decode", "total"):
                table.rows.append([
                    res.label, str(cell.batch), str(cell.adapters), phase,
                    *(f"{v[name].tok_s(phase):.1f}" for name in ("bare", "ours", "peft_mixed", "peft_one_by_one")),
                    *(_x(v[name].x_bare[phase]) for name in ("ours", "peft_mixed", "peft_one_by_one")),
                    _x(cell.ours_x_one_by_one[phase]), _x(cell.ours_x_peft_mixed[phase]),
                ])
    table.notes = [
        "bare: the base alone (the ceiling); ours: server.lora.MultiLoraModel, row i -> adapter i % K; PEFT mixed: "
        "forward(adapter_names=...); one-by-one: each request alone after set_adapter (what a naive server does).",
        "total: prefill + decode tokens over prefill + decode time, i.e. serving the B requests end to end.",
    ]
    return table


def roofline_table(results: list[QuantResult], peaks: Peaks) -> Table:
    table = Table(
        f"roofline: prefill against the matmul peak ({peaks.gflops:.1f} GFLOP/s {peaks.dtype}), "
        f"decode against the copy bandwidth ({peaks.gbs:.1f} GB/s)",
        ["quant", "B", "K", "prefill GFLOP/s bare", "of peak", "ours", "of peak",
         "decode GB/s bare", "of bw", "ours", "of bw", "ours incl. adapter reads", "of bw"],
    )
    for res in results:
        for cell in res.cells:
            bare, ours = cell.roofline.bare, cell.roofline.ours
            table.rows.append([
                res.label, str(cell.batch), str(cell.adapters),
                f"{bare.prefill_gflops:.1f}", _pct(bare.prefill_of_peak),
                f"{ours.prefill_gflops:.1f}", _pct(ours.prefill_of_peak),
                f"{bare.decode_gbs:.2f}", _pct(bare.decode_of_bandwidth),
                f"{ours.decode_gbs:.2f}", _pct(ours.decode_of_bandwidth),
                f"{ours.decode_gbs_with_adapters:.2f}", _pct(ours.decode_with_adapters_of_bandwidth),
            ])
    if results:
        model = results[0].model
        table.notes = [
            "prefill FLOPs: 2 x linear params x tokens + the output head on the last token + causal attention (QK^T, AV); "
            "the same useful work for bare and ours (the LoRA delta's own FLOPs are not counted).",
            "decode bytes per step: the weights as stored (" + ", ".join(
                f"{r.label} {r.model.decode_weight_mb:.1f} MB" for r in results) + ") plus the KV cache read; "
            f"'incl. adapter reads' adds every row's A/B ({model.adapter_mb_per_slot:.1f} MB per row).",
        ]
    return table


def engine_table(results: list[QuantResult]) -> Table | None:
    runs = [r for r in results if r.engine is not None]
    if not runs:
        return None
    table = Table("server.engines.native.NativeEngine (continuous batching), greedy",
                  ["quant", "B", "K", "requests on", "decode tok/s", "x base", "wall tok/s", "x base"])
    for res in runs:
        e = res.engine
        for m, on in ((e.engine_base, "the base (slot 0)"), (e.engine_adapters, f"{e.adapters} adapters")):
            table.rows.append([res.label, str(e.batch), str(e.adapters), on, f"{m.decode_tok_s:.1f}",
                               _x(m.decode_x_base), f"{m.wall_tok_s:.1f}", _x(m.wall_x_base)])
    table.notes = ["decode tok/s: the Engine's own decode-step forwards; wall: completion tokens / wall time incl. prefill."]
    return table


def load_table(results: list[QuantResult]) -> Table | None:
    cold = [r for r in results if r.cold_load is not None]
    hot = [r for r in results if r.hot_swap is not None]
    if not cold and not hot:
        return None
    table = Table("adapter loads and swaps, rank-16 all-linear (ms, median)", ["quant", "what", "ours", "PEFT"])
    for res in cold:
        c = res.cold_load
        table.rows += [
            [res.label, f"cold: registry -> servable (n={c.n}; first {c.ours_first_ms:.0f}, max {c.ours_max_ms:.0f})",
             f"{c.ours_p50_ms:.1f}", ""],
            [res.label, "  of which resolve + pull (digest-checked)", f"{c.pull_p50_ms:.1f}", ""],
            [res.label, "cold: files -> servable (ours: read + assign; PEFT: load_adapter)",
             f"{c.ours_without_pull_p50_ms:.1f}", f"{c.peft_load_adapter_p50_ms:.1f}"],
        ]
    for res in hot:
        h = res.hot_swap
        table.rows += [
            [res.label, f"hot: switch B={h.batch} rows to other resident adapters (ours: new plan + re-gather "
                        f"over an unchanged step; PEFT: set_adapter)",
             f"{h.ours_switch_overhead_ms:.2f}", f"{h.peft_set_adapter_ms:.2f}"],
            [res.label, f"  ours: plan {h.ours_plan_ms:.2f}, step after the switch {h.ours_step_after_switch_ms:.1f}, "
                        f"unchanged step {h.ours_step_unchanged_ms:.1f}", "", ""],
            [res.label, "hot: assign in-memory LoraTensors into a slot", f"{h.ours_assign_in_memory_ms:.2f}", ""],
        ]
    table.notes = ["slots are pre-allocated for rank 16 (the server's default --lora-rank), so no load grows them; "
                   "PEFT's set_adapter only flips which adapter is active (one request at a time), ours switches a "
                   "whole mixed batch."]
    return table


def check_lines(results: list[QuantResult]) -> list[str]:
    lines = []
    for res in results:
        worst = max(max(c.check.max_abs_logit_diff_ours_vs_peft_prefill, c.check.max_abs_logit_diff_ours_vs_peft_decode)
                    for c in res.cells)
        changed = min(c.check.max_abs_logit_diff_ours_vs_bare_prefill for c in res.cells)
        lines.append(f"{res.label}: max |logit diff| ours vs PEFT mixed over all cells {worst:.2e} (prefill and last decode "
                     f"step); ours vs bare at least {changed:.2e} (adapters change the output); slot 0 vs bare "
                     f"{res.check_slot0_vs_bare:.2e}")
    return lines


def targets(results: list[QuantResult]) -> str:
    """The issue's targets at 16 requests over 16 adapters, as ok/MISS lines."""
    lines = [f"targets (the issue's, at B={TARGET_CELL[0]}, K={TARGET_CELL[1]}):"]
    for res in results:
        cell = next((c for c in res.cells if (c.batch, c.adapters) == TARGET_CELL), None)
        if cell is None:
            lines.append(f"  {res.label}: not measured (no B={TARGET_CELL[0]}, K={TARGET_CELL[1]} cell in this grid)")
            continue
        ours = cell.variants["ours"].x_bare
        for what, value, target in (
            ("ours x bare, prefill", ours.prefill, PREFILL_TARGET),
            ("ours x bare, decode", ours.decode, DECODE_TARGET),
            ("ours x one-by-one, end to end", cell.ours_x_one_by_one.total, ONE_BY_ONE_TARGET),
        ):
            lines.append(f"  {res.label}: {what} {value:.2f}x, target >= {target}x: {'ok' if value >= target else 'MISS'}")
    return "\n".join(lines)


def _header(info: MachineInfo, args, skipped) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    device = f"GPU {info.gpu}" if info.gpu else "no GPU used"
    peaks = info.peaks
    return [
        f"machine: {info.cpu}, {info.nproc} CPUs, {info.memory_gb} GB RAM, torch threads {info.torch_threads}, "
        f"{device}; {versions}; code {info.revision}",
        f"load average: start {info.load_start}, end {info.load_end or '?'} (ratios are paired per round)",
        f"base {info.base}; prompt {args.prompt_len} tokens, {args.decode_steps} decode steps; rank-16 all-linear "
        f"adapters; median of {args.repeats} round(s) after one warmup round per quantization; one-by-one timed over "
        f"the first min(B, {args.one_by_one_requests}) requests",
        "skipped (K > B: B rows cannot use more than B adapters): "
        + (", ".join(f"B={b} K={k}" for b, k in skipped) or "none"),
        f"machine peaks ({peaks.threads} threads): matmul {peaks.gflops:.1f} GFLOP/s {peaks.dtype} (best of sizes "
        + ", ".join(f"{n}: {g:.1f}" for n, g in peaks.gflops_by_size.items())
        + f"), copy {peaks.gbs:.1f} GB/s ({peaks.copy_mb} MB, read + write)",
    ]


def _tables(info: MachineInfo, results: list[QuantResult]) -> list[Table]:
    tables = [throughput_table(results), roofline_table(results, info.peaks), engine_table(results), load_table(results)]
    return [t for t in tables if t is not None]


def text(info: MachineInfo, args, results: list[QuantResult], skipped) -> str:
    parts = _header(info, args, skipped) + [""]
    for table in _tables(info, results):
        parts += [table.text(), ""]
    return "\n".join(parts + check_lines(results) + [r.profile for r in results if r.profile is not None])


def markdown(info: MachineInfo, args, results: list[QuantResult], skipped) -> str:
    title = "GPU, random-init " if info.gpu else ""
    parts = [f"## Server engine, side by side, {title}{info.base} (`{args.command}`, {info.date})", ""]
    parts += [line + "  " for line in _header(info, args, skipped)] + [""]
    for table in _tables(info, results):
        parts += [table.markdown(), ""]
    parts += ["```", targets(results), *check_lines(results), "```", ""]
    return "\n".join(parts)
