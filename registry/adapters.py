"""What a PEFT adapter directory is, and whether it fits a base model.

Everything here reads files and headers only (no torch), so a bad adapter is refused
before a single byte is written to the store.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .adapter_config import check_config, is_finite_number, load_config
from .blobs import special_file_kind
from .errors import BaseMismatch, InvalidAdapter
from .weights import TensorInfo, check_weights_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
PROMPT_LEARNING_TYPES = {"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT"}
PEFT_PREFIX = "base_model.model."  # what PEFT puts before a base module's name in its weight keys


@dataclass
class AdapterInfo:
    """The facts the registry records about an adapter directory."""

    directory: Path
    config: dict
    files: list[str]
    tensors: dict[str, TensorInfo]
    warnings: list[str] = field(default_factory=list)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type"))

    @property
    def task_type(self) -> str | None:
        return self.config.get("task_type")

    @property
    def rank(self) -> int | None:
        r = self.config.get("r")
        return r if isinstance(r, int) and not isinstance(r, bool) and 0 < r < 2**63 else None

    @property
    def alpha(self) -> float | None:
        a = self.config.get("lora_alpha")
        return float(a) if is_finite_number(a) else None

    @property
    def target_modules(self) -> list[str] | None:
        """Target module names as leaf names (`q_proj`), deduplicated; the full list stays in the config."""
        t = self.config.get("target_modules")
        if t is None:
            return None
        if isinstance(t, str):
            return [t]
        return sorted({m.rsplit(".", 1)[-1] for m in t})

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None


def inspect_adapter_dir(directory: Path | str) -> AdapterInfo:
    """Check that `directory` is a storable PEFT adapter; raise `InvalidAdapter` saying why not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidAdapter(f"{directory}: not a directory (expected a PEFT adapter directory)")
    entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    for p in entries:
        _check_entry(directory, p)
    info = inspect_adapter_files(directory, {p.name: p for p in entries if p.is_file()})
    info.warnings += [f"skipped subdirectory {p.name}/ (only the adapter's top-level files are stored)"
                      for p in entries if p.is_dir()]
    return info


