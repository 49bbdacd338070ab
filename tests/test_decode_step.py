"""The native engine's decode step (server/engines/decode_step.py): the full forward's logits, without its Python.

Every decode step of a batch mixing the bare base and two adapters, on packed layers, through rows joining in
the row cache, is run twice on the same cache state: by the model's own forward and by `DecodeStep`. Both
write the same column (the step overwrites the forward's keys with its own), so any difference in the
projections, rotary embedding, cache writes, masking or attention shows in the logits.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoTokenizer

from registry.modeling.loading import load_base_model
from server.engines.decode_step import DecodeStep, unsupported
from server.engines.packed import pack_linears
from server.engines.row_cache import RowCache
from server.lora import MultiLoraModel, load_lora_weights
from tests.conftest import make_adapter_dir
from tests.test_row_cache import prefill

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox jumps over the lazy dog", "a", "adapters are small"]


def test_decode_steps_give_the_full_forwards_logits_for_base_and_adapter_rows(tiny_base_dir, tmp_path):
    model = load_base_model(tiny_base_dir, device="cpu").model.eval()
    multi = MultiLoraModel(model, max_slots=2, rank=8)
    for slot, seed in ((1, 1), (2, 2)):
        multi.assign(slot, load_lora_weights(make_adapter_dir(tiny_base_dir, tmp_path / f"a{slot}", seed=seed), multi))
    assert pack_linears(model) > 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    cache = RowCache.for_model(model, 8, headroom=3)  # re-laid out every few steps
    step = DecodeStep.for_model(model, cache)
    assert step is not None

    slots, tokens, checked = [], [], 0
    with torch.inference_mode():  # as the engine runs: the cache's tensors are inference tensors
        for turn, joining in enumerate([[0, 1, 2], [], [3], [], [], [4], [], []]):
            if joining:
                new_slots = [(turn + i) % 3 for i in range(len(joining))]
                with multi.rows(new_slots):
                    logits = prefill(model, cache, [prompts[i] for i in joining])
                slots += new_slots
                tokens += logits.argmax(-1).tolist()
            positions, mask = cache.decode_window()
            ids = torch.tensor(tokens)[:, None]
            with multi.rows(slots):
                full = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True).logits[:, -1]
                ours = step(ids, positions, mask)[:, -1]
            cache.advance()
            torch.testing.assert_close(ours, full, atol=1e-6, rtol=0)
            tokens = ours.argmax(-1).tolist()
            checked += len(tokens)
    assert cache.relayouts > 0 and checked == 3 * 2 + 4 * 3 + 5 * 3
    assert {0, 1, 2} <= set(slots)


def test_models_it_does_not_cover_keep_the_full_forward(tiny_base_dir):
    model = load_base_model(tiny_base_dir, device="cpu").model.eval()
    cache = RowCache.for_model(model, 2)
    assert unsupported(model) is None and DecodeStep.for_model(model, cache) is not None
    other = copy.deepcopy(model)
    other.config.hidden_act = "gelu"
    assert unsupported(other) == "activation 'gelu' is not silu"
    assert DecodeStep.for_model(other, cache) is None
    other.config.model_type = "mistral"
    assert "model type 'mistral' is not llama" == unsupported(other)
