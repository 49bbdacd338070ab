"""What `reg plan` reasons about: parameter counts, Llama-like model shapes, and the GPU price table.

The inputs of the planner (trainer/plan.py) and their checks: `parse_params("8B")`, `shape_for_params`,
`shape_from_config` (a registered base's config.json) and `load_gpu_table` (an editable YAML of GPU types
and prices). `PlanError` is what every bad planner input raises, naming the value. No torch here.

Units: bytes everywhere; people see GiB (2^30 bytes), the unit nvidia-smi and torch report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from registry.errors import InvalidInput

GIB = 2**30

# What the planner answers for: past these the rules of thumb mean nothing (and 1e30 parameters
# printed 30-digit GiB). Ten times the largest published dense model.
PARAMS_RANGE = (10**6, 10**13)
GPU_MEMORY_GB_MAX = 4096
USD_PER_HOUR_MAX = 10_000


class PlanError(InvalidInput, ValueError):
    """A planner input (parameter count, method, GPU table entry...) that is not valid; the message names it."""


def gib(n: float) -> str:
    """Bytes as people read them: '23.7 GiB'."""
    return f"{n / GIB:.1f} GiB"


def human_count(n: float) -> str:
    """A count as people say it: 8.03B, 135M, 512."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


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
        raise PlanError(f"--params {text!r}: expected between {human_count(low)} and {human_count(high)} parameters")
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
    return _shape(f"~{human_count(n)} (interpolated, {base.name} vocabulary)", hidden, layers, base.vocab, intermediate,
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