def inspect_adapter_files(directory: Path, files: dict[str, Path]) -> AdapterInfo:
    """Check the files of an adapter, {name in the adapter: where its bytes are}; raise `InvalidAdapter` saying why not.

    A pushed directory's files are where they lie; a remote push's are blobs already in the store, checked
    where they are stored (`directory` then only labels the messages).
    """
    pickles = [name for name in files if Path(name).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise InvalidAdapter(
            f"{directory}: refusing pickled file(s) {', '.join(pickles)}: only safetensors weights are accepted "
            f"(save with `model.save_pretrained(dir, safe_serialization=True)` and remove the pickles)"
        )
    if CONFIG_FILE not in files:
        raise InvalidAdapter(f"{directory}: not a PEFT adapter directory (no {CONFIG_FILE})")
    config = load_config(files[CONFIG_FILE])
    if WEIGHTS_FILE not in files:
        raise InvalidAdapter(f"{directory}: no {WEIGHTS_FILE} (a PEFT adapter directory needs its weights in safetensors)")
    tensors = check_weights_file(files[WEIGHTS_FILE], bounded=lora_factor_tensors)
    if not tensors:
        raise InvalidAdapter(f"{files[WEIGHTS_FILE]}: holds no tensors")
    check_config(files[CONFIG_FILE], config, _lora_ranks(tensors))
    return AdapterInfo(directory, config, sorted(files), tensors, [])


def _check_entry(directory: Path, path: Path) -> None:
    """A top-level entry of a pushed directory: a regular file or a subdirectory, and a symlink only if it stays inside.

    Nothing is opened here: a FIFO or a device would block or never end, so the type comes from stat alone.
    """
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(directory.resolve()):
            raise InvalidAdapter(f"{path} is a symlink to {target}, outside the adapter directory; symlinks that leave "
                                 f"the directory are refused: copy the file in (cp -L) or remove the link")
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidAdapter(f"{path}: cannot be read ({exc.strerror}); fix or remove it") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InvalidAdapter(f"{path} is {special_file_kind(mode)}; only regular files are stored: remove it from the directory")
    if stat.S_ISREG(mode) and not os.access(path, os.R_OK):
        raise InvalidAdapter(f"{path} is not readable (permission denied); fix its permissions or remove it")


def lora_factor_tensors(name: str) -> bool:
    """The LoRA A/B factors, whose entries are bounded (see `registry.weights.MAX_LORA_FACTOR`)."""
    return any(part in _LORA_FACTORS for part in name.split("."))


_LORA_FACTORS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"}


def _lora_ranks(tensors: dict[str, TensorInfo]) -> dict[str, int]:
    """The rank of each LoRA module, from its A factor: {module path without the PEFT prefix: rank}."""
    ranks = {}
    for key, tensor in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for suffix in (".lora_A.weight", ".lora_embedding_A"):
            if name.endswith(suffix) and tensor.shape:
                ranks[name[: -len(suffix)]] = tensor.shape[0]
    return ranks


def check_fits_base(info: AdapterInfo, base_name: str, base_tensors: dict[str, list[int]], base_config: dict) -> None:
    """Raise `BaseMismatch` if any adapter tensor names no module of the base or has the wrong shape."""
    if info.peft_type in PROMPT_LEARNING_TYPES:
        _check_prompt_learning(info, base_name, base_config)
        return
    fan_in_fan_out = bool(info.config.get("fan_in_fan_out"))
    rank_by_module: dict[str, int] = {}
    for key, tensor in info.tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if name in base_tensors:  # modules_to_save: a full replacement of a base tensor
            _expect(tensor.shape == tuple(base_tensors[name]), info, key, tensor, base_name, f"shape {base_tensors[name]}")
            continue
        module, base_shape = _find_module(name, base_tensors)
        if module is None:
            raise BaseMismatch(f"adapter tensor {key!r} names no module of base {base_name!r}: the adapter was made for another model")
        out_dim, in_dim = (base_shape[0], base_shape[-1]) if len(base_shape) >= 2 else (base_shape[0], base_shape[0])
        if fan_in_fan_out and len(base_shape) == 2:
            out_dim, in_dim = in_dim, out_dim
        suffix = name[len(module) + 1:]
        shape = tensor.shape
        if suffix == "lora_A.weight":
            _expect(len(shape) >= 2 and shape[1] == in_dim, info, key, tensor, base_name, f"[r, {in_dim}]")
            rank_by_module.setdefault(module, shape[0])
        elif suffix == "lora_B.weight":
            _expect(len(shape) >= 2 and shape[0] == out_dim, info, key, tensor, base_name, f"[{out_dim}, r]")
            if module in rank_by_module and shape[1] != rank_by_module[module]:
                raise InvalidAdapter(f"adapter tensor {key!r}: rank {shape[1]} differs from its lora_A rank {rank_by_module[module]}")
        elif suffix == "lora_embedding_A":
            _expect(len(shape) == 2 and shape[1] == base_shape[0], info, key, tensor, base_name, f"[r, {base_shape[0]}]")
        elif suffix == "lora_embedding_B":
            _expect(len(shape) == 2 and shape[0] == base_shape[-1], info, key, tensor, base_name, f"[{base_shape[-1]}, r]")
        elif suffix in ("lora_magnitude_vector", "lora_magnitude_vector.weight"):
            _expect(_numel(shape) == out_dim, info, key, tensor, base_name, f"{out_dim} elements")
        elif suffix == "ia3_l":
            _expect(_numel(shape) in (out_dim, in_dim), info, key, tensor, base_name, f"{out_dim} or {in_dim} elements")
        elif suffix in ("base_layer.weight", "weight"):
            _expect(list(shape) == list(base_shape), info, key, tensor, base_name, f"shape {list(base_shape)}")
        # Other PEFT types (LoHa, LoKr, OFT, VeRA, ...) are stored alike; their module path was checked above.


def _find_module(name: str, base_tensors: dict[str, list[int]]) -> tuple[str | None, list[int]]:
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:end])
        shape = base_tensors.get(module + ".weight")
        if shape is not None:
            return module, shape
    return None, []


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _expect(ok: bool, info: AdapterInfo, key: str, tensor: TensorInfo, base_name: str, wanted: str) -> None:
    if not ok:
        raise BaseMismatch(
            f"adapter tensor {key!r} has shape {list(tensor.shape)} but base {base_name!r} needs {wanted}: "
            f"the adapter was made for another model"
        )


def _check_prompt_learning(info: AdapterInfo, base_name: str, base_config: dict) -> None:
    layers = base_config.get("num_hidden_layers")
    hidden = base_config.get("hidden_size")
    heads = base_config.get("num_attention_heads") or 1
    kv_heads = base_config.get("num_key_value_heads") or heads
    head_dim = base_config.get("head_dim") or (hidden // heads if hidden else None)
    cfg_layers = info.config.get("num_layers")
    if layers and cfg_layers and cfg_layers != layers:
        raise BaseMismatch(f"adapter config num_layers={cfg_layers} but base {base_name!r} has {layers} layers")
    token_dim = info.config.get("token_dim")
    allowed = {d for d in (hidden, kv_heads * head_dim if head_dim else None) if d}
    if token_dim and allowed and token_dim not in allowed:
        raise BaseMismatch(f"adapter config token_dim={token_dim} but base {base_name!r} needs one of {sorted(allowed)}")
