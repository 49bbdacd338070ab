"""adapter_config.json, checked at push time against the tensors it describes (no torch, no PEFT import).

A config is read only when it is small (`MAX_CONFIG_BYTES`: it is stored and sent whole in one gRPC
message) and shallow (`MAX_CONFIG_DEPTH`); it must name a PEFT type PEFT knows, and for LoRA its `r`
(with `rank_pattern`) must be the rank of the tensors and its `lora_alpha` (with `alpha_pattern`) a finite
positive number, because a version that would serve garbage (a NaN alpha serves empty text) is refused here,
not found out at serve time.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import InvalidAdapter, TooLarge, shown

MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 32  # PEFT's own configs nest 3 deep (rank_pattern, loftq_config, ...)

# peft.utils.peft_types.PeftType in peft 0.21 (the registry imports no PEFT: it would pull in torch).
PEFT_TYPES = frozenset(
    "PROMPT_TUNING MULTITASK_PROMPT_TUNING P_TUNING PREFIX_TUNING LORA ADALORA ADAMSS BOFT ADAPTION_PROMPT IA3 BEFT LILY "
    "LOHA LOKR OFT POLY LN_TUNING VERA FROD PVERA FOURIERFT GLORA XLORA HRA VBLORA UNILORA CPT MISS RANDLORA ROAD "
    "TRAINABLE_TOKENS HIRA SHIRA C3A WAVEFT OSF DELORA GRALORA CARTRIDGE TINYLORA PSOFT PEANUT SHADOW SUPERTUNING DEFT".split()
)
# A rank_pattern key made of these characters only is matched as PEFT matches it; any other regex is not run
# (a pushed pattern must not be able to make the registry backtrack for minutes).
_PLAIN_PATTERN = re.compile(r"[A-Za-z0-9_.]{1,256}")


def load_config(path: Path) -> dict:
    """Read and parse an adapter_config.json, refusing one that is too big, too deep or not a PEFT config."""
    if not path.is_file():
        raise InvalidAdapter(f"{path.parent}: not a PEFT adapter directory (no {path.name})")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise TooLarge(f"{path} is {size:,} bytes; an adapter config may be at most {MAX_CONFIG_BYTES:,} bytes "
                       f"(it is stored and sent whole): remove what PEFT does not need")
    try:
        config = json.loads(path.read_bytes())
    except ValueError as exc:  # also UnicodeDecodeError, and an integer of more than 4,300 digits
        raise InvalidAdapter(f"{path}: not valid JSON ({shown(str(exc), 160)})") from None
    except RecursionError:
        config = None
    if config is None or _depth(config) > MAX_CONFIG_DEPTH:
        raise InvalidAdapter(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep; a PEFT config is a flat "
                             f"object with a few small nested ones")
    if not isinstance(config, dict) or not config.get("peft_type"):
        raise InvalidAdapter(f"{path}: not a PEFT adapter config (no peft_type)")
    stored = len(json.dumps(config, sort_keys=True))
    if stored > MAX_CONFIG_BYTES:
        raise TooLarge(f"{path} takes {stored:,} bytes as stored (escaped JSON); at most {MAX_CONFIG_BYTES:,}")
    return config


def _depth(value: object) -> int:
    """How deeply `value` nests (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level + 1)
        if level + 1 > MAX_CONFIG_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_config(path: Path, config: dict, lora_ranks: dict[str, int]) -> None:
    """The config's PEFT type, and for LoRA its rank and alpha, against the tensors' ranks ({module: rank})."""
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPES:
        raise InvalidAdapter(f"{path}: peft_type {shown(peft_type)} is not a PEFT type (e.g. LORA, IA3, PREFIX_TUNING)")
    if peft_type != "LORA":
        return
    r = _positive_int(path, "r", config.get("r", 8))
    rank_pattern = _mapping(path, "rank_pattern", config.get("rank_pattern"))
    for key, value in rank_pattern.items():
        _positive_int(path, f"rank_pattern[{shown(key, 60)}]", value)
    _positive_finite(path, "lora_alpha", config.get("lora_alpha", 8))
    for key, value in _mapping(path, "alpha_pattern", config.get("alpha_pattern")).items():
        _positive_finite(path, f"alpha_pattern[{shown(key, 60)}]", value)
    for module, rank in lora_ranks.items():
        expected = _rank_for(module, r, rank_pattern)
        if rank not in expected:
            wanted = f"r={r}" if len(expected) == 1 else f"r={r} or a rank_pattern value ({sorted(expected - {r})})"
            raise InvalidAdapter(f"{path}: module {shown(module, 120)} has rank {rank} in the weights, but the config says "
                                 f"{wanted}; fix `r`/`rank_pattern` to match the tensors")


def _rank_for(module: str, r: int, rank_pattern: dict) -> set[int]:
    """The ranks PEFT would give `module`: the matching rank_pattern key's, else r (any value if a key is not plain)."""
    if not all(is_plain_pattern(key) for key in rank_pattern):
        return {r, *rank_pattern.values()}
    key = matching_pattern_key(rank_pattern, module)
    return {r} if key is None else {rank_pattern[key]}


def is_plain_pattern(key: str) -> bool:
    """A rank_pattern/alpha_pattern key of plain characters: matching it cannot backtrack for long."""
    return bool(_PLAIN_PATTERN.fullmatch(key))


def matching_pattern_key(pattern: dict, module: str) -> str | None:
    """PEFT's get_pattern_key: the first key that matches a dotted suffix of `module` as a regex, or None.

    The one pattern lookup (the push check here, the scaling of served and merged adapters in
    registry.modeling.lora). Run it on plain keys only (`is_plain_pattern`): any other key is a regex an
    adapter's author chose, and it must not run inside the registry or the server.
    """
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):  # peft.utils.other.get_pattern_key
            return key
    return None


def _positive_int(path: Path, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidAdapter(f"{path}: {key}={shown(value)}; it must be a whole number of at least 1")
    return value


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that is finite as a float (an int of 400 digits is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _positive_finite(path: Path, key: str, value: object) -> float:
    if not is_finite_number(value) or value <= 0:
        raise InvalidAdapter(f"{path}: {key}={shown(value)}; it must be a finite number greater than 0")
    return float(value)


def _mapping(path: Path, key: str, value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidAdapter(f"{path}: {key} must be an object mapping module names to values, not {shown(value, 60)}")
    return value
