"""Memory and cost planner behind `reg plan`: will full fine-tuning, LoRA or QLoRA of a model fit, and on what?

`plan("8B", rank=16, seq=4096, batch=2)` estimates the training memory of each method from a
Llama-like model shape, recommends GPU types from an editable price table, and returns a
JSON-ready dict; `format_plan_table` and `format_gpu_table` render it. No torch here: the
numbers are rules of thumb, each formula below says where it comes from.

Units: bytes everywhere; people see GiB (2^30 bytes), the unit nvidia-smi and torch report.

What the model assumes (HF Trainer + PEFT as loradock's trainer runs them):
  * bf16 compute, AdamW, gradient checkpointing on, micro-batch `batch` of `seq` tokens;
  * LoRA adapters on all linear layers of every decoder layer, kept in fp32 (PEFT's
    `autocast_adapter_dtype`), with fp32 gradients and AdamW states: 16 bytes per adapter param;
  * QLoRA as `registry.loading` loads it: NF4 with double quantization for the decoder's linear
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

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from registry.errors import InvalidInput

GIB = 2**30
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

# What the planner answers for: past these the rules of thumb mean nothing (and 1e30 parameters
# printed 30-digit GiB). Ten times the largest published dense model; LoRA ranks past 4096 exceed
# the hidden size of every model here; a million tokens per sequence; a per-GPU micro-batch.
PARAMS_RANGE = (10**6, 10**13)
INPUT_RANGES = {"rank": (1, 4096), "seq": (1, 1_048_576), "batch": (1, 4096)}
GPU_MEMORY_GB_MAX = 4096
USD_PER_HOUR_MAX = 10_000


class PlanError(InvalidInput, ValueError):
    """A planner input (parameter count, method, GPU table entry...) that is not valid; the message names it."""


# --- parameter counts and model shapes ------------------------------------------------------------

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_params(text: str | int | float) -> int:
    """'8B', '135M', '1.5b', '7e9', '7000000000' -> a parameter count; PlanError names a bad value."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*", str(text), re.IGNORECASE)
        if not match:
            raise PlanError(f"--params {text!r}: expected a count like 8B, 135M, 1.5B or 7e9")
        value = float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2).lower()]
    low, high = PARAMS_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        raise PlanError(f"--params {text!r}: expected between {_human_count(low)} and {_human_count(high)} parameters")
    return int(round(value))


