"""Base Linear layers pre-packed for oneDNN (server/engines/packed.py): same fp32 answers, quantized layers untouched."""

from __future__ import annotations

import torch
from torch import nn

from registry.modeling.loading import load_base_model
from server.engines.packed import PackedLinear, pack_linears
from server.lora import MultiLoraLinear, MultiLoraModel


def test_packed_layers_give_the_unpacked_models_logits(tiny_base_dir):
    plain = load_base_model(tiny_base_dir, device="cpu").model.eval()
    packed = load_base_model(tiny_base_dir, device="cpu").model.eval()
    multi = MultiLoraModel(packed, max_slots=2, rank=4)
    linears = sum(type(m) is nn.Linear for m in packed.modules())
    assert pack_linears(packed) == linears > 0
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert all(isinstance(layer.base, PackedLinear) for layer in multi.layers.values())
    assert isinstance(packed.lm_head, PackedLinear)
    ids = torch.randint(3, 200, (3, 9))
    with torch.inference_mode():
        torch.testing.assert_close(packed(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)
        with multi.rows([0, 1, 2]):  # empty slots: the bare base through the wrappers
            torch.testing.assert_close(packed(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_a_packed_layer_keeps_its_bias_and_any_leading_shape():
    linear = nn.Linear(64, 128)
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear, 4)(x), linear(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(PackedLinear(linear, 4)(x[:, ::2]), linear(x[:, ::2]), atol=1e-5, rtol=0)


def test_quantized_layers_are_not_packed(tiny_base_dir):
    model = load_base_model(tiny_base_dir, "nf4", device="cpu").model.eval()
    MultiLoraModel(model, max_slots=1)
    pack_linears(model)
    quantized = [m for m in model.modules() if isinstance(m, MultiLoraLinear)]
    assert quantized and all(not isinstance(m.base, PackedLinear) and isinstance(m.base, nn.Linear) for m in quantized)
