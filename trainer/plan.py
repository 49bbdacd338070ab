"""Memory and cost planner behind `reg plan`: will full fine-tuning, LoRA or QLoRA of a model fit, and on what?

`plan("8B", rank=16, seq=4096, batch=2)` estimates the training memory of each method from a
Llama-like model shape (trainer/plan_inputs.py), recommends GPU types from an editable price table,
and returns a JSON-ready dict; cli/plan_view.py renders it. No torch and no rendering here: the
numbers are rules of thumb, each formula below says where it comes from.

What the model assumes (HF Trainer + PEFT as loradock's trainer runs them):
  * bf16 compute, AdamW, gradient checkpointing on, micro-batch `batch` of `seq` tokens;
  * LoRA adapters on all linear layers of every decoder layer, kept in fp32 (PEFT's
    `autocast_adapter_dtype`), with fp32 gradients and AdamW states: 16 bytes per adapter param;
  * QLoRA as `registry.modeling.loading` loads it: NF4 with double quantization for the decoder's linear
    layers, and `prepare_model_for_kbit_training` casting everything else (embeddings, lm_head,
    norms) to fp32.
Not modelled: MoE, CPU offload, sequence parallelism, DeepSpeed's communication buffers,
evaluation/generation during training, and packing-specific attention masks.

Checked against the figures people quote for a 7-8B model (full fine-tuning ~100-120 GB, LoRA
24-32, QLoRA 12-20) and for 70B QLoRA (one 80 GB GPU, only just); tests/test_plan.py pins the
settings where each holds and the numbers for `reg plan --params 8B --seq 4096 --batch 2`.
The vocabulary matters more than those figures suggest: the fp32 loss head over Llama-3's 128k
tokens is ~12 GiB at 4096 x 2, over Llama-2's 32k ~3 GiB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from .plan_inputs import (
    GIB, PARAMS_RANGE, GpuType, ModelShape, PlanError, gib, human_count, load_gpu_table, parse_params, shape_for_params,
)

METHODS = ("full", "lora", "qlora")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_PRESETS = {"all-linear": LINEAR_MODULES, "attention": LINEAR_MODULES[:4], "qv": ("q_proj", "v_proj")}

# Bytes per element of activations and frozen 16-bit weights.
COMPUTE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# Optimizer state bytes per trainable parameter (the fp32 master copy of full fine-tuning is extra).
# AdamW keeps m and v in fp32 (Loshchilov & Hutter; ZeRO paper §3.1 counts them as 8 of its "K=12");
# bitsandbytes' 8-bit AdamW keeps them in one byte each (Dettmers et al. 2022); paged variants hold
# the same bytes, only pageable to CPU under pressure; Adafactor factors the second moment
# (O(rows + cols) per matrix) and keeps no first moment by default, so ~0; plain SGD keeps nothing.
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "adafactor": 0, "sgd": 0,
}
OPTIMIZER_ALIASES = {"adamw": "adamw_torch", "adam": "adamw_torch", "paged_adamw": "paged_adamw_32bit"}

# NF4 with double quantization (Dettmers et al. 2023, QLoRA §3): 4 bits per weight, plus fp32
# absmax per block of 64 quantized to 8 bits (8/64) with an fp32 constant per 256 blocks
# (32/(64*256)): 4 + 0.127 bits = 0.516 bytes per parameter.
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8

# The loss head's peak, per logit (batch x seq x vocab). HF's ForCausalLMLoss upcasts the logits
# to fp32 and cross_entropy saves its fp32 log-softmax; in the backward, nll_loss's fp32 gradient
# and log-softmax's fp32 gradient exist beside that saved output: 4 + 4 + 4 bytes. (The forward
# peak is 10: bf16 logits 2 + fp32 copy 4 + log-softmax 4.) At a 128k vocabulary this is often the
# largest activation; fused linear cross-entropy kernels (Liger, Cut Cross-Entropy) remove it.
LOSS_BYTES_PER_LOGIT = 12

# What nvidia-smi shows that tensors don't: the CUDA context, cuBLAS/cuDNN workspaces and kernels
# (~0.5-1 GiB on Ampere/Hopper), and the caching allocator's reserved-but-unused blocks.
CUDA_CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 0.05

TIGHT_FRACTION = 0.85  # a plan using more than this of a GPU's memory is marked "tight"
MAX_GPUS = 64

# What the planner answers for (the parameter range is plan_inputs.PARAMS_RANGE): LoRA ranks past 4096
# exceed the hidden size of every model here; a million tokens per sequence; a per-GPU micro-batch.
INPUT_RANGES = {"rank": (1, 4096), "seq": (1, 1_048_576), "batch": (1, 4096)}


# --- memory estimate ------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Peak training memory on one GPU, in bytes, by what holds it."""

    method: str
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    total: int
    trainable_params: int
    activation_parts: dict[str, int] = field(default_factory=dict)
    layer_weights: int = 0  # one decoder layer's stored weights; FSDP gathers two at a time
    notes: list[str] = field(default_factory=list)

    def breakdown(self) -> dict[str, int]:
        keys = ("weights", "adapter", "gradients", "optimizer", "activations", "overhead", "total")
        return {key: getattr(self, key) for key in keys}

    @property
    def state_bytes(self) -> int:
        """What ZeRO-3/FSDP shards across GPUs: weights, adapter, gradients and optimizer states."""
        return self.weights + self.adapter + self.gradients + self.optimizer

    def per_gpu_bytes(self, n: int) -> int:
        """Memory per GPU with the states fully sharded over `n` GPUs (ZeRO-3 / FSDP FULL_SHARD).

        Activations are per GPU (each holds its own micro-batch), and FSDP gathers one layer's full
        weights while prefetching the next, so two layers' weights come on top.
        """
        if n <= 1:
            return self.total
        return _with_overhead(self.state_bytes / n + 2 * self.layer_weights + self.activations)[1]


