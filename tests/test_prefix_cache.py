"""Kept prompt prefixes (server/engines/prefix_cache.py): a prompt starting like an earlier one prefills only the rest.

The cache alone: what it finds (whole blocks, or a whole prompt but its last token), per owner, within its
budget. The native engine with it: repeated prompts, prompts sharing a start, on the base and on adapters,
answer exactly as an engine without it, and an adapter slot given new weights never reuses what the old ones
computed.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from registry.modeling.loading import load_base_model
from server.engines import EngineRequest, Sampling
from server.engines.native import NativeEngine
from server.engines.prefix_cache import BLOCK, PrefixCache
from server.lora import MultiLoraModel, load_lora_weights
from tests.conftest import make_adapter_dir


def kv(tokens: int) -> torch.Tensor:
    """Stand-in keys/values (layers=2, k/v, heads=1, tokens, dim=4) whose values say which token they are."""
    return torch.arange(tokens, dtype=torch.float32)[None, None, None, :, None].expand(2, 2, 1, tokens, 4).clone()


def test_a_kept_prefix_is_found_by_whole_blocks_or_all_but_the_last_token():
    cache = PrefixCache(max_bytes=2**20)
    prompt = list(range(100, 100 + 2 * BLOCK + 5))
    assert cache.lookup("base", prompt) is None
    cache.store("base", prompt, kv(len(prompt)))
    tokens, found = cache.lookup("base", prompt)  # the same prompt again: all but its last token
    assert tokens == len(prompt) - 1 and torch.equal(found[..., :tokens, :], kv(len(prompt))[..., :tokens, :])
    longer = prompt + [7, 8, 9]  # it goes on: the whole blocks it shares
    assert cache.lookup("base", longer)[0] == 2 * BLOCK
    other_end = prompt[:BLOCK + 3] + [1] * 20  # a shared start of one block and a bit
    assert cache.lookup("base", other_end)[0] == BLOCK
    assert cache.lookup("base", [5] + prompt[1:]) is None  # differs in its first token
    assert cache.lookup("adapter", prompt) is None  # what another owner computed is not this one's
    assert cache.lookup("base", prompt[:1]) is None  # one token: nothing before the last
    assert (cache.hits, cache.hit_tokens) == (3, len(prompt) - 1 + 3 * BLOCK)


def test_entries_stay_within_the_budget_least_recently_used_first():
    one = kv(BLOCK + 1).nbytes
    cache = PrefixCache(max_bytes=2 * one)
    a, b, c = ([n] * (BLOCK + 1) for n in (1, 2, 3))
    cache.store("o", a, kv(len(a)))
    cache.store("o", b, kv(len(b)))
    assert cache.lookup("o", a) is not None  # a is now the most recent
    cache.store("o", c, kv(len(c)))  # b goes
    assert cache.lookup("o", b) is None and cache.lookup("o", a) is not None and cache.lookup("o", c) is not None
    assert cache.nbytes == 2 * one and len(cache) == 2 and cache.evictions == 1
    cache.store("o", [4] * 40, kv(40))  # larger than the whole budget: not kept, nothing evicted for it
    assert len(cache) == 2 and cache.lookup("o", [4] * 40) is None


def test_a_shared_prefix_stays_found_while_any_prompt_that_had_it_is_kept():
    cache = PrefixCache(max_bytes=2**20)
    start = list(range(BLOCK))
    cache.store("o", start + [1, 2], kv(BLOCK + 2))
    cache.store("o", start + [3, 4], kv(BLOCK + 2))
    assert cache.lookup("o", start + [5, 6])[0] == BLOCK


@pytest.fixture(scope="module")
def tiny(tiny_base_dir, tmp_path_factory):
    model = load_base_model(tiny_base_dir, device="cpu").model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    lora = MultiLoraModel(model, max_slots=2, rank=8)
    out = tmp_path_factory.mktemp("adapters")
    adapters = [load_lora_weights(make_adapter_dir(tiny_base_dir, out / str(seed), seed=seed), lora) for seed in (1, 2, 3)]
    lora.assign(1, adapters[0])
    lora.assign(2, adapters[1])
    return model, tokenizer, lora, adapters


SHARED = "You are a helpful assistant who answers in one short line. Question: "
QUESTIONS = ["what is two plus two?", "name a colour", "what is two plus two?", "and the capital of France?"]


def answers(engine: NativeEngine, tokenizer, requests: list[tuple[str, int]], together: bool = False) -> list[str]:
    """One request at a time (each later one can find what the earlier ones kept), or all at once; their texts."""
    def submit(i, prompt, slot):
        return engine.submit(EngineRequest(request_id=str(i), prompt_ids=tokenizer(prompt)["input_ids"],
                                           sampling=Sampling(max_new_tokens=6), slot=slot))
    if together:
        handles = [submit(i, prompt, slot) for i, (prompt, slot) in enumerate(requests)]
        return [h.result(timeout=120).text for h in handles]
    return [submit(i, prompt, slot).result(timeout=120).text for i, (prompt, slot) in enumerate(requests)]


def test_repeated_and_shared_prompts_answer_as_without_the_cache_on_base_and_adapters(tiny):
    model, tokenizer, lora, _ = tiny
    assert len(tokenizer(SHARED)["input_ids"]) > 2 * BLOCK
    requests = [(SHARED + q, slot) for slot in (0, 1, 2) for q in QUESTIONS] + [(SHARED + QUESTIONS[0], 1)]
    plain = NativeEngine(model, tokenizer, lora).start()
    kept = NativeEngine(model, tokenizer, lora, prefix_cache_bytes=64 * 2**20).start()
    try:
        expected = answers(plain, tokenizer, requests)
        assert answers(kept, tokenizer, requests) == expected
        # All at once, kept prefixes of different lengths (and new prompts) prefilled together into a running batch.
        wave = [("Tell me a story about a fox", 2)] + requests[::-1]
        assert answers(kept, tokenizer, wave, together=True) == answers(plain, tokenizer, wave, together=True)
    finally:
        plain.stop()
        kept.stop()


def test_prompts_kept_in_the_cache_per_owner(tiny):
    model, tokenizer, lora, _ = tiny
    requests = [(SHARED + q, slot) for slot in (0, 1, 2) for q in QUESTIONS] + [(SHARED + QUESTIONS[0], 1)]
    kept = NativeEngine(model, tokenizer, lora, prefix_cache_bytes=64 * 2**20).start()
    try:
        expected = answers(kept, tokenizer, requests)
    finally:
        kept.stop()
    cache = kept._prefixes
    # Per owner (base, slot 1, slot 2): the first prompt misses, the others share the start, the repeat is whole.
    assert cache.misses == 3 and cache.hits == len(requests) - 3
    assert cache.hit_tokens >= (len(requests) - 3) * 2 * BLOCK
    assert len(set(expected[:4])) > 1 and expected[:4] != expected[4:8]  # the prompts and adapters matter


def test_a_slot_given_other_weights_never_reuses_what_the_old_ones_computed(tiny):
    model, tokenizer, lora, adapters = tiny
    prompt = [(SHARED + QUESTIONS[0], 1)]
    engine = NativeEngine(model, tokenizer, lora, prefix_cache_bytes=64 * 2**20).start()
    try:
        before = answers(engine, tokenizer, prompt)
        lora.assign(1, adapters[2])
        after = answers(engine, tokenizer, prompt)
        assert engine._prefixes.hits == 0  # the new weights' first prompt found nothing of the old ones
        plain = NativeEngine(model, tokenizer, lora).start()
        try:
            assert after == answers(plain, tokenizer, prompt) != before
        finally:
            plain.stop()
    finally:
        engine.stop()
        lora.assign(1, adapters[0])
