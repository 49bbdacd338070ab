"""The native engine's turns (server/engines/native.py), driven directly: how many arrivals one turn prefills."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from registry.modeling.loading import load_base_model
from server.engines import EngineRequest, Sampling
from server.engines.native import NativeEngine
from server.lora import MultiLoraModel, load_lora_weights

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox jumps", "What is the capital of", "LOUD", "a b c d"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_base_dir):
    return load_base_model(tiny_base_dir, device="cpu").model.eval(), AutoTokenizer.from_pretrained(tiny_base_dir)


def run_wave(model, tokenizer, max_prefill_tokens: int, lora=None, slots=None):
    """Every prompt queued before the engine starts (one wave of arrivals); (admission times, texts) in order."""
    engine = NativeEngine(model, tokenizer, lora, max_batch_size=8, max_prefill_tokens=max_prefill_tokens)
    handles = [engine.submit(EngineRequest(request_id=str(i), prompt_ids=tokenizer(p)["input_ids"],
                                           sampling=Sampling(max_new_tokens=6), slot=slots[i] if slots else 0))
               for i, p in enumerate(PROMPTS)]
    engine.start()
    try:
        results = [h.result(timeout=120) for h in handles]
    finally:
        engine.stop()
    return [h._seq.admitted_at for h in handles], [r.text for r in results]


def test_a_wave_beyond_the_prefill_budget_joins_over_several_turns_with_the_same_answers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    together, expected = run_wave(model, tokenizer, max_prefill_tokens=10_000)
    assert len(set(together)) == 1  # one turn prefilled them all
    shortest = min(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    one_by_one, texts = run_wave(model, tokenizer, max_prefill_tokens=shortest)  # never room for two
    assert one_by_one == sorted(one_by_one) and len(set(one_by_one)) == len(PROMPTS)
    assert texts == expected
    with torch.inference_mode():  # and each is what the model says alone
        for prompt, text in zip(PROMPTS, texts):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            alone = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
            assert tokenizer.decode(alone, skip_special_tokens=True).startswith(text)


def test_a_prompt_longer_than_the_budget_still_joins(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    admitted, texts = run_wave(model, tokenizer, max_prefill_tokens=1)
    assert len(set(admitted)) == len(PROMPTS) and all(isinstance(t, str) for t in texts)


def test_arrivals_on_adapters_joining_turn_by_turn_answer_as_when_prefilled_together(tiny_base_dir, tmp_path):
    from conftest import make_adapter_dir

    model = load_base_model(tiny_base_dir, device="cpu").model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    lora = MultiLoraModel(model, max_slots=3)
    for slot, kind in enumerate(["lora", "lora-all", "lora"], start=1):
        lora.assign(slot, load_lora_weights(make_adapter_dir(tiny_base_dir, tmp_path / str(slot), kind, seed=slot), lora))
    slots = [1, 2, 0, 3, 2, 1]
    _, together = run_wave(model, tokenizer, 10_000, lora, slots)
    shortest = min(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    _, turn_by_turn = run_wave(model, tokenizer, shortest, lora, slots)  # each joins a running batch, rows re-copied
    assert turn_by_turn == together
    _, bare = run_wave(model, tokenizer, 10_000)
    assert bare != together  # the adapters really change the answers


def test_text_decoded_token_by_token_is_what_decoding_it_whole_gives(model_and_tokenizer):
    """The engine decodes only each row's newest tokens per step; at every step the text must be the whole
    decode's, incomplete characters (random byte tokens) and special tokens included."""
    import random

    from server.engines.native import _Sequence

    model, tokenizer = model_and_tokenizer
    engine = NativeEngine(model, tokenizer)
    rng = random.Random(0)
    for _ in range(50):
        seq = _Sequence(EngineRequest(request_id="r", prompt_ids=[1], sampling=Sampling(max_new_tokens=30)), 0.0)
        for _ in range(30):
            seq.generated.append(rng.randrange(len(tokenizer)))
            assert engine._decode_text(seq) == tokenizer.decode(seq.generated, skip_special_tokens=True)
