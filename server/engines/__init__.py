"""The seam between the inference service and an engine: what one is asked to do, and what it gives back.

The service (`server/service.py`: validation, routing, rollouts, the adapter cache, merges) talks to an
engine only through the `Engine` protocol below and the plain dataclasses it exchanges, so a second
engine (vLLM) is one more module here plus one line where the service is built
(`server/app.py:load_service`). An engine owns the model: batching, the forward passes, sampling,
cancellation, and the adapter slots the cache places adapters in.

Engines: `native` (loradock's own: Hugging Face forward, per-row LoRA slots, continuous batching) and `vllm`
(a vLLM child process in its own environment: its batching, attention and LoRA kernels).
This module imports no torch, so the service and the transports can be read (and type-checked) without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""stop: end of sequence or a stop string; length: max_new_tokens (or the context) reached; cancelled: the
caller cancelled (or the engine stopped); error: the forward pass failed (`EngineResult.error` says how)."""


@dataclass
class Sampling:
    """Validated sampling settings for one request (the service checks the ranges; engines trust them)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class EngineRequest:
    """One request as an engine sees it: tokens in, an adapter slot, how to sample, whom to tell when it ends."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    slot: int = 0                       # the adapter slot its rows use (0 = the bare base)
    on_finish: Callable[["EngineResult"], None] | None = None
    """Called once, on the engine's thread, when the request ends (any reason): it releases the adapter and
    records stats. An exception it raises is logged, never allowed to stop the engine."""


@dataclass
class EngineResult:
    request_id: str
    text: str                           # what was streamed (cut at a stop string; all of it for stop/length)
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float                     # submitted -> admitted into the running batch
    ttft_ms: float                      # submitted -> first token
    total_ms: float                     # submitted -> finished
    error: BaseException | None = None  # set when finish_reason is "error"


@dataclass
class EngineStats:
    """The engine's side of `ServerStats`, read at one moment."""

    batch_size: int                     # rows in the running batch now
    queue_depth: int                    # requests waiting to join it
    max_batch_size: int
    max_queue: int
    decode_tokens_per_s: float          # over the engine's life, decode steps only
    slot_memory_bytes: int              # adapter slot storage (every slot, padded as the engine pads it)
    gathered_memory_bytes: int          # per-row adapter copies kept between steps (0 where an engine keeps none)
    prefix_cache_bytes: int = 0         # kept prompt keys/values (native engine's prefix cache)
    prefix_query_tokens: int = 0        # prompt tokens looked up in it, over the engine's life
    prefix_hit_tokens: int = 0          # of those, tokens whose keys/values were found (not prefilled again)


@runtime_checkable
class Handle(Protocol):
    """The caller's side of a submitted request."""

    @property
    def request_id(self) -> str: ...

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called (or the engine cancelled it while stopping)."""
        ...

    def cancel(self) -> None:
        """Ask the engine to end the request at its next step and free its batch row; returns at once."""
        ...

    def deltas(self, timeout: float | None = None) -> Iterator[str]:
        """Text deltas as they are decoded; ends when the request ends. Raises TimeoutError past `timeout` s in all."""
        ...

    def result(self, timeout: float | None = None) -> EngineResult:
        """Wait for the end; raises TimeoutError, or the error a failed forward pass raised."""
        ...


@runtime_checkable
class SlotWeights(Protocol):
    """One adapter in the form an engine places in a slot (the native engine: LoRA A/B, scaling folded in)."""

    rank: int
    nbytes: int


@runtime_checkable
class AdapterSlots(Protocol):
    """The numbered slots adapters are placed in (1..max_slots; 0 is the bare base), written by the adapter cache.

    Writes are made holding `Engine.lock`, so a slot never changes under a running forward pass."""

    max_slots: int

    @property
    def max_rank(self) -> int:
        """The rank slot storage is sized for now (the largest assigned, or the startup rank)."""
        ...

    @property
    def nbytes(self) -> int: ...

    @property
    def gathered_nbytes(self) -> int: ...

    def assign(self, slot: int, weights: Any) -> None: ...

    def clear(self, slot: int) -> None: ...

    def shrink_to_fit(self) -> None:
        """Give back storage grown for a larger rank no assigned adapter needs any more."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What the service needs of an engine. Errors it raises are loradock errors (`server/errors.py`)."""

    tokenizer: Any
    """The base's Hugging Face tokenizer: the service tokenizes (and applies the chat template) itself."""
    context_len: int
    """Tokens the base attends to; prompt plus completion must fit."""
    max_batch_size: int
    max_queue: int
    lock: threading.Lock
    """Held for every forward pass; adapter slot writes take it too."""
    slots: AdapterSlots

    def start(self, thread: bool = True) -> "Engine":
        """Start serving; `thread=False`: the caller then gives the engine a thread of its own with `run()`."""
        ...

    def run(self) -> None:
        """After `start(thread=False)`: serve on the calling thread until `stop()` (called from another thread).
        The native engine's forwards run here: `reg serve` gives it the process's main thread, where torch's
        OpenMP threads take each op fastest (measured: 1.5x the throughput of a second thread's)."""
        ...

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking requests; let running and queued ones finish for up to `drain_s`; cancel the rest; stop."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new requests from now on (ServerShuttingDown), keeping those in flight: the start of a drain."""
        ...

    def check_room(self) -> None:
        """Raise what submit() would for a full queue (QueueFull) or a stopping engine, before work is spent."""
        ...

    def submit(self, request: EngineRequest) -> Handle: ...

    def stats(self) -> EngineStats: ...

    def load_adapter(self, adapter_dir: Path) -> SlotWeights:
        """Read a pulled, digest-verified PEFT adapter directory into slot form; refuse (AdapterIncompatible)
        one this engine cannot serve exactly."""
        ...

    def adapter_from_tensors(self, adapter: Any) -> SlotWeights:
        """A merged adapter (`registry.modeling.merge.merge_adapters`' result) in slot form, checked against the base."""
        ...

    def check_slot_memory(self, key: str, rank: int, max_bytes: int) -> None:
        """Refuse (TooLarge) an adapter of `rank` whose slot storage would take the slots past `max_bytes`."""
        ...
