"""Base Linear layers with their weights pre-packed for oneDNN: the native engine's CPU matmuls.

PyTorch's `F.linear` on a CPU hands fp32 matmuls to MKL, which repacks the weight on every call. For
the shapes a decode step has (16 rows against a 576x49152 lm_head, or 576x1536 MLP projections) that
repacking is most of the time: measured on this machine's 2-core EPYC, the 16-row lm_head takes
26-33 ms through `F.linear` and 7-9 ms as a oneDNN matmul on a weight packed once; the 1536-wide
projections 1.3-1.8x less. The arithmetic is still fp32 (only the summation order differs, as it does
between any two BLAS libraries), so outputs stay equal to PEFT's within fp32 tolerance.

`pack_linears(model)` swaps every plain `nn.Linear` of the model (inside the `MultiLoraLinear`
wrappers too, and the lm_head) for a `PackedLinear`; the original weights are dropped (the lm_head's,
when tied to the embeddings, stays as the embedding). It is the inference-only, CPU-only fast path
inductor's weight freezing takes, without compiling anything: where oneDNN is missing, the model is
not fp32/bf16, or a packed layer disagrees with `F.linear` on a probe, nothing is swapped.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward with the weight held in oneDNN's packed layout (inference only)."""

    def __init__(self, linear: nn.Linear, batch_hint: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            weight = linear.weight.detach()
            self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint), persistent=False)
            bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(model: nn.Module) -> bool:
    """oneDNN is there, the model runs on the CPU in fp32 or bf16, and a packed probe layer agrees with F.linear."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype not in PACKABLE_DTYPES:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = nn.Linear(64, 64, dtype=parameter.dtype)
        x = torch.randn(3, 64, dtype=parameter.dtype)
        with torch.inference_mode():
            got, want = PackedLinear(probe, 16)(x), F.linear(x, probe.weight, probe.bias)
    except (RuntimeError, AttributeError) as exc:  # a build without these ops
        log.info("not packing the base's Linear layers for oneDNN: %s", exc)
        return False
    return bool(torch.allclose(got.float(), want.float(), atol=1e-2 if parameter.dtype == torch.bfloat16 else 1e-5))


def pack_linears(model: nn.Module, batch_hint: int = 16) -> int:
    """Swap the plain fp32/bf16 `nn.Linear` layers of `model` for `PackedLinear`s; returns how many were swapped.

    Quantized layers (bitsandbytes) are not `nn.Linear` instances of a float weight and stay as they are."""
    if not can_pack(model):
        return 0
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.dtype in PACKABLE_DTYPES:
                setattr(module, name, PackedLinear(child, batch_hint))
                swapped += 1
    return swapped