@dataclass
class ModelShape:
    """The dimensions of a Llama-like decoder (SwiGLU MLP, RMSNorm, grouped-query attention)."""

    params: int
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int = 0  # 0: hidden // heads
    tie_embeddings: bool = False
    name: str = ""

    def __post_init__(self):
        if not self.head_dim:
            self.head_dim = self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim), "o_proj": (self.q_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def quantizable_params(self) -> int:
        """The decoder layers' linear weights: what bitsandbytes quantizes (not embeddings, lm_head, norms)."""
        return min(self.params, self.layers * self.layer_linear_params)

    def count_params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.layers * self.layer_linear_params + self.embedding_params + norms


def _shape(name, hidden, layers, vocab, intermediate, heads, kv_heads, tied=False, head_dim=0) -> ModelShape:
    shape = ModelShape(0, hidden, layers, vocab, intermediate, heads, kv_heads, head_dim, tied, name)
    shape.params = shape.count_params()
    return shape


# Published configs (each model's config.json), smallest first; shape_for_params interpolates between them.
KNOWN_SHAPES = [
    _shape("SmolLM2-135M", 576, 30, 49152, 1536, 9, 3, tied=True),
    _shape("SmolLM2-360M", 960, 32, 49152, 2560, 15, 5, tied=True),
    _shape("SmolLM2-1.7B", 2048, 24, 49152, 8192, 32, 32, tied=True),
    _shape("Llama-3.2-3B", 3072, 28, 128256, 8192, 24, 8, tied=True),
    _shape("Llama-2-7B", 4096, 32, 32000, 11008, 32, 32),
    _shape("Llama-3-8B", 4096, 32, 128256, 14336, 32, 8),
    _shape("Llama-2-13B", 5120, 40, 32000, 13824, 40, 40),
    _shape("Llama-3-70B", 8192, 80, 128256, 28672, 64, 8),
    _shape("Llama-3.1-405B", 16384, 126, 128256, 53248, 128, 8),
]
SNAP_TOLERANCE = 0.10  # a count within 10% of a known model's is taken to mean that model


def shape_for_params(n: int) -> ModelShape:
    """A Llama-like shape with about `n` parameters.

    Within 10% of a known model's count, that model's shape (so 7B means Llama-2-7B and 8B
    Llama-3-8B). Otherwise hidden size and depth are interpolated (log-linearly in the count)
    between the two known models around `n` (extrapolated past the ends), vocabulary, head size and
    grouping are the nearer model's, and the MLP width is solved so the total comes to about `n`.
    """
    nearest = min(KNOWN_SHAPES, key=lambda s: abs(math.log(n / s.params)))
    if abs(n / nearest.params - 1) <= SNAP_TOLERANCE:
        return replace(nearest)  # a copy: callers may adjust it
    upper = next((i for i, s in enumerate(KNOWN_SHAPES) if s.params > n), len(KNOWN_SHAPES) - 1)
    lo, hi = KNOWN_SHAPES[max(upper - 1, 0)], KNOWN_SHAPES[max(upper, 1)]
    t = math.log(n / lo.params) / math.log(hi.params / lo.params)
    base = nearest
    hidden = math.exp(math.log(lo.hidden) + t * (math.log(hi.hidden) - math.log(lo.hidden)))
    group = base.heads // base.kv_heads
    unit = base.head_dim * group  # whole groups of query heads per key/value head
    hidden = max(unit, int(round(hidden / unit)) * unit)
    layers = max(1, int(round(lo.layers + t * (hi.layers - lo.layers))))
    heads = hidden // base.head_dim
    kv_heads = heads // group
    draft = _shape("", hidden, layers, base.vocab, hidden, heads, kv_heads, base.tie_embeddings, base.head_dim)
    attention = draft.layer_linear_params - 3 * hidden * hidden
    per_layer = (n - draft.embedding_params - hidden) / layers - 2 * hidden - attention
    intermediate = min(8 * hidden, max(hidden, int(round(per_layer / (3 * hidden) / 128)) * 128))
    return _shape(f"~{_human_count(n)} (interpolated, {base.name} vocabulary)", hidden, layers, base.vocab, intermediate,
                  heads, kv_heads, base.tie_embeddings, base.head_dim)


def shape_from_config(config: dict, name: str = "") -> ModelShape:
    """The shape described by an HF config.json (Llama, Mistral, Qwen2, SmolLM and similar decoders)."""
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # a vision-language model: plan its language model
    label = name or config.get("model_type", "?")
    if any(config.get(key) for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise PlanError(f"config {label!r}: mixture-of-experts models are not supported by the planner")
    required = ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads")
    missing = [key for key in required if not isinstance(config.get(key), int) or config[key] <= 0]
    if missing:
        raise PlanError(f"config {label!r}: missing or invalid {', '.join(missing)} (needed to plan)")
    heads = config["num_attention_heads"]
    return _shape(
        name or config.get("_name_or_path") or config.get("model_type", ""),
        config["hidden_size"], config["num_hidden_layers"], config["vocab_size"], config["intermediate_size"],
        heads, config.get("num_key_value_heads") or heads,
        tied=bool(config.get("tie_word_embeddings", False)),  # absent means untied, LlamaConfig's default
        head_dim=config.get("head_dim") or 0,
    )


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
            notes.append(f"qlora: {_human_count(quantized)} params in NF4 ({NF4_BYTES_PER_PARAM:.3f} B each), "
                         f"{_human_count(shape.params - quantized)} (embeddings, lm_head, norms) in fp32")
        notes.append(f"{method}: rank {rank} on {', '.join(modules)}: {_human_count(trainable)} trainable params "
                     f"({100 * trainable / shape.params:.2f}%)")

    tokens = seq * batch
    lora = (modules, rank if modules else 0, lora_dropout if modules else 0.0)
    parts = activation_parts(shape, tokens, element, gradient_checkpointing, *lora)
    activations = parts.pop("peak")
    if not gradient_checkpointing:
        saved = activations - activation_parts(shape, tokens, element, True, *lora)["peak"]
        notes.append(f"gradient checkpointing off: every layer's activations are held; turning it on saves {_gib(saved)}")
    if parts["loss_head"] >= parts["layer"] and parts["loss_head"] > 0.1 * activations and parts["loss_head"] > GIB:
        notes.append(f"the loss head (fp32 logits over a {shape.vocab:,}-token vocabulary) peaks at {_gib(parts['loss_head'])}; "
                     "a fused linear cross-entropy (Liger, Cut Cross-Entropy) avoids most of it")
    overhead, total = _with_overhead(weights + adapter + gradients + optimizer_bytes + activations)
    return MemoryEstimate(
        method=method, weights=int(weights), adapter=int(adapter), gradients=int(gradients), optimizer=int(optimizer_bytes),
        activations=int(activations), overhead=overhead, total=total, trainable_params=int(trainable),
        activation_parts=parts, layer_weights=int(layer_weights), notes=notes,
    )


# --- GPU table ------------------------------------------------------------------------------------

PACKAGED_GPU_TABLE = Path(__file__).with_name("gpus.yaml")
GPU_KEYS = ("name", "memory_gb", "usd_per_hour")


@dataclass
class GpuType:
    name: str
    memory_gb: float  # GiB a program can use, as nvidia-smi reports it
    usd_per_hour: float  # one GPU, on demand; an editable example price

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)


def gpu_table_path(path: str | Path | None = None, home: str | Path | None = None) -> Path:
    """Which table is in force: `path`, else <home>/gpus.yaml if it exists, else the packaged one."""
    if path is not None:
        return Path(path)
    if home is None:
        from registry.store import default_home

        home = default_home()
    user = Path(home) / "gpus.yaml"
    return user if user.is_file() else PACKAGED_GPU_TABLE


def load_gpu_table(path: str | Path | None = None, home: str | Path | None = None) -> list[GpuType]:
    """Read and validate a GPU table (see `gpu_table_path` for which); PlanError names a bad entry and key."""
    import yaml

    source = gpu_table_path(path, home)
    if not source.is_file():
        raise PlanError(f"GPU table {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"GPU table {source}: not valid YAML ({exc})") from None
    entries = raw.get("gpus") if isinstance(raw, dict) else raw
    if isinstance(raw, dict) and set(raw) - {"gpus"}:
        raise PlanError(f"GPU table {source}: unknown top-level key {sorted(set(raw) - {'gpus'})[0]!r} (expected gpus)")
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"GPU table {source}: expected `gpus:` with a list of {{{', '.join(GPU_KEYS)}}} entries")
    table, seen = [], set()
    for index, entry in enumerate(entries, 1):
        where = f"GPU table {source}, entry {index}"
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: expected a mapping with {', '.join(GPU_KEYS)}, got {entry!r}")
        where += f" ({entry.get('name')!r})" if "name" in entry else ""
        unknown = [key for key in entry if key not in GPU_KEYS]
        if unknown:
            raise PlanError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(GPU_KEYS)})")
        missing = [key for key in GPU_KEYS if key not in entry]
        if missing:
            raise PlanError(f"{where}: missing {missing[0]}")
        name, memory, price = entry["name"], entry["memory_gb"], entry["usd_per_hour"]
        if not isinstance(name, str) or not name.strip():
            raise PlanError(f"{where}: name must be non-empty text, got {name!r}")
        if not _is_number(memory) or not 0 < memory <= GPU_MEMORY_GB_MAX:
            raise PlanError(f"{where}: memory_gb must be a number > 0, got {memory!r} (at most {GPU_MEMORY_GB_MAX})")
        if not _is_number(price) or not 0 <= price <= USD_PER_HOUR_MAX:
            raise PlanError(f"{where}: usd_per_hour must be a number >= 0, got {price!r} (at most {USD_PER_HOUR_MAX})")
        if name in seen:
            raise PlanError(f"{where}: name {name!r} appears twice")
        seen.add(name)
        table.append(GpuType(name, float(memory), float(price)))
    return table


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        return None, None, f"even fully sharded, activations and overhead need {_gib(floor)} per GPU: lower --seq or --batch"
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
                            f"({_human_count(PARAMS_RANGE[0])} to {_human_count(PARAMS_RANGE[1])})")
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


