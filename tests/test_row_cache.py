"""The native engine's KV cache (server/engines/row_cache.py): rows join and leave a running batch in place.

Each row of a batch that rows keep joining (prefilled into free rows, prompts longer and shorter than the
columns already there) and leaving (the last row moving into the freed one), with the buffers re-laid out
every few steps, must decode exactly what that row decodes alone in a plain `DynamicCache`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, DynamicCache

from registry.modeling.loading import load_base_model
from server.engines.row_cache import RowCache

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox jumps over the lazy dog again and again", "a",
           "What is the capital of France? Tell me in one word", "LOUD", "adapters are small", "one two three four"]


@pytest.fixture(scope="module")
def model_and_ids(tiny_base_dir):
    model = load_base_model(tiny_base_dir, device="cpu").model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    return model, [tokenizer(p)["input_ids"] for p in PROMPTS]


def alone(model, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """The logits of the prompt's last token, then of each greedy token fed back, for `steps` tokens."""
    out, cache, ids = [], DynamicCache(), torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(steps):
            result = model(input_ids=ids, cache=cache, use_cache=True)
            cache = result.cache
            out.append(result.logits[0, -1])
            ids = result.logits[:, -1:].argmax(-1)
    return out


def prefill(model, cache: RowCache, prompts: list[list[int]]) -> torch.Tensor:
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    pad = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        pad[row, width - len(p):] = 1
    mask = cache.prefill_window(len(prompts), width, pad)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(pad.cumsum(-1) - 1).clamp(min=0),
                       cache=cache, use_cache=True).logits[:, -1]
    cache.join(len(prompts))
    return logits


def decode(model, cache: RowCache, tokens: list[int]) -> torch.Tensor:
    positions, mask = cache.decode_window()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor(tokens)[:, None], attention_mask=mask, position_ids=positions,
                       cache=cache, use_cache=True).logits[:, -1]
    cache.advance()
    return logits


# Each turn: which prompts join (by index), then which running prompts leave (by index) after the decode step.
SCHEDULE = [
    ([0, 1, 5], []),
    ([], []),
    ([2], [1]),        # a prompt longer than every column before hi: the used columns move right
    ([], [0]),         # the first row leaves: the last takes its place
    ([3, 4], []),
    ([], [2, 5]),      # two at once, one of them the last row
    ([6, 7], []),
    ([], []),
    ([], [4]),
    ([1], [3, 6, 7]),
    ([], []),
]


@pytest.mark.parametrize("headroom", [2, 128], ids=["relaid-out-often", "roomy"])
def test_rows_that_join_and_leave_decode_what_they_decode_alone(model_and_ids, headroom):
    model, prompt_ids = model_and_ids
    cache = RowCache.for_model(model, max_rows=6, headroom=headroom)
    steps = len(SCHEDULE) + 1
    expected = {i: alone(model, prompt_ids[i], steps) for i in range(len(PROMPTS))}
    running: list[int] = []   # prompt index of each cache row
    seen: dict[int, int] = {}  # prompt index -> logits compared so far
    last: dict[int, int] = {}  # prompt index -> the token it feeds next
    for joining, leaving in SCHEDULE:
        if joining:
            for i, row in zip(joining, prefill(model, cache, [prompt_ids[i] for i in joining])):
                torch.testing.assert_close(row, expected[i][0], atol=1e-5, rtol=0)
                seen[i], last[i] = 1, int(row.argmax())
            running += joining
        for i, row in zip(running, decode(model, cache, [last[i] for i in running])):
            torch.testing.assert_close(row, expected[i][seen[i]], atol=1e-5, rtol=0,
                                       msg=lambda m, i=i: f"prompt {i}, token {seen[i]}: {m}")
            seen[i], last[i] = seen[i] + 1, int(row.argmax())
        for i in leaving:
            row = running.index(i)
            cache.remove(row)
            moved = running.pop()
            if row < len(running):
                running[row] = moved
            seen.pop(i)
        assert cache.n == len(running)
    assert (cache.relayouts > 3 if headroom == 2 else cache.relayouts == 1) and cache.lo <= cache.hi <= cache.capacity
    if headroom == 2:  # most moves happen within the buffers they had
        assert 1 <= cache.allocations < cache.relayouts


def test_the_last_row_leaving_resets_the_clock(model_and_ids):
    model, prompt_ids = model_and_ids
    cache = RowCache.for_model(model, max_rows=2)
    prefill(model, cache, [prompt_ids[0]])
    decode(model, cache, [1])
    assert cache.hi > 0
    cache.remove(0)
    assert (cache.n, cache.lo, cache.hi) == (0, 0, 0) and not cache.attends.any()


def test_more_rows_than_the_cache_holds_are_refused(model_and_ids):
    model, prompt_ids = model_and_ids
    cache = RowCache.for_model(model, max_rows=2)
    with pytest.raises(ValueError, match="0 running rows and 3 joining exceed the cache's 2 rows"):
        cache.prefill_window(3, 4, torch.ones((3, 4), dtype=torch.long))


def test_a_row_attached_from_kept_keys_gives_its_prefilled_logits(model_and_ids):
    """A prompt whose keys/values but the last token's are kept joins without a prefill: the decode step that
    feeds its last token gives the logits its prefill gave, in a running batch and in an empty cache."""
    model, prompt_ids = model_and_ids
    prompt = prompt_ids[2]
    cache = RowCache.for_model(model, max_rows=4)
    prefilled = prefill(model, cache, [prompt])[0]
    kept = cache.prompt_kv(0)
    assert kept.shape[-2] == len(prompt)
    cache.attach([(len(prompt) - 1, kept)])  # row 1, next to the running row 0
    logits = decode(model, cache, [int(prefilled.argmax()), prompt[-1]])
    torch.testing.assert_close(logits[1], prefilled, atol=1e-5, rtol=0)
    empty = RowCache.for_model(model, max_rows=1)
    empty.attach([(len(prompt) - 1, kept)])
    torch.testing.assert_close(decode(model, empty, [prompt[-1]])[0], prefilled, atol=1e-5, rtol=0)