def _with_overhead(allocated: float) -> tuple[int, int]:
    overhead = CUDA_CONTEXT_BYTES + FRAGMENTATION * allocated
    return int(overhead), int(allocated + overhead)


def _normalise_optimizer(optimizer: str) -> str:
    key = str(optimizer).lower().replace("-", "_")
    key = OPTIMIZER_ALIASES.get(key, key)
    if key not in OPTIMIZER_STATE_BYTES:
        known = ", ".join([*OPTIMIZER_ALIASES, *OPTIMIZER_STATE_BYTES])
        raise PlanError(f"optimizer {optimizer!r}: expected one of {known}")
    return key


def _target_modules(target: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(target, str) and target in TARGET_PRESETS:
        return TARGET_PRESETS[target]
    names = [t.strip() for t in target.split(",")] if isinstance(target, str) else list(target)
    bad = [t for t in names if t not in LINEAR_MODULES]
    if bad or not names:
        raise PlanError(f"target {bad[0] if bad else target!r}: expected {', '.join(TARGET_PRESETS)} "
                        f"or module names from {', '.join(LINEAR_MODULES)}")
    return tuple(names)


def _bounded_int(name: str, value) -> int:
    low, high = INPUT_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PlanError(f"--{name} {value!r}: expected an integer from {low} to {high}")
    return value


def adapter_params(shape: ModelShape, rank: int, target: str | Iterable[str] = "all-linear") -> int:
    """LoRA parameters: A (r x in) plus B (out x r) on each targeted linear of every layer."""
    shapes = shape.linear_shapes()
    return shape.layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in _target_modules(target))


