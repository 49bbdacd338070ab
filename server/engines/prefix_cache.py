"""Prompts' keys and values kept after their prefill, so a prompt that starts the same way is prefilled once.

Traffic repeats itself: every chat request starts with the same template and system prompt, clients retry,
load tests and evaluations send the same prompts again. A prefill is most of a short request's work on a
CPU (~1 ms per prompt token for SmolLM2-135M on this machine's 2 cores, compute-bound), so the native
engine keeps each prefilled prompt's keys and values here, under the identity of what computed them (the
adapter in the row's slot: an adapter changes k_proj, v_proj and every layer below), and a later prompt
with the same start prefills only its rest, attending to the kept columns (vLLM's automatic prefix caching,
without paging).

A prompt's prefix matches at whole `BLOCK`s of tokens, or whole but for its last token (a repeated prompt
recomputes one token: the logits of the last one are what the prefill is for). Entries are evicted least
recently used first to stay within `max_bytes`; a hit compares the tokens themselves, so a hash collision
can only cost a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

BLOCK = 16


@dataclass
class _Entry:
    owner: Hashable
    tokens: tuple[int, ...]
    kv: torch.Tensor                      # (layers, 2, kv_heads, len(tokens), head_dim): keys, values
    index_keys: list[tuple] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


def _prefix_keys(owner: Hashable, tokens: list[int] | tuple[int, ...], lengths: list[int]) -> list[tuple]:
    """A lookup key for each prefix length in `lengths` (ascending): chained over whole blocks, O(len) in all."""
    keys, chain, block = [], 0, 0
    for length in lengths:
        while (block + 1) * BLOCK <= length:
            chain = hash((chain, tuple(tokens[block * BLOCK:(block + 1) * BLOCK])))
            block += 1
        keys.append((owner, length, hash((chain, tuple(tokens[block * BLOCK:length])))))
    return keys


class PrefixCache:
    """Prefilled prompts' keys and values by (owner, tokens), within `max_bytes`; see the module docstring."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = self.hit_tokens = self.query_tokens = self.evictions = 0
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], _Entry] = OrderedDict()  # least recent first
        self._index: dict[tuple, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, owner: Hashable, prompt: list[int]) -> tuple[int, torch.Tensor] | None:
        """(tokens, kv) of the longest kept prefix of `prompt` computed by `owner`, at most all but its last
        token; `kv[..., :tokens, :]` are that prefix's keys and values. None when nothing is kept."""
        limit = len(prompt) - 1
        self.query_tokens += len(prompt)
        lengths = sorted({limit, *range(BLOCK, limit + 1, BLOCK)} - {0}) if limit > 0 else []
        for length, key in zip(reversed(lengths), reversed(_prefix_keys(owner, prompt, lengths))):
            entry = self._index.get(key)
            if entry is not None and entry.tokens[:length] == tuple(prompt[:length]):
                self._entries.move_to_end((entry.owner, entry.tokens))
                self.hits += 1
                self.hit_tokens += length
                return length, entry.kv
        self.misses += 1
        return None

    def holds(self, owner: Hashable, prompt: list[int]) -> bool:
        return (owner, tuple(prompt)) in self._entries

    def store(self, owner: Hashable, prompt: list[int], kv: torch.Tensor) -> None:
        """Keep `kv` (layers, 2, kv_heads, len(prompt), head_dim) for `prompt`, evicting the least recently used
        entries to make room; an entry larger than the whole budget is not kept."""
        tokens = tuple(prompt)
        if (owner, tokens) in self._entries or kv.nbytes > self.max_bytes or len(tokens) < 2:
            return
        while self._entries and self.nbytes + kv.nbytes > self.max_bytes:
            self._evict(next(iter(self._entries.values())))
        lengths = sorted({*range(BLOCK, len(tokens) + 1, BLOCK), len(tokens) - 1, len(tokens)})
        entry = _Entry(owner, tokens, kv, _prefix_keys(owner, tokens, lengths))
        for key in entry.index_keys:
            self._index[key] = entry  # the newest entry answers for a shared prefix
        self._entries[(owner, tokens)] = entry
        self.nbytes += entry.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self.nbytes = 0

    def _evict(self, entry: _Entry) -> None:
        del self._entries[(entry.owner, entry.tokens)]
        for key in entry.index_keys:
            if self._index.get(key) is entry:
                del self._index[key]
        self.nbytes -= entry.nbytes
        self.evictions += 1
