"""The native engine's decode step for Llama bases: the same layers, without the Hugging Face forward's Python.

A decode step feeds one token per row through every decoder layer. Hugging Face's `LlamaModel.forward` does
that through decorators, kwargs plumbing, an attention-function registry, a cache `update` and a mask
builder in every layer, ~200 tensor ops per layer counting views: on this machine's 2-core EPYC a 1-row
step spent ~11 of its ~30 ms outside the matmuls. `DecodeStep` runs the same computation straight from the
model's own modules, about 20 ops per layer:

    h = rms_norm(x);  q, k, v = q_proj(h), k_proj(h), v_proj(h)      # the projections are the model's modules:
    q, k = rotary(q), rotary(k);  keys, values = cache.write(k, v)   # LoRA wrappers, packed or quantized layers
    x = x + o_proj(attention(q, keys, values, mask))
    x = x + down_proj(silu(gate_proj(rms_norm(x))) * up_proj(rms_norm(x)))

and it is the same arithmetic in the same order (the rotary embedding as `q * cos + rotate_half(q) * sin`,
grouped-query attention the way transformers runs a 1-token query: the query heads of one key/value head as
that head's queries), so its logits equal the full forward's bit for bit in fp32 (`tests/test_decode_step.py`).
Prefill (many tokens per row, padding) still runs the full forward.

Only plain Llama models get it (`unsupported`): other architectures, or a Llama with anything the step
does not do (another activation, tensor-parallel pretraining slices), use the full forward every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .row_cache import RowCache


def unsupported(model: nn.Module) -> str | None:
    """Why `model` cannot take a `DecodeStep` (None: it can)."""
    config = model.config
    model_type, activation = getattr(config, "model_type", None), getattr(config, "hidden_act", None)
    if model_type != "llama":
        return f"model type {model_type!r} is not llama"
    if activation != "silu":
        return f"activation {activation!r} is not silu"
    if getattr(config, "pretraining_tp", 1) != 1:
        return f"pretraining_tp is {config.pretraining_tp}"
    decoder = getattr(model, "model", None)
    parts = ("embed_tokens", "layers", "norm", "rotary_emb")
    if decoder is None or not all(hasattr(decoder, p) for p in parts) or not hasattr(model, "lm_head"):
        return "its modules are not laid out as LlamaForCausalLM's"
    return None


class DecodeStep:
    """One decode forward of a Llama model over the rows of a `RowCache`; see the module docstring."""

    def __init__(self, model: nn.Module, cache: RowCache):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"no decode step for this model: {reason}")
        config = model.config
        self.decoder, self.lm_head, self.cache = model.model, model.lm_head, cache
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim ** -0.5
        self.layers = [
            (self._norm(layer.input_layernorm), layer.self_attn.q_proj, layer.self_attn.k_proj,
             layer.self_attn.v_proj, layer.self_attn.o_proj, self._norm(layer.post_attention_layernorm),
             layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
            for layer in self.decoder.layers
        ]
        self.final_norm = self._norm(self.decoder.norm)

    @classmethod
    def for_model(cls, model: nn.Module, cache: RowCache) -> DecodeStep | None:
        return None if unsupported(model) is not None else cls(model, cache)

    @staticmethod
    def _norm(module: nn.Module):
        """fp32: `F.rms_norm` (one op, the same values as LlamaRMSNorm's five); else the module itself, which
        normalizes in fp32 and casts back before the weight."""
        weight = module.weight
        if weight.dtype != torch.float32:
            return module
        shape, eps = (weight.shape[0],), module.variance_epsilon
        return lambda x: F.rms_norm(x, shape, weight, eps)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (rows, 1, vocab) for `input_ids` (rows, 1) at `positions` (rows, 1), after the cache's
        `decode_window` (which gave `positions` and the 4-D `mask`)."""
        rows = input_ids.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        groups, half = heads // kv_heads, dim // 2
        x = self.decoder.embed_tokens(input_ids)
        if mask.dtype == torch.bool:  # SDPA would make it additive in every layer: once here
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        cos, sin = self.decoder.rotary_emb(x, positions)
        cos = cos.view(rows, 1, 1, dim)
        # rotate_half(t) * sin == swap_halves(t) * signed_sin: the halves swapped, the first half's sin negated.
        signed_sin = sin.view(rows, 1, 1, dim).clone()
        signed_sin[..., :half].neg_()

        def rotary(t: torch.Tensor, n_heads: int) -> torch.Tensor:
            swapped = t.view(rows, n_heads, 2, half).flip(2).view(rows, n_heads, 1, dim)
            return t * cos + swapped * signed_sin

        for index, (norm1, q_proj, k_proj, v_proj, o_proj, norm2, gate, up, down) in enumerate(self.layers):
            h = norm1(x)
            q = rotary(q_proj(h).view(rows, heads, 1, dim), heads)
            k = rotary(k_proj(h).view(rows, kv_heads, 1, dim), kv_heads)
            keys, values = self.cache.write(index, k, v_proj(h).view(rows, kv_heads, 1, dim))
            # One query token: each key/value head's query heads are its queries (no repeated keys/values).
            attention = F.scaled_dot_product_attention(
                q.view(rows, kv_heads, groups, dim), keys, values, attn_mask=mask, scale=self.scaling)
            x = x + o_proj(attention.reshape(rows, 1, heads * dim))
            h = norm2(x)
            x = x + down(F.silu(gate(h)) * up(h))
        return self.lm_head(self.final_norm(x))