def activation_parts(shape: ModelShape, tokens: int, element_bytes: int, gradient_checkpointing: bool,
                     lora_modules: tuple[str, ...] = (), rank: int = 0, lora_dropout: float = 0.0) -> dict[str, int]:
    """Activation memory at the peak of one step, by part (bytes). `tokens` = batch x seq.

    layer: what one HF LlamaDecoderLayer saves for backward per token, counted the way Korthikanti
      et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1) count
      34·h bytes for a GPT layer, redone for Llama: two RMSNorms that compute in fp32 (fp32 input
      + 16-bit output, 3h elements each), RoPE (q, k and their rotations, 2·q_dim + 2·kv_dim),
      SDPA/flash attention (q, k, v and its output; no seq² scores, Dao et al. 2022) and the SwiGLU
      MLP (gate, up, silu(gate), their product: 4·intermediate). LoRA adds each adapted module's
      rank-r A output and, with dropout, a dropped-out copy of its input plus a 1-byte mask.
    checkpoints: with gradient checkpointing HF keeps only each layer's input (h per token per
      layer) and recomputes one layer at a time in the backward (Chen et al. 2016).
    loss_head: LOSS_BYTES_PER_LOGIT per logit (see there).
    With checkpointing the loss head's peak (start of the backward) and a layer's recompute
    happen at different times, so the peak is checkpoints + the larger of the two; without it
    every layer's activations are still held when the loss head peaks.
    """
    h = shape.hidden
    layer_elements = 6 * h + 4 * shape.q_dim + 4 * shape.kv_dim + 4 * shape.intermediate
    layer = tokens * layer_elements * element_bytes
    shapes = shape.linear_shapes()
    lora = tokens * rank * len(lora_modules) * element_bytes
    if lora_dropout > 0:
        lora += tokens * sum(shapes[m][0] for m in lora_modules) * (element_bytes + 1)
    layer += lora
    loss_head = tokens * shape.vocab * LOSS_BYTES_PER_LOGIT
    if gradient_checkpointing:
        checkpoints = shape.layers * tokens * h * element_bytes
        return {"checkpoints": checkpoints, "layer": layer, "loss_head": loss_head, "peak": checkpoints + max(layer, loss_head)}
    return {"checkpoints": 0, "layer": layer, "loss_head": loss_head, "peak": shape.layers * layer + loss_head}


