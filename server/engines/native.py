"""loradock's native engine: one Hugging Face model, one running batch, continuous batching across adapters.

A single thread owns the model. Each turn it admits waiting requests, up to `max_prefill_tokens` of prompt
(prefilling them together, left-padded, straight into free rows of the preallocated KV cache,
`row_cache.RowCache`), then runs one decode step for every row at once. Each row carries its adapter's
slot, so requests for different adapters (and the bare base) share every forward pass
(`server.lora.MultiLoraModel`). A row that finishes leaves at once: the last row takes its place, so no
step re-indexes the cache, and the adapter layers re-copy only the rows whose slot changed. On a CPU the
base's Linear layers run as oneDNN matmuls on weights packed at load (`packed.pack_linears`); on a Llama
base, decode steps skip the Hugging Face forward's per-layer Python (`decode_step.DecodeStep`, same logits).

It implements `server.engines.Engine`; its adapter slots are the `MultiLoraModel`'s (`server/lora.py`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from registry.modeling.lora import LoraTensors

from .. import limits
from ..errors import QueueFull, ServerShuttingDown
from ..lora import check_fits, load_lora_weights
from . import EngineRequest, EngineResult, EngineStats
from .decode_step import DecodeStep
from .prefix_cache import PrefixCache
from .row_cache import RowCache
from .sampler import sample_row

log = logging.getLogger(__name__)


class NativeHandle:
    """The caller's side of a submitted request (`server.engines.Handle`): stream deltas, wait for the result, cancel."""

    def __init__(self, seq: "_Sequence"):
        self._seq = seq

    @property
    def request_id(self) -> str:
        return self._seq.request.request_id

    def cancel(self) -> None:
        self._seq.cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._seq.cancelled

    def deltas(self, timeout: float | None = None) -> Iterator[str]:
        """Yield text deltas as they are decoded; ends when the request finishes (then `result()` is ready)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, payload = self._seq.events.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError from None
            if kind == "done":
                self._seq.events.put((kind, payload))  # keep it for result()
                return
            yield payload

    def result(self, timeout: float | None = None) -> EngineResult:
        if not self._seq.done.wait(timeout):
            raise TimeoutError
        assert self._seq.result is not None
        if self._seq.result.error is not None:
            raise self._seq.result.error
        return self._seq.result


@dataclass(eq=False)  # a request in flight is itself: compared by identity
class _Sequence:
    request: EngineRequest
    submitted_at: float
    events: "queue.Queue[tuple[str, object]]" = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    text: str = ""                       # `generated` decoded so far (whole characters)
    decoded: tuple[int, int] = (0, 0)    # incremental decoding's window: where its context starts, where text ends
    sent: int = 0                        # characters of text already streamed
    cancelled: bool = False
    admitted_at: float | None = None
    first_token_at: float | None = None
    generator: torch.Generator | None = None
    prefix: tuple[int, torch.Tensor] | None = None  # a kept prefix of its prompt: (tokens, keys/values)
    looked_up: bool = False
    result: EngineResult | None = None


class NativeEngine:
    """`lora`: the `MultiLoraModel` wrapping `model` (its slots are this engine's adapter slots); None serves the
    bare base only (the load tests' engine runs)."""

    def __init__(self, model, tokenizer, lora=None, max_batch_size: int = 16, max_queue: int = 256,
                 max_prefill_tokens: int = 512, prefix_cache_bytes: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.lora = lora
        self.slots = lora
        self.context_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()  # held for every forward; adapter slot writes take it too
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []  # row i of the running batch is row i of the cache
        self._cache = RowCache.for_model(model, max_batch_size)
        self._decode = DecodeStep.for_model(model, self._cache)  # None: decode steps run the full forward too
        self._prefixes = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._stopping = False
        self._accepting = True
        self._thread = threading.Thread(target=self.run, name="loradock-engine", daemon=True)
        self._ran = threading.Event()  # the loop has returned
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
        self.eos_ids = {e for e in eos_ids if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.decode_tokens = 0
        self.decode_seconds = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, thread: bool = True) -> "NativeEngine":
        if thread:
            self._thread.start()
        return self

    def run(self) -> None:
        """The engine's loop on the calling thread, until `stop()`: every forward runs on this thread.

        Torch's CPU ops run their OpenMP parallel regions fastest from the process's main thread (measured
        here, SmolLM2 on 2 cores: 16-row decode steps 39-57 ms there against 56-64 ms on another thread; a
        16-client load 160-195 against 109-113 tok/s), which `reg serve` gives it (`server/app.py`)."""
        try:
            self._run()
        finally:
            self._ran.set()

    def stop_accepting(self) -> None:
        self._accepting = False

    def stop(self, drain_s: float = 0.0) -> None:
        """Stop taking requests; let the running and queued ones finish for up to `drain_s`; then cancel the rest."""
        self.stop_accepting()
        with self._cond:  # the loop notifies whenever it goes idle
            self._cond.wait_for(lambda: not (self._waiting or self._active), timeout=drain_s)
            for seq in list(self._waiting) + list(self._active):
                seq.cancelled = True
            self._stopping = True
            self._cond.notify_all()
        self._ran.wait(timeout=30)

    @property
    def batch_size(self) -> int:
        return len(self._active)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            batch_size=self.batch_size, queue_depth=self.queue_depth, max_batch_size=self.max_batch_size,
            max_queue=self.max_queue,
            decode_tokens_per_s=self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0,
            slot_memory_bytes=self.lora.nbytes if self.lora is not None else 0,
            gathered_memory_bytes=self.lora.gathered_nbytes if self.lora is not None else 0,
            **({} if self._prefixes is None else dict(
                prefix_cache_bytes=self._prefixes.nbytes, prefix_query_tokens=self._prefixes.query_tokens,
                prefix_hit_tokens=self._prefixes.hit_tokens)),
        )

    # --- adapters in slot form ------------------------------------------------------------

    def load_adapter(self, adapter_dir: Path) -> LoraTensors:
        return load_lora_weights(adapter_dir, self.lora)

    def adapter_from_tensors(self, adapter: LoraTensors) -> LoraTensors:
        """A merged adapter is already in slot form (the slots fold its scaling in); check it fits the base."""
        check_fits(adapter, self.lora)
        return adapter

    def check_slot_memory(self, key: str, rank: int, max_bytes: int) -> None:
        limits.check_slot_memory(self.lora, key, rank, max_bytes)

    # --- submitting -----------------------------------------------------------------------

    def submit(self, request: EngineRequest) -> NativeHandle:
        seq = _Sequence(request, submitted_at=time.monotonic())
        if request.sampling.seed:
            seq.generator = torch.Generator().manual_seed(request.sampling.seed)
        with self._cond:
            self._check_room()
            self._waiting.append(seq)
            self._cond.notify_all()  # the loop, not a draining stop(), must wake
        return NativeHandle(seq)

    def check_room(self) -> None:
        """Raise what submit() would for a full queue or a stopping engine, before any work is spent on a request."""
        with self._cond:
            self._check_room()

    def _check_room(self) -> None:
        if not self._accepting:
            raise ServerShuttingDown("the server is shutting down and takes no new requests")
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} requests waiting); retry later")

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.notify_all()  # idle: wakes a stop() that drains
                    self._cond.wait()
                if self._stopping and not self._active and not self._waiting:
                    return
                admit, tokens = [], 0
                while self._waiting and len(self._active) + len(admit) < self.max_batch_size:
                    seq = self._waiting[0]
                    if seq.cancelled:
                        self._finish(self._waiting.popleft(), "cancelled")
                        continue
                    if self._prefixes is not None and not seq.looked_up:  # once, even if it waits a turn
                        seq.prefix, seq.looked_up = self._prefixes.lookup(self._owner(seq), seq.request.prompt_ids), True
                    tokens += len(seq.request.prompt_ids) - (seq.prefix[0] if seq.prefix else 0)
                    if admit and tokens > self.max_prefill_tokens:  # the rest wait for the next turn
                        break
                    admit.append(self._waiting.popleft())
            try:
                self._drop_cancelled()
                # All but the last prompt token kept: no prefill, the decode step below feeds that token.
                whole = [s.prefix is not None and s.prefix[0] == len(s.request.prompt_ids) - 1 for s in admit]
                if any(whole):
                    self._attach([s for s, w in zip(admit, whole) if w])
                if not all(whole):
                    self._prefill([s for s, w in zip(admit, whole) if not w])
                if self._active:
                    self._decode_step()
            except Exception as exc:  # a failure in a forward fails the rows in it, not the server
                for seq in list(self._active) + admit:
                    if seq.result is None:
                        self._finish(seq, "error", error=exc)
                self._active = []
                self._cache.clear()
            if self._stopping and not self._active and not self._waiting:
                return

    def _forward(self, input_ids, attention_mask, position_ids, slots, decode: bool = False):
        with self.lock, torch.inference_mode():
            context = self.lora.rows(slots) if self.lora is not None else nullcontext()
            with context:
                if decode and self._decode is not None:
                    logits = self._decode(input_ids, position_ids, attention_mask)
                else:
                    logits = self.model(
                        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        cache=self._cache, use_cache=True, logits_to_keep=1,
                    ).logits
        return logits[:, -1, :].float()

    def _prefill(self, seqs: list[_Sequence]) -> None:
        now = time.monotonic()
        for seq in seqs:
            seq.admitted_at = now
        kept = [seq.prefix[0] if seq.prefix else 0 for seq in seqs]  # prompt tokens whose keys/values are kept
        rest = [seq.request.prompt_ids[k:] for seq, k in zip(seqs, kept)]
        width = max(len(r) for r in rest)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        pad_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, r in enumerate(rest):
            ids[row, width - len(r):] = torch.tensor(r, dtype=torch.long)
            pad_mask[row, width - len(r):] = 1
        positions = (pad_mask.cumsum(-1) - 1).clamp(min=0) + torch.tensor(kept)[:, None]
        slots = torch.tensor([s.request.slot for s in seqs], dtype=torch.long)
        mask = self._cache.prefill_window(len(seqs), width, pad_mask, [seq.prefix for seq in seqs])
        for seq in seqs:
            seq.prefix = None  # the cache holds its own copy now
        logits = self._forward(ids.to(self.device), mask, positions.to(self.device), slots)
        first = self._cache.n
        self._cache.join(len(seqs))
        if self._prefixes is not None:
            for row, seq in enumerate(seqs, start=first):
                owner, prompt = self._owner(seq), seq.request.prompt_ids
                if not self._prefixes.holds(owner, prompt):
                    self._prefixes.store(owner, prompt, self._cache.prompt_kv(row))
        self._active.extend(seqs)
        self._emit(seqs, logits)

    def _owner(self, seq: _Sequence) -> tuple[int, int]:
        """What computes a row's keys and values: its slot, as long as that slot holds the same weights."""
        slot = seq.request.slot
        return slot, (self.lora.slot_version(slot) if self.lora is not None and slot else 0)

    def _attach(self, seqs: list[_Sequence]) -> None:
        """Rows whose whole prompt but its last token is kept join without a prefill forward of their own."""
        now = time.monotonic()
        self._cache.attach([seq.prefix for seq in seqs])
        for seq in seqs:
            seq.admitted_at, seq.prefix = now, None
        self._active.extend(seqs)

    def _decode_step(self) -> None:
        started = time.perf_counter()
        # A row attached without a prefill has generated nothing yet: its input is its prompt's last token.
        last = torch.tensor([[s.generated[-1] if s.generated else s.request.prompt_ids[-1]] for s in self._active],
                            dtype=torch.long, device=self.device)
        positions, mask = self._cache.decode_window()
        slots = torch.tensor([s.request.slot for s in self._active], dtype=torch.long)
        try:
            logits = self._forward(last, mask, positions, slots, decode=True)
        except BaseException:
            self._cache.undo_window()
            raise
        self._cache.advance()
        self.decode_seconds += time.perf_counter() - started
        self.decode_tokens += len(self._active)
        self._emit(list(self._active), logits)

    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each row's next token, stream it, and retire rows that are done (before their callers hear so)."""
        finished: list[tuple[_Sequence, str]] = []
        now = time.monotonic()
        argmax: list[int] | None = None  # every row's greedy token, in one op, once a row wants it
        for row, seq in enumerate(seqs):
            s = seq.request.sampling
            if s.greedy and s.repetition_penalty == 1.0:
                if argmax is None:
                    argmax = logits.argmax(-1).tolist()
                token = argmax[row]
            else:
                seen = torch.tensor(seq.request.prompt_ids + seq.generated, dtype=torch.long) if s.repetition_penalty != 1.0 else None
                token = sample_row(logits[row].cpu(), s, seq.generator, seen)
            if seq.first_token_at is None:
                seq.first_token_at = now
            reason = None
            if token in self.eos_ids:
                reason = "eos"
            else:
                seq.generated.append(token)
                reason = self._stream(seq)
                if reason is None and len(seq.generated) >= s.max_new_tokens:
                    reason = "length"
            if reason is not None or seq.cancelled:
                finished.append((seq, reason or "cancelled"))
        if finished:
            self._retire({id(seq) for seq, _ in finished})
        for seq, reason in finished:
            self._finish(seq, reason)

    def _stream(self, seq: _Sequence) -> str | None:
        """Send the newly decoded text; return "stop" when a stop string appeared."""
        text = self._decode_text(seq)
        stops = seq.request.sampling.stop
        if stops:
            hits = [i for i in (text.find(stop) for stop in stops) if i >= 0]
            if hits:
                cut = min(hits)
                if cut > seq.sent:
                    seq.events.put(("delta", text[seq.sent:cut]))
                seq.sent = cut
                return "stop"
        safe = len(text)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            safe = len(text.rstrip("\ufffd"))
        for stop in stops:  # hold back a possible beginning of a stop string
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    safe = min(safe, len(text) - k)
                    break
        if safe > seq.sent:
            seq.events.put(("delta", text[seq.sent:safe]))
            seq.sent = safe
        return None

    def _decode_text(self, seq: _Sequence) -> str:
        """`seq.generated` as text, as decoding it whole would give, decoding only its newest tokens (from the
        window before them, as a token's text can depend on the one before it) instead of all of them every
        step. Text that still ends in an incomplete character is returned but not kept: the next token may
        complete it."""
        start, end = seq.decoded
        if end == len(seq.generated):
            return seq.text
        before = self.tokenizer.decode(seq.generated[start:end], skip_special_tokens=True)
        now = self.tokenizer.decode(seq.generated[start:], skip_special_tokens=True)
        if len(now) <= len(before):
            return seq.text
        if now.endswith("\ufffd"):
            return seq.text + now[len(before):]
        seq.text += now[len(before):]
        seq.decoded = (end, len(seq.generated))
        return seq.text

    def _drop_cancelled(self) -> None:
        cancelled = [s for s in self._active if s.cancelled]
        if cancelled:
            self._retire({id(s) for s in cancelled})
        for seq in cancelled:
            self._finish(seq, "cancelled")

    def _retire(self, gone: set[int]) -> None:
        """Drop the rows of the sequences in `gone` (ids); the last row moves into each freed row."""
        for row in sorted((i for i, s in enumerate(self._active) if id(s) in gone), reverse=True):
            self._cache.remove(row)
            last = self._active.pop()
            if row < len(self._active):
                self._active[row] = last

    def _finish(self, seq: _Sequence, reason: str, error: BaseException | None = None) -> None:
        if seq.result is not None:
            return
        end = time.monotonic()
        full = self._decode_text(seq)
        if reason in ("eos", "length"):  # everything decoded counts, including text held back for stop strings
            if len(full) > seq.sent:
                seq.events.put(("delta", full[seq.sent:]))
                seq.sent = len(full)
            text = full
        else:  # a stop string (cut at it), a cancellation or an error: what was sent
            text = full[: seq.sent]
        reason = "stop" if reason == "eos" else reason
        admitted = seq.admitted_at or end
        seq.result = EngineResult(
            request_id=seq.request.request_id, text=text, finish_reason=reason,
            prompt_tokens=len(seq.request.prompt_ids), completion_tokens=len(seq.generated),
            queue_ms=(admitted - seq.submitted_at) * 1000,
            ttft_ms=((seq.first_token_at or end) - seq.submitted_at) * 1000, total_ms=(end - seq.submitted_at) * 1000,
            error=error,
        )
        if seq.request.on_finish is not None:
            try:
                seq.request.on_finish(seq.result)
            except Exception:  # bookkeeping must never take the engine down, nor fail unseen
                log.exception("recording the end of request %s failed", seq.request.request_id)
        seq.done.set()
        seq.events.put(("done", seq.result))


def load_native_engine(base, options) -> NativeEngine:
    """The base loaded once as `options.quant` asks, its decoder Linear layers wrapped for per-row adapter slots."""
    from registry.modeling.loading import load_base_model

    from ..lora import MultiLoraModel
    from .packed import pack_linears

    loaded = load_base_model(base, options.quant)
    lora = MultiLoraModel(loaded.model, max_slots=options.max_adapters, rank=options.lora_rank,
                          gather_cache_bytes=options.gather_cache_mb * 2**20)
    packed = pack_linears(loaded.model, batch_hint=options.max_batch_size)
    if packed:
        log.info("packed %d Linear layers of the base for oneDNN", packed)
    return NativeEngine(loaded.model, loaded.tokenizer, lora, options.max_batch_size, options.max_queue,
                        options.max_prefill_tokens, options.prefix_cache_mb * 2**20)
