"""The adapter cache: which adapter versions sit in which LoRA slot, loaded lazily, evicted LRU.

Keys are resolved identities (`NAME:N`, or a merge key), never bare names, so a push or an alias
move simply resolves to a new key on the next request. `acquire` returns a slot and holds a
reference until `release`; only unpinned entries with no references are evicted.
Listeners (`add_listener`, e.g. the server's Prometheus metrics) hear of every load and its time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import QueueFull
from .limits import check_slot_memory

logger = logging.getLogger(__name__)


@dataclass
class CacheEntry:
    key: str
    slot: int
    nbytes: int
    peft_type: str = "LORA"
    rank: int = 0
    pinned: bool = False
    refs: int = 0
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)
    load_ms: float = 0.0


class AdapterCache:
    """Bounded by `max_adapters` (slots) and `max_bytes` of adapter weights; `max_bytes` also bounds the slot
    stacks, which are padded to the largest rank loaded (and shrink back when that adapter is evicted)."""

    def __init__(self, lora, max_adapters: int, max_bytes: int, engine_lock: threading.Lock | None = None,
                 slot_wait_s: float = 60.0):
        self.lora = lora
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self._engine_lock = engine_lock or threading.Lock()
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self.slot_wait_s = slot_wait_s
        self._loading: dict[str, threading.Event] = {}
        self.entries: dict[str, CacheEntry] = {}
        self.hits = self.misses = self.evictions = 0
        self.loads = self.load_failures = 0  # misses that placed an adapter in a slot, and those that raised
        self._listeners: list[CacheListener] = []

    def add_listener(self, listener: "CacheListener") -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: "CacheListener") -> None:
        self._listeners.remove(listener)

    def _tell_loaded(self, key: str, seconds: float) -> None:
        """A listener's failure is logged, never raised into the request that loaded the adapter."""
        for listener in self._listeners:
            try:
                listener.adapter_loaded(key, seconds)
            except Exception:
                logger.exception("adapter cache listener %r failed on loading %s", listener, key)

    @property
    def used_bytes(self) -> int:
        with self._lock:  # read from other threads too (stats, /metrics) while a load adds an entry
            return sum(e.nbytes for e in self.entries.values())

    def acquire(self, key: str, load: Callable[[], object], pin: bool = False) -> CacheEntry:
        """The entry for `key`, loading it with `load()` (-> the engine's slot form, e.g. `LoraTensors`) on a miss; holds a reference."""
        while True:
            with self._lock:
                entry = self.entries.get(key)
                if entry is not None:
                    self.hits += 1
                    entry.refs += 1
                    entry.requests += 1
                    entry.pinned = entry.pinned or pin
                    entry.last_used = time.monotonic()
                    return entry
                waiting = self._loading.get(key)
                if waiting is None:
                    self._loading[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # another request is loading the same adapter: share its result
        try:
            started = time.perf_counter()
            weights = load()  # file I/O and tensor building happen outside every lock
            with self._lock:
                check_slot_memory(self.lora, key, weights.rank, self.max_bytes)  # the stacks grow to the largest rank
                slot = self._free_slot(weights.nbytes, key)
                with self._engine_lock:  # the slot write waits for the current forward to end
                    self.lora.assign(slot, weights)
                entry = CacheEntry(key, slot, weights.nbytes, rank=weights.rank, pinned=pin, refs=1, requests=1,
                                   load_ms=(time.perf_counter() - started) * 1000)
                self.entries[key] = entry
                self.loads += 1
        except BaseException:
            with self._lock:
                self.load_failures += 1
            raise
        finally:
            with self._lock:
                self._loading.pop(key).set()
        self._tell_loaded(key, entry.load_ms / 1000)
        return entry

    def release(self, key: str) -> None:
        with self._lock:
            entry = self.entries.get(key)
            if entry is not None and entry.refs > 0:
                entry.refs -= 1
                entry.last_used = time.monotonic()
                if entry.refs == 0:
                    self._freed.notify_all()

    def unload(self, key: str) -> bool:
        """Remove `key` now if no request uses it (pinned or not); False if it was not loaded."""
        with self._lock:
            entry = self.entries.get(key)
            if entry is None:
                return False
            if entry.refs:
                raise QueueFull(f"{key} is serving {entry.refs} request(s); unload it when they finish")
            self._evict(entry)
            return True

    def _free_slot(self, nbytes: int, key: str) -> int:
        if nbytes > self.max_bytes:
            raise QueueFull(f"{key} needs {nbytes / 2**20:.1f} MB, more than the whole adapter memory limit "
                            f"({self.max_bytes / 2**20:.0f} MB); raise --adapter-memory-mb")
        deadline = time.monotonic() + self.slot_wait_s
        while len(self.entries) >= self.max_adapters or self.used_bytes + nbytes > self.max_bytes:
            victims = [e for e in self.entries.values() if not e.pinned and e.refs == 0]
            if victims:
                self._evict(min(victims, key=lambda e: e.last_used))
                continue
            # Every slot serves a request: wait for one to finish rather than fail at once.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or all(e.pinned for e in self.entries.values()):
                raise QueueFull(f"adapter cache full: all {len(self.entries)} loaded adapters are pinned or serving; retry later")
            self._freed.wait(remaining)
        used = {e.slot for e in self.entries.values()}
        return next(s for s in range(1, self.max_adapters + 1) if s not in used)

    def _evict(self, entry: CacheEntry) -> None:
        with self._engine_lock:
            self.lora.clear(entry.slot)
            self.lora.shrink_to_fit()  # slots grown for a larger rank are given back
        del self.entries[entry.key]
        self.evictions += 1


class CacheListener(Protocol):
    """Told of each adapter placed in a slot, on the thread that loaded it (a request's): keep it quick."""

    def adapter_loaded(self, key: str, seconds: float) -> None: ...


def adapter_dir_for(cache_root: Path, manifest_digest: str) -> Path:
    return cache_root / manifest_digest.replace("sha256:", "")