def estimate(
    shape: ModelShape, method: str, rank: int = 16, seq: int = 2048, batch: int = 1, target: str | Iterable[str] = "all-linear",
    gradient_checkpointing: bool = True, optimizer: str = "adamw", compute_dtype: str = "bf16", lora_dropout: float = 0.05,
) -> MemoryEstimate:
    """Peak GPU memory to train `shape` with `method` (full, lora or qlora) on one GPU.

    full: mixed-precision AdamW as in the ZeRO paper (Rajbhandari et al. 2020, §3.1): 16-bit
      weights (2 B/param) and gradients (2), fp32 master weights (4) and Adam m, v (8) = 16 B/param
      (in pure fp32: 4 + 4 + 8, also 16). "optimizer" includes the master copy.
    lora: frozen 16-bit base (2 B/param) + fp32 adapter (4 B/adapter param) with fp32 gradients
      (4) and AdamW states (8).
    qlora: NF4 + double-quantized decoder linears (0.516 B/param), everything else in fp32 (as
      prepare_model_for_kbit_training leaves it), the adapter as for lora (paged AdamW holds the
      same bytes, pageable to CPU).
    All: activations as in `activation_parts`, then overhead = 1 GiB CUDA context + 5% of the rest.
    `lora_dropout` defaults to the trainer's default (0.05); it only adds activations (a dropped-out
    copy of each adapted module's input), which matter without gradient checkpointing.
    """
    if method not in METHODS:
        raise PlanError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    rank, seq, batch = _bounded_int("rank", rank), _bounded_int("seq", seq), _bounded_int("batch", batch)
    if compute_dtype not in COMPUTE_BYTES:
        raise PlanError(f"compute dtype {compute_dtype!r}: expected one of {', '.join(COMPUTE_BYTES)}")
    if not 0 <= lora_dropout < 1:
        raise PlanError(f"lora dropout {lora_dropout!r}: expected a number in [0, 1)")
    opt = _normalise_optimizer(optimizer)
    element = COMPUTE_BYTES[compute_dtype]
    state = OPTIMIZER_STATE_BYTES[opt]
    notes: list[str] = []

    if method == "full":
        trainable = shape.params
        weights, adapter, gradients = shape.params * element, 0, shape.params * element
        master = 4 if element < 4 else 0
        optimizer_bytes = shape.params * (master + state)
        modules: tuple[str, ...] = ()
        layer_weights = shape.layer_linear_params * element
        notes.append(f"full: {element + element + master + state} bytes/param ({element} weights, {element} gradients"
                     + (", 4 fp32 master" if master else "") + f", {state} {opt} states)")
    else:
        modules = _target_modules(target)
        trainable = adapter_params(shape, rank, modules)
        adapter, gradients, optimizer_bytes = trainable * 4, trainable * 4, trainable * state
        if method == "lora":
            weights = shape.params * element
            layer_weights = shape.layer_linear_params * element
        else:
            quantized = shape.quantizable_params
            weights = int(quantized * NF4_BYTES_PER_PARAM) + (shape.params - quantized) * 4
            layer_weights = int(shape.layer_linear_params * NF4_BYTES_PER_PARAM)
            notes.append(f"qlora: {human_count(quantized)} params in NF4 ({NF4_BYTES_PER_PARAM:.3f} B each), "
                         f"{human_count(shape.params - quantized)} (embeddings, lm_head, norms) in fp32")
        notes.append(f"{method}: rank {rank} on {', '.join(modules)}: {human_count(trainable)} trainable params "
                     f"({100 * trainable / shape.params:.2f}%)")

    tokens = seq * batch
    lora = (modules, rank if modules else 0, lora_dropout if modules else 0.0)
    parts = activation_parts(shape, tokens, element, gradient_checkpointing, *lora)
    activations = parts.pop("peak")
    if not gradient_checkpointing:
        saved = activations - activation_parts(shape, tokens, element, True, *lora)["peak"]
        notes.append(f"gradient checkpointing off: every layer's activations are held; turning it on saves {gib(saved)}")
    if parts["loss_head"] >= parts["layer"] and parts["loss_head"] > 0.1 * activations and parts["loss_head"] > GIB:
        notes.append(f"the loss head (fp32 logits over a {shape.vocab:,}-token vocabulary) peaks at {gib(parts['loss_head'])}; "
                     "a fused linear cross-entropy (Liger, Cut Cross-Entropy) avoids most of it")
    overhead, total = _with_overhead(weights + adapter + gradients + optimizer_bytes + activations)
    return MemoryEstimate(
        method=method, weights=int(weights), adapter=int(adapter), gradients=int(gradients), optimizer=int(optimizer_bytes),
        activations=int(activations), overhead=overhead, total=total, trainable_params=int(trainable),
        activation_parts=parts, layer_weights=int(layer_weights), notes=notes,
    )


# --- recommendations ------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """How one GPU type would run the estimate: how many, how full, at what price."""

    gpu: str
    memory_gb: float
    gpus_needed: int | None  # None: no count up to MAX_GPUS works
    per_gpu_bytes: int | None
    utilisation: float | None  # per-GPU use / GPU memory
    usd_per_hour: float | None  # gpus_needed x the table's price
    fits_one: bool
    tight: bool  # uses more than TIGHT_FRACTION of memory
    note: str = ""


