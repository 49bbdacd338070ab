"""What the side-by-side benchmark measures, as dataclasses: one cell, one quantization, the machine.

`load_tests/bench_runs.py` and `bench_grid.py` fill these in, `bench_report.py` renders them, and
`as_json` writes them out in the shape `--json` has always had (tests/test_bench.py reads it): a field named
in its class's `omit_when_none` and left at None (a measurement not taken, e.g. `engine` under --no-engine)
is left out, not written as null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

PHASES = ("prefill", "decode", "total")
BATCHED = ("bare", "ours", "peft_mixed")
VARIANTS = BATCHED + ("peft_one_by_one",)


@dataclass
class PhaseRatios:
    """One variant's tokens/s over another's, per phase (the median of per-round paired ratios)."""

    prefill: float
    decode: float
    total: float

    def __getitem__(self, phase: str) -> float:
        return getattr(self, phase)


@dataclass
class VariantRates:
    """One variant in one cell: median tokens/s and seconds over the timed rounds."""

    prefill_tok_s: float
    decode_tok_s: float
    total_tok_s: float
    prefill_s: float
    decode_s: float
    requests: int
    x_bare: PhaseRatios

    def tok_s(self, phase: str) -> float:
        return getattr(self, f"{phase}_tok_s")


@dataclass
class LogitCheck:
    """Ours must compute PEFT's logits (and differ from the bare base's: the adapters do something)."""

    max_abs_logit_diff_ours_vs_peft_prefill: float
    max_abs_logit_diff_ours_vs_peft_decode: float
    max_abs_logit_diff_ours_vs_bare_prefill: float


@dataclass
class RooflineSide:
    """Achieved prefill GFLOP/s and decode GB/s of one variant, and their fractions of the machine's peaks."""

    prefill_gflops: float
    prefill_of_peak: float
    decode_gbs: float
    decode_of_bandwidth: float


@dataclass
class OursRoofline(RooflineSide):
    """Ours also reads every row's adapter A/B each step: the bytes it actually moves."""

    decode_gbs_with_adapters: float = 0.0
    decode_with_adapters_of_bandwidth: float = 0.0


@dataclass
class Roofline:
    prefill_gflop: float
    decode_step_mb: float
    adapter_mb_per_step: float
    bare: RooflineSide
    ours: OursRoofline


@dataclass
class Cell:
    """B rows over K adapters: every variant's rates, the logit check, and the ratios people quote."""

    batch: int
    adapters: int
    variants: dict[str, VariantRates]  # keyed by VARIANTS
    check: LogitCheck
    ours_x_one_by_one: PhaseRatios
    ours_x_peft_mixed: PhaseRatios
    roofline: Roofline | None = None


@dataclass
class EngineRun:
    decode_tok_s: float
    wall_tok_s: float
    completion_tokens: int
    decode_x_base: float
    wall_x_base: float


@dataclass
class EngineBench:
    """server.engines.native.NativeEngine decoding B requests over K adapters, against the same requests on the base (slot 0)."""

    batch: int
    adapters: int
    engine_base: EngineRun
    engine_adapters: EngineRun


@dataclass
class ColdLoads:
    """Registry -> servable (resolve, pull, read, assign) against PEFT's load_adapter of the same files, ms."""

    n: int
    ours_p50_ms: float
    ours_max_ms: float
    ours_first_ms: float
    pull_p50_ms: float
    load_lora_weights_p50_ms: float
    assign_p50_ms: float
    ours_without_pull_p50_ms: float
    peft_load_adapter_p50_ms: float


@dataclass
class HotSwaps:
    """Switching a batch's rows to other resident adapters (ours) against PEFT's set_adapter, ms."""

    batch: int
    adapters: int
    n: int
    ours_plan_ms: float
    ours_step_unchanged_ms: float
    ours_step_after_switch_ms: float
    ours_switch_overhead_ms: float
    ours_assign_in_memory_ms: float
    peft_set_adapter_ms: float


@dataclass
class ModelSizes:
    decode_weight_mb: float
    linear_params: int
    adapter_mb_per_slot: float


@dataclass
class QuantResult:
    """Everything measured for one quantization of the base."""

    quant: str
    compute_dtype: str
    model: ModelSizes | None = None
    cells: list[Cell] = field(default_factory=list)
    check_slot0_vs_bare: float = 0.0  # slot 0 must be the bare base exactly
    cold_load: ColdLoads | None = None
    hot_swap: HotSwaps | None = None
    engine: EngineBench | None = None
    profile: str | None = None
    omit_when_none: ClassVar[tuple[str, ...]] = ("cold_load", "hot_swap", "engine", "profile")

    @property
    def label(self) -> str:
        return f"{self.quant}/{self.compute_dtype}"


@dataclass
class Peaks:
    """This machine's matmul peak (best over a few sizes) and copy bandwidth (load_tests/roofline.py)."""

    gflops: float
    gflops_by_size: dict[int, float]
    gbs: float
    dtype: str
    copy_mb: int
    threads: int
    seconds: float


@dataclass
class MachineInfo:
    """Where and on what code the benchmark ran; filled in as the run goes."""

    revision: str
    date: str
    nproc: int | None
    cpu: str
    memory_gb: float | None
    torch_threads: int
    device: str
    gpu: str | None
    versions: dict[str, str]  # python, torch, transformers, peft, bitsandbytes
    load_start: str = "?"
    base: str = ""
    peaks: Peaks | None = None
    estimate_s: int = 0
    load_end: str | None = None
    seconds: float | None = None
    omit_when_none: ClassVar[tuple[str, ...]] = ("load_end", "seconds")


def as_json(value: Any) -> Any:
    """Dataclasses as plain JSON values, leaving out the `omit_when_none` fields that are None.

    `MachineInfo.versions` is written flat into the machine object, as the benchmark always has.
    """
    if dataclasses.is_dataclass(value):
        out = {}
        omitted = getattr(value, "omit_when_none", ())
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.name in omitted:
                continue
            if isinstance(value, MachineInfo) and f.name == "versions":
                out.update(item)
            else:
                out[f.name] = as_json(item)
        return out
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value