def format_plan_table(result: dict):
    """A rich Table: memory by component for each method, and the cheapest GPU option for each."""
    from rich.table import Table

    model, settings = result["model"], result["settings"]
    title = (f"{model['name'] or 'model'}: {_human_count(model['params'])} params, rank {settings['rank']}, "
             f"seq {settings['seq']} x batch {settings['batch']}")
    methods = list(result["methods"])
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for method in methods:
        table.add_column(method.upper(), justify="right")
    for key in ("weights", "adapter", "gradients", "optimizer", "activations", "overhead", "total"):
        cells = [_gib(result["methods"][m]["memory"][key]) if result["methods"][m]["memory"][key] else "-" for m in methods]
        if key == "total":
            key, cells = f"[bold]{key}[/bold]", [f"[bold]{c}[/bold]" for c in cells]
        table.add_row(key, *cells)
    table.add_row("trainable", *[_human_count(result["methods"][m]["trainable_params"]) for m in methods])
    table.add_row("one GPU", *[_first_single(result["methods"][m]["recommendations"]) for m in methods])
    table.add_row("cheapest", *[_cheapest(result["methods"][m]["recommendations"]) for m in methods])
    return table


def format_gpu_table(result: dict, method: str):
    """A rich Table of every GPU type's recommendation for one method, cheapest first."""
    from rich.table import Table

    table = Table(title=f"{method.upper()} on each GPU type", title_justify="left")
    for name, justify in (("GPU", "left"), ("MEMORY", "right"), ("GPUS", "right"), ("PER GPU", "right"),
                          ("USE", "right"), ("USD/HOUR", "right"), ("NOTE", "left")):
        table.add_column(name, justify=justify)
    for r in result["methods"][method]["recommendations"]:
        use = "-" if r["utilisation"] is None else f"{100 * r['utilisation']:.0f}%" + (" tight" if r["tight"] else "")
        table.add_row(
            r["gpu"], f"{r['memory_gb']:g} GiB", "-" if r["gpus_needed"] is None else str(r["gpus_needed"]),
            "-" if r["per_gpu_bytes"] is None else _gib(r["per_gpu_bytes"]), use,
            "-" if r["usd_per_hour"] is None else f"${r['usd_per_hour']:.2f}", r["note"],
        )
    return table


def _first_single(recs: list[dict]) -> str:
    r = next((r for r in recs if r["fits_one"]), None)
    return "none" if r is None else f"{r['gpu']}{' (tight)' if r['tight'] else ''}"


def _cheapest(recs: list[dict]) -> str:
    r = next((r for r in recs if r["usd_per_hour"] is not None), None)
    return "none" if r is None else f"{r['gpus_needed']}x {r['gpu']} ${r['usd_per_hour']:.2f}/h"


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))
