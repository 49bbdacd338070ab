"""`python -m load_tests prepare`: small real adapters for load tests, pushed to a registry.

Each is a PEFT LoRA (q_proj and v_proj, rank 8) on the base the server serves, randomly initialised
with a seed of its own (A and B both non-zero, so every adapter changes the output). The same seed
makes the same bytes, and the registry returns the existing version for identical content, so
running it twice adds nothing. `canary` gets two versions (for the canary preset's rollout).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from registry import Registry
from registry.errors import InvalidInput
from registry.names import validate_name

logger = logging.getLogger(__name__)

CANARY = "canary"


@dataclass
class Prepared:
    ref: str
    created: bool


def adapter_names(prefix: str, count: int) -> list[str]:
    width = max(2, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


def prepare_adapters(registry: Registry, base: str, count: int, prefix: str = "load", rank: int = 8, seed: int = 0,
                     canary: bool = True, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> list[Prepared]:
    """Create and push `count` adapters named PREFIX-00, PREFIX-01, ... (and a two-version `canary`) of rank `rank`
    on the modules `targets`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if count < 0:
        raise InvalidInput(f"--count {count}: must be 0 or more")
    if rank < 1:
        raise InvalidInput(f"--rank {rank}: must be at least 1")
    names = adapter_names(prefix, count) if count else []
    for name in names:
        validate_name(name)
    jobs = [(name, seed + i) for i, name in enumerate(names)]
    if canary:
        jobs += [(CANARY, seed + 10_000), (CANARY, seed + 10_001)]
    base_record = registry.resolve_base(base)
    logger.info(f"loading {base_record.name} to shape {len(jobs)} adapters ...")
    model = AutoModelForCausalLM.from_pretrained(base_record.path, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), task_type="CAUSAL_LM",
                        init_lora_weights=False)
    out = []
    with tempfile.TemporaryDirectory(prefix="loradock-prepare-") as tmp:
        for i, (name, adapter_seed) in enumerate(jobs):
            torch.manual_seed(adapter_seed)
            peft_model = get_peft_model(model, config)
            directory = Path(tmp) / f"{name}-{i}"
            peft_model.save_pretrained(directory)
            model = peft_model.unload()  # the base without LoRA layers, for the next one
            result = registry.push(directory, name, base=base_record.name, message=f"load test adapter (seed {adapter_seed})")
            out.append(Prepared(result.version.ref, result.created))
            logger.info(f"{result.version.ref}{'' if result.created else ' (already there)'}")
    return out