def _instance_size(n: int) -> int:
    """Clouds rent 1, 2, 4 or 8 GPUs per machine; past 8 we count whole 8-GPU machines."""
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def recommend(estimate: MemoryEstimate, gpus: Iterable[GpuType], headroom: float = 0.9) -> list[Recommendation]:
    """For each GPU type, the fewest GPUs whose memory x `headroom` holds the estimate; cheapest first.

    One GPU when the whole estimate fits. Otherwise the states are sharded (ZeRO-3 / FSDP) over n
    GPUs (`MemoryEstimate.per_gpu_bytes`). For full fine-tuning that is the normal recipe; for LoRA
    and QLoRA, plain data parallelism keeps a whole copy of the base on every GPU, so a sharded
    answer is flagged: it needs FSDP (e.g. FSDP + QLoRA) or DeepSpeed ZeRO-3 rather than DDP.
    """
    if not 0 < headroom <= 1:
        raise PlanError(f"headroom {headroom!r}: expected a fraction in (0, 1]")
    out = []
    for gpu in gpus:
        usable = gpu.memory_bytes * headroom
        if estimate.total <= usable:
            n, per, note = 1, estimate.total, ""
        else:
            n, per, note = _sharded(estimate, usable)
        tight = per is not None and per > TIGHT_FRACTION * gpu.memory_bytes
        if tight and n == 1:
            note = note or f"tight: {100 * per / gpu.memory_bytes:.0f}% of memory; lower --seq or --batch for margin"
        out.append(Recommendation(
            gpu=gpu.name, memory_gb=gpu.memory_gb, gpus_needed=n, per_gpu_bytes=per,
            utilisation=None if per is None else round(per / gpu.memory_bytes, 4),
            usd_per_hour=None if n is None else round(n * gpu.usd_per_hour, 2),
            fits_one=n == 1, tight=tight, note=note,
        ))
    # Cheapest first; at equal cost, fewer GPUs, then more headroom.
    return sorted(out, key=lambda r: (r.usd_per_hour is None, r.usd_per_hour or 0, r.gpus_needed or 0, r.utilisation or 0))


def _sharded(estimate: MemoryEstimate, usable: float) -> tuple[int | None, int | None, str]:
    floor = estimate.per_gpu_bytes(10**9)  # what sharding cannot remove: activations, gathered layers, overhead
    if floor > usable:
        return None, None, f"even fully sharded, activations and overhead need {gib(floor)} per GPU: lower --seq or --batch"
    for n in sorted({_instance_size(k) for k in range(2, MAX_GPUS + 1)}):
        per = estimate.per_gpu_bytes(n)
        if per <= usable:
            how = "ZeRO-3/FSDP sharding" if estimate.method == "full" else "FSDP/ZeRO-3 over the frozen base (DDP won't fit)"
            return n, per, f"{how}{', multi-node' if n > 8 else ''}"
    return None, None, f"needs more than {MAX_GPUS} GPUs"


# --- the plan -------------------------------------------------------------------------------------


def plan(
    model: ModelShape | str | int, rank: int = 16, seq: int = 2048, batch: int = 1, methods: Iterable[str] = METHODS,
    gpus: list[GpuType] | None = None, headroom: float = 0.9, **options: Any,
) -> dict:
    """Estimates and GPU recommendations for each method, side by side, as a JSON-ready dict.

    `model` is a shape (from `shape_from_config` for a registered base) or a count ('8B', 8e9).
    `options` go to `estimate` (target, gradient_checkpointing, optimizer, compute_dtype, lora_dropout).
    """
    requested = None
    if isinstance(model, ModelShape):
        shape = model
        if not PARAMS_RANGE[0] <= shape.params <= PARAMS_RANGE[1]:
            raise PlanError(f"model {shape.name or 'shape'!r}: {shape.params:,} parameters, outside the planner's range "
                            f"({human_count(PARAMS_RANGE[0])} to {human_count(PARAMS_RANGE[1])})")
    else:
        requested = parse_params(model)
        shape = shape_for_params(requested)
    gpus = load_gpu_table() if gpus is None else gpus
    methods = list(methods)
    result: dict[str, Any] = {
        "model": {**asdict(shape), "requested_params": requested},
        "settings": {"rank": rank, "seq": seq, "batch": batch, "headroom": headroom, **options},
        "methods": {},
    }
    for method in methods:
        est = estimate(shape, method, rank=rank, seq=seq, batch=batch, **options)
        result["methods"][method] = {
            "memory": est.breakdown(),
            "memory_gib": {key: round(value / GIB, 2) for key, value in est.breakdown().items()},
            "activation_parts": est.activation_parts,
            "trainable_params": est.trainable_params,
            "notes": est.notes,
            "recommendations": [asdict(r) for r in recommend(est, gpus, headroom)],
        }
    return result
