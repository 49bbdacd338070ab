"""Loading a base model into memory: the one place that decides quantization, dtype and device.

The trainer and the server both call `load_base_model`; nothing else builds a
BitsAndBytesConfig or picks a compute dtype. Imports torch when called, never at import.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..bases import Base
from .errors import ModelLoadError

QUANTIZATIONS = ("none", "nf4", "int8")


@dataclass
class LoadedBase:
    model: object
    tokenizer: object
    quantization: str
    compute_dtype: str
    device: str


def quiet_libraries() -> None:
    """Silence library output a loradock user cannot act on; idempotent, imports nothing.

    Call it before transformers, peft or bitsandbytes are imported (the CLI does, first thing):
    - bitsandbytes on AVX512-BF16 CPUs logs "Failed to load CPU gemm_4bit_forward ... No module
      named 'kernels'" at import: an optional faster kernel from the hub; the fallback works. Where
      `kernels` is installed (transformers >= 5.25 requires it), it logs "Skipping publisher trust check
      ... offline mode" for that same kernel instead.
    - transformers' and peft's FutureWarnings name their own internal calls (peft calling a
      deprecated transformers method, for example), which only a library upgrade changes.
    - transformers' info/warning logs (checkpoint rotation, loading reports) go to error level;
      `TRANSFORMERS_VERBOSITY=info` (set by the user) still turns them back on.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels").setLevel(logging.ERROR)
    for library in ("transformers", "peft", "bitsandbytes", "accelerate"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{library}(\.|$)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # imported before us: its logger read the environment already
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(hf_logging.log_levels.get(os.environ["TRANSFORMERS_VERBOSITY"], logging.ERROR))


@contextmanager
def _no_loading_bars():
    """transformers' per-tensor "Loading weights" bar: a second of noise here, hundreds of `\\r` fragments in a log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_compute_dtype(device: str, prefer_bf16: bool | str = "auto"):
    """bf16 where the hardware computes it natively (recent GPUs), else fp32 (CPUs here: bf16 matmul is emulated)."""
    import torch

    if prefer_bf16 is False:
        return torch.float32
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if prefer_bf16 is True:
        return torch.bfloat16
    return torch.float32


def quantization_config(quantization: str, compute_dtype):
    """The BitsAndBytesConfig for `quantization` (None for full precision)."""
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(
    base: Base | str | Path, quantization: str = "none", device: str | None = None, bf16: bool | str = "auto",
    for_training: bool = False,
) -> LoadedBase:
    """Load a base (a registered `Base`, or a model directory) with its tokenizer.

    `quantization` is none, nf4 (4-bit NormalFloat with double quantization) or int8.
    For training on a quantized base the model is prepared for k-bit training
    (frozen weights, fp32 norms, input grads for gradient checkpointing).
    """
    quiet_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    path = Path(base.path if isinstance(base, Base) else base)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no model there (config.json missing); see `reg base ls`")
    device = device or pick_device()
    compute_dtype = pick_compute_dtype(device, bf16)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Safe because loradock pads labels by position, never by token id (trainer.data.CausalCollator).
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict = {"dtype": compute_dtype}
    qconfig = quantization_config(quantization, compute_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device}
    with _no_loading_bars():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if qconfig is None:
        model.to(device)
    if for_training and qconfig is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if not for_training:
        model.eval()
    dtype_name = str(compute_dtype).removeprefix("torch.")
    return LoadedBase(model, tokenizer, quantization, dtype_name, device)
