"""The one reader of a PEFT LoRA adapter's tensors, and the one type that holds them.

`read_lora(adapter_dir)` checks the directory as the registry checks a push (`registry.adapters`: the config,
the safetensors header, every value), refuses what is not plain LoRA (`plain_lora.why_not_plain_lora`),
and returns `LoraTensors`: per module A, B and the scaling PEFT gives it (rank_pattern, alpha_pattern and
use_rslora applied). The server's slots, its per-request merges and `reg export` all read adapters here.
Imports torch (safetensors) only when called.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapter_config import is_plain_pattern, matching_pattern_key
from ..adapters import PEFT_PREFIX, WEIGHTS_FILE, inspect_adapter_dir
from .errors import AdapterIncompatible, MergeError
from .plain_lora import why_not_plain_lora

if TYPE_CHECKING:
    import torch

_KEY = re.compile(rf"^{re.escape(PEFT_PREFIX)}(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")
# Why an adapter is read decides how a refusal reads: one refused for a slot does not fit the server's base
# (FAILED_PRECONDITION); one refused for a merge makes the merge request invalid (INVALID_ARGUMENT, exit 2).
PURPOSES = {"serve": (AdapterIncompatible, "served"), "merge": (MergeError, "merged")}


@dataclass
class LoraTensors:
    """One plain LoRA adapter as tensors, keyed by the base model's module name (`model.layers.0.self_attn.q_proj`).

    Module m adds `lora_B[m] @ lora_A[m] * scaling[m]` to its weight: PEFT's own layout (its LoRA layers keep
    `lora_A`, `lora_B` and `scaling` per adapter), so merges read like PEFT's code.
    """

    lora_A: dict[str, torch.Tensor]
    """module -> A [r, in_features] (float16/bfloat16 upcast to float32, as PEFT loads them)."""
    lora_B: dict[str, torch.Tensor]
    """module -> B [out_features, r]."""
    scaling: dict[str, float]
    """module -> lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), rank_pattern and alpha_pattern applied."""
    config: dict = field(default_factory=dict)
    """adapter_config.json."""

    @property
    def modules(self) -> list[str]:
        return list(self.lora_A)

    def module_rank(self, module: str) -> int:
        return int(self.lora_A[module].shape[0])

    @property
    def rank(self) -> int:
        """The largest rank over the modules (rank_pattern may vary it): what a slot must hold."""
        return max(self.module_rank(m) for m in self.modules)

    @property
    def nbytes(self) -> int:
        """Bytes of every A and B as an adapter slot holds them (float32)."""
        return sum((self.lora_A[m].numel() + self.lora_B[m].numel()) * 4 for m in self.modules)

    def delta(self, module: str) -> torch.Tensor:
        """The weight update for `module`, computed as PEFT's `get_delta_weight` does for a Linear layer."""
        return (self.lora_B[module] @ self.lora_A[module]) * self.scaling[module]

    def slot_pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B * scaling) in float32: what an adapter slot holds, the scaling folded into B once."""
        return self.lora_A[module].float().contiguous(), (self.lora_B[module].float() * self.scaling[module]).contiguous()

    def declared_rank(self) -> int:
        """The rank PEFT allocates for this adapter: `r`, or the largest `rank_pattern` value if larger."""
        r = self.config.get("r")
        if not isinstance(r, int):
            return self.rank
        pattern = self.config.get("rank_pattern") or {}
        return max(r, *pattern.values()) if pattern else r


def read_lora(adapter_dir: str | Path, purpose: str = "serve") -> LoraTensors:
    """Read a PEFT LoRA adapter directory as `LoraTensors`.

    Raises `InvalidAdapter` for a directory that is not a storable PEFT adapter, and for one that is not plain
    LoRA on Linear layers (another PEFT type, DoRA, biases, modules_to_save, embeddings...) the error of
    `purpose`: `AdapterIncompatible` to serve it, `MergeError` to merge it.
    """
    import torch
    from safetensors.torch import load_file

    error, action = PURPOSES[purpose]
    half = (torch.float16, torch.bfloat16)
    adapter_dir = Path(adapter_dir)
    config = inspect_adapter_dir(adapter_dir).config
    problem = why_not_plain_lora(config, action)
    if problem:
        raise error(f"{adapter_dir}: {problem}")
    for name in ("rank_pattern", "alpha_pattern"):
        regex = next((key for key in config.get(name) or {} if not is_plain_pattern(key)), None)
        if regex is not None:
            raise error(f"{adapter_dir}: {name} key {regex[:80]!r} is a regular expression, which loradock does not "
                        f"run; name the modules with plain characters (A-Z a-z 0-9 _ .) so it can be {action}")
    tensors = load_file(adapter_dir / WEIGHTS_FILE)  # its header and values were checked just above
    foreign = [key for key in tensors if not _KEY.match(key)]
    if foreign:
        (_, reason), key = min((_why_not_lora(key), key) for key in foreign)
        raise error(f"{adapter_dir}: weight {key!r} {reason}; only plain LoRA on Linear layers can be {action}")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if tensor.dim() != 2:
            raise error(f"{adapter_dir}: weight {key!r} has shape {list(tensor.shape)}; only Linear layers "
                        f"(2-D LoRA weights) can be {action}")
        pairs.setdefault(match["module"], {})[match["side"]] = tensor.float() if tensor.dtype in half else tensor
    if not pairs:
        raise error(f"{adapter_dir}: {WEIGHTS_FILE} holds no LoRA weights")

    lora_A, lora_B, scaling = {}, {}, {}
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise error(f"{adapter_dir}: module {module!r} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        r = pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
        if a.shape[0] != r or b.shape[1] != r:
            raise error(f"{adapter_dir}: module {module!r} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, "
                        f"which are not [r, in] and [out, r] with the configured r={r}")
        alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
        lora_A[module], lora_B[module], scaling[module] = a, b, lora_scaling(alpha, r, bool(config.get("use_rslora")))
    return LoraTensors(lora_A, lora_B, scaling, config)


def pattern_value(pattern: dict | None, module: str, default):
    """The rank_pattern/alpha_pattern value PEFT gives `module`, `default` (r, lora_alpha) when no key matches.

    `read_lora` has refused non-plain keys before it calls this."""
    key = matching_pattern_key(pattern or {}, module)
    return default if key is None else pattern[key]


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """PEFT's LoRA scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lora_key(module: str, side: str) -> str:
    """The safetensors key PEFT saves module's A or B under."""
    return f"{PEFT_PREFIX}{module}.lora_{side}.weight"


def _why_not_lora(key: str) -> tuple[int, str]:
    """Why a weight is not plain LoRA, most telling reason first when sorted."""
    if "lora_embedding_" in key:
        return 0, "is an embedding LoRA matrix (LoRA on embedding layers is not supported)"
    if "lora_magnitude_vector" in key:
        return 1, "is a DoRA magnitude vector"
    if ".base_layer." in key or "modules_to_save" in key:
        return 2, "is a full base weight the adapter replaces (saved embedding layers or modules_to_save)"
    return 3, "is not a LoRA A/B matrix of a Linear layer"

