"""How close a forward pass comes to the machine: measured peaks, and the work a pass must do.

    peaks = machine_peaks("cpu", torch.float32)             # Peaks(gflops=..., gbs=..., ...)
    shape = ModelShape.of(model)
    shape.prefill_flops(batch=16, length=64)                 # useful FLOPs of one prefill
    shape.decode_bytes(batch=16, context=68)                 # bytes one decode step must read

Prefill is compute-bound, so its achieved FLOP/s is compared with the matmul peak; decode at these
batch sizes is memory-bound, so its achieved bytes/s is compared with the copy bandwidth. Both
counts are of the base model's own work (the same for every variant), so a variant's overhead
shows up as a lower fraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .bench_results import Peaks

TRIES = 5


def _clock() -> float:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def _best_seconds(fn, tries: int = TRIES) -> float:
    fn()  # warm: allocation, kernel selection, thread pool start
    best = float("inf")
    for _ in range(tries):
        start = _clock()
        fn()
        best = min(best, _clock() - start)
    return best


def matmul_peak(device: str, dtype: torch.dtype, sizes: tuple[int, ...]) -> dict[int, float]:
    """GFLOP/s of an n x n x n GEMM (2 n^3 FLOPs) per size, best of TRIES, in torch's current thread count."""
    out = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        out[n] = 2 * n**3 / _best_seconds(lambda: torch.mm(a, b, out=c)) / 1e9
    return out


def copy_bandwidth(device: str, nbytes: int) -> float:
    """GB/s of one large tensor copy, counting the bytes read plus the bytes written, best of TRIES."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: dst.copy_(src)) / 1e9


def machine_peaks(device: str, dtype: torch.dtype, quick: bool = False) -> Peaks:
    """The matmul peak (best over a few sizes) and copy bandwidth this process can reach."""
    if device == "cuda":
        sizes, nbytes = (4096, 8192), 2 * 2**30
    else:
        sizes, nbytes = ((256, 512) if quick else (512, 1024, 2048)), (64 if quick else 512) * 2**20
    started = time.perf_counter()
    per_size = matmul_peak(device, dtype, sizes)
    gbs = copy_bandwidth(device, nbytes)
    return Peaks(
        gflops=max(per_size.values()), gflops_by_size=per_size, gbs=gbs, dtype=str(dtype).removeprefix("torch."),
        copy_mb=nbytes // 2**20, threads=torch.get_num_threads(), seconds=round(time.perf_counter() - started, 1),
    )


@dataclass
class ModelShape:
    """What a causal LM's forward must compute and read, from the loaded (possibly quantized) model."""

    linear_params: int
    """in x out over every Linear but the output head (the weights every token multiplies)."""
    lm_head_params: int
    layers: int
    attn_dim: int
    """Query heads x head dim: the width of QK^T and AV per layer."""
    kv_dim: int
    """Key/value heads x head dim."""
    weight_bytes: int
    """Bytes a decode step reads from the weights as stored (packed 4-bit and quant state where quantized);
    the input embedding counts only where it is also the output head (a step reads just B rows of it otherwise)."""
    kv_elem_bytes: int

    @classmethod
    def of(cls, model: nn.Module) -> ModelShape:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        head = model.get_output_embeddings()
        linear_params = sum(
            m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not head)
        embedding = model.get_input_embeddings().weight
        read = {id(p): p for p in model.parameters() if p is not embedding or p is head.weight}
        return cls(
            linear_params=linear_params, lm_head_params=head.in_features * head.out_features,
            layers=config.num_hidden_layers, attn_dim=config.num_attention_heads * head_dim,
            kv_dim=(getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim,
            weight_bytes=sum(stored_bytes(p) for p in read.values()),
            kv_elem_bytes=torch.finfo(model.dtype).bits // 8,
        )

    def prefill_flops(self, batch: int, length: int) -> float:
        """2 x linear params per token, the output head on the last token only (logits_to_keep=1), and the causal
        attention: QK^T and AV over the positions each token sees (length (length + 1) / 2 per row and layer)."""
        tokens = batch * length
        attention = 2 * 2 * self.layers * self.attn_dim * batch * length * (length + 1) / 2
        return 2 * self.linear_params * tokens + 2 * self.lm_head_params * batch + attention

    def decode_bytes(self, batch: int, context: float) -> float:
        """One decode step: every stored weight once, plus every row's K and V cache over `context` positions."""
        return self.weight_bytes + 2 * self.layers * batch * context * self.kv_dim * self.kv_elem_bytes


def stored_bytes(param: torch.Tensor) -> int:
    """Bytes a parameter takes in memory: its storage, plus bitsandbytes' quantization state (absmax, code...)."""
    total = param.numel() * param.element_size()
    state = getattr(param, "quant_state", None)  # 4-bit: QuantState, nested under double quantization
    while state is not None:
        total += sum(t.nbytes for t in vars(state).values() if isinstance(t, torch.Tensor))
        state = getattr(state, "state2", None)
    scb = getattr(param, "SCB", None)  # 8-bit: per-row scales
    return total + (scb.nbytes if isinstance(scb, torch.Tensor) else 0)
