"""The inference service: turns a GenerateRequest into an engine request, and everything around it.

Validation, chat templating, resolving adapter refs through the registry (so pushes and alias
moves are served on the next request), A/B rollouts of bare names (`router.py`; outcomes and
feedback recorded per arm off the request path by `rollout_worker.py`), base compatibility, the
adapter cache, per-request merges, stats and feedback.

Transport-free: it takes and returns the dataclasses of `service_types.py`, raises loradock errors
(each transport maps them through the one error table), and knows no wire type; the gRPC servicer
and the HTTP API are thin layers over it. It drives its engine only through `server.engines.Engine`
(the engine is chosen where the service is built, `server/app.py:load_service`).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from registry import Registry
from registry.bases import Base
from registry.db import utcnow
from registry.errors import BaseMismatch, DeadlineExceeded, LoradockError, NotFound
from registry.names import Ref, parse_ref
from registry.capture import CapturedRequest
from registry.rollouts import FeedbackRecord

from .cache import AdapterCache, adapter_dir_for
from .engines import Engine, EngineRequest, EngineResult, Handle, Sampling
from .errors import BadRequest
from .limits import (
    check_feedback, check_merge_rank, check_merge_request, check_prompt_size, check_request_ids, max_prompt_bytes,
    merged_rank,
)
from .metrics import ServerMetrics
from .options import ServerOptions
from .rollout_worker import RolloutWorker
from .router import Choice, RolloutRouter
from .service_types import (
    AdapterInfo, AdapterStats, CacheStats, GenerateRequest, GenerateResult, LatencySummary, LoadedAdapter, SamplingParams,
    ServerStats, Timing, Usage,
)
from .stats import UNRESOLVED, Stats, percentile

MERGE_DEFAULT = "cat"
RECENT_REQUESTS = 100_000  # request_id -> (version, rollout arm), for Feedback


class Generation:
    """A submitted request as a transport sees it: its text as it is decoded, its result, cancel.

    The caller's deadline (`GenerateRequest.timeout_s`) is kept here, so every transport cancels a request
    whose caller stopped waiting the same way: the batch slot is freed and `DeadlineExceeded` raised."""

    def __init__(self, handle: Handle, version: str, variant: str, deadline: float | None):
        self._handle = handle
        self.version = version
        self.variant = variant
        self._deadline = deadline  # time.monotonic() instant, or None

    @property
    def request_id(self) -> str:
        return self._handle.request_id

    def cancel(self) -> None:
        """The caller went away (or cancelled): free the batch slot at the engine's next step."""
        self._handle.cancel()

    def deltas(self) -> Iterator[str]:
        try:
            yield from self._handle.deltas(timeout=self._remaining())
        except TimeoutError:
            raise self._expired() from None

    def result(self) -> GenerateResult:
        """The finished request; raises DeadlineExceeded, or the error that failed it inside the engine."""
        try:
            r = self._handle.result(timeout=self._remaining())
        except TimeoutError:
            raise self._expired() from None
        return GenerateResult(r.request_id, r.text, self.version, self.variant, r.finish_reason,
                              Usage(r.prompt_tokens, r.completion_tokens), Timing(r.queue_ms, r.ttft_ms, r.total_ms))

    def _remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _expired(self) -> DeadlineExceeded:
        self._handle.cancel()
        return DeadlineExceeded("deadline exceeded; the request was cancelled")


class InferenceService:
    def __init__(self, registry: Registry, base: Base, engine: Engine, options: ServerOptions, quantization: str):
        """`engine`: not started yet (`start()` starts it); the service writes adapters into its slots."""
        self.registry = registry
        self.base = base
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.options = options
        self.quantization = quantization
        self.context_len = engine.context_len
        self.max_prompt_bytes = max_prompt_bytes(options.max_prompt_bytes, self.context_len)
        self.cache = AdapterCache(engine.slots, options.max_adapters, options.adapter_memory_mb * 2**20, engine.lock)
        self.stats = Stats()
        self.recent: OrderedDict[str, tuple[str, Choice | None]] = OrderedDict()
        self.router = RolloutRouter()
        self.rollout_worker = RolloutWorker(registry.new_connection(), self.router)  # its own connection
        self.started = time.time()
        self.adapter_files = registry.home / "cache" / "adapters"
        self.metrics = ServerMetrics(self)  # Prometheus, over this service's stats (GET /metrics)

    def start(self, engine_thread: bool = True) -> "InferenceService":
        """`engine_thread=False`: the caller runs the engine's loop on a thread of its own (`engine.run()`)."""
        self.rollout_worker.start()
        self.engine.start(thread=engine_thread)
        return self

    def stop_accepting(self) -> None:
        """The start of a drain: new requests are refused (UNAVAILABLE / 503), those in flight go on."""
        self.engine.stop_accepting()

    def stop(self, drain_s: float = 0.0) -> None:
        self.engine.stop(drain_s)
        self.rollout_worker.stop()  # after the engine, so the last outcomes are written too

    # --- requests -------------------------------------------------------------------------

    def submit(self, req: GenerateRequest) -> Generation:
        """Validate and tokenize; resolve and load the adapter; queue it in the engine. Raises loradock errors.

        A request that fails counts in the stats of the version it resolved to, or in one `unresolved` bucket
        (an unknown or malformed name must not add a stats entry of its own)."""
        deadline = None if req.timeout_s is None else time.monotonic() + req.timeout_s
        resolved: list[str] = []
        try:
            request, version, variant, key = self._prepare(req, resolved)
        except LoradockError as exc:
            self.stats.record(resolved[-1] if resolved else UNRESOLVED, ok=False, protocol=req.protocol,
                              outcome=_status_name(exc).lower())
            raise
        try:
            return Generation(self.engine.submit(request), version, variant, deadline)
        except Exception as exc:
            if key:
                self.cache.release(key)
            if isinstance(exc, LoradockError):
                self.stats.record(version, ok=False, variant=variant, protocol=req.protocol,
                                  outcome=_status_name(exc).lower())
            raise

    def _prepare(self, req: GenerateRequest, resolved: list[str]) -> tuple[EngineRequest, str, str, str | None]:
        """The engine request, the version and rollout arm that serve it, and the cache key it holds (if any)."""
        self.engine.check_room()  # a full queue answers at once, not after tokenizing and loading an adapter
        if req.adapter and len(req.merge):
            raise BadRequest("give either `adapter` or `merge`, not both")
        check_request_ids(req)
        sampling = self._sampling(req.params)
        prompt_ids = self._prompt_ids(req)
        room = self.context_len - len(prompt_ids)
        if room <= 0:
            raise BadRequest(f"prompt is {len(prompt_ids)} tokens; the base's context is {self.context_len}")
        sampling.max_new_tokens = min(sampling.max_new_tokens, room)
        request_id = req.request_id or uuid.uuid4().hex
        version, key, slot, choice = "", None, 0, None
        if len(req.merge):
            version, key, slot = self._acquire_merge(req)
        elif req.adapter:
            ref, choice = self._route(req.adapter, req.routing_key)
            try:
                # through the metrics' adapter activity: the endpoint picker reads which names are in use (server/metrics.py)
                version, key, slot = self.metrics.adapters.acquire(req.adapter, lambda: self._acquire_adapter(ref, resolved))
            except LoradockError as exc:  # the arm failed this request (e.g. its stored weights are corrupt)
                if choice:
                    self.rollout_worker.record_outcome(choice, request_id, _status_name(exc))
                raise
        variant = choice.arm if choice else ""

        def on_finish(result: EngineResult) -> None:
            if key:
                self.cache.release(key)
            status = _status_name(result.error, result.finish_reason)
            self.stats.record(version, result.error is None, result.prompt_tokens, result.completion_tokens,
                              result.total_ms, result.ttft_ms, variant=variant, protocol=req.protocol,
                              outcome=status.lower())
            self._remember(result.request_id, version, choice)
            if choice:
                self.rollout_worker.record_outcome(choice, result.request_id, status, result)
            if result.error is None:
                self._capture(req, version, choice, result)
            self.metrics.observe_finished(result, req.protocol)  # never raises
        return EngineRequest(request_id, prompt_ids, sampling, slot, on_finish), version, variant, key

    def _sampling(self, p: SamplingParams) -> Sampling:
        limit = self.options.max_new_tokens_limit
        max_new = p.max_new_tokens or self.options.default_max_new_tokens
        checks = [
            (1 <= max_new <= limit, f"params.max_new_tokens={p.max_new_tokens}: allowed 1..{limit} (0 = {self.options.default_max_new_tokens})"),
            (0.0 <= p.temperature <= 5.0 and math.isfinite(p.temperature), f"params.temperature={p.temperature}: allowed 0..5 (0 = greedy)"),
            (0.0 <= p.top_p <= 1.0, f"params.top_p={p.top_p}: allowed 0..1 (0 or 1 = off)"),
            (0 <= p.top_k <= 100_000, f"params.top_k={p.top_k}: allowed 0..100000 (0 = off)"),
            (p.repetition_penalty == 0 or 0.5 <= p.repetition_penalty <= 3.0,
             f"params.repetition_penalty={p.repetition_penalty}: allowed 0.5..3 (0 or 1 = off)"),
            (len(p.stop) <= 8 and all(0 < len(s) <= 64 for s in p.stop), "params.stop: at most 8 non-empty strings of up to 64 characters"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadRequest(message)
        return Sampling(
            max_new_tokens=max_new, temperature=p.temperature, top_p=p.top_p or 1.0, top_k=p.top_k,
            seed=p.seed or None, stop=tuple(p.stop), repetition_penalty=p.repetition_penalty or 1.0,
        )

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        if req.messages and req.prompt:
            raise BadRequest("give either `prompt` or `messages`, not both")
        check_prompt_size(req, self.max_prompt_bytes, self.context_len)  # bytes first: never tokenize what cannot fit
        if req.messages:
            messages = []
            for i, m in enumerate(req.messages):
                if m.role not in ("system", "user", "assistant"):
                    raise BadRequest(f"messages[{i}].role={m.role!r}: use system, user or assistant")
                messages.append({"role": m.role, "content": m.content})
            if self.tokenizer.chat_template:
                return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                               return_dict=True)["input_ids"])
            return self.tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
        if not req.prompt:
            raise BadRequest("empty request: give `prompt` or `messages`")
        return self.tokenizer(req.prompt)["input_ids"]

    def _route(self, text: str, routing_key: str) -> tuple[Ref, Choice | None]:
        """A bare NAME with a rollout goes to one of its arms; NAME:N and NAME@ALIAS bypass rollouts."""
        ref = parse_ref(text)
        choice = self.router.pick_arm(ref.name, routing_key) if ref.version is None and ref.alias is None else None
        return (Ref(ref.name, version=choice.version) if choice else ref), choice

    def _acquire_adapter(self, ref: Ref, resolved: list[str]) -> tuple[str, str, int]:
        version = self.registry.resolve(ref)
        resolved.append(version.ref)
        self._check_compatible(version)
        if version.rank:  # before reading its files; the cache checks the rank it really has
            self.engine.check_slot_memory(version.ref, version.rank, self.cache.max_bytes)
        entry = self.cache.acquire(version.ref, lambda: self._load_version(version))
        return version.ref, version.ref, entry.slot

    def _check_compatible(self, version) -> None:
        if version.base_digest != self.base.weights_digest:
            raise BaseMismatch(
                f"{version.ref} was trained on base {version.base_name} ({version.base_digest[:19]}), but this server "
                f"serves {self.base.name} ({self.base.weights_digest[:19]})"
            )

    def _local_dir(self, version) -> Path:
        path = adapter_dir_for(self.adapter_files, version.manifest_digest)
        if not (path / "adapter_model.safetensors").exists():
            self.registry.pull(version.ref, path, force=True)  # digest-verified
        return path

    def _load_version(self, version):
        return self.engine.load_adapter(self._local_dir(version))

    def _acquire_merge(self, req: GenerateRequest) -> tuple[str, str, int]:
        from registry.modeling.merge import MERGE_METHODS, merge_key

        method = req.merge_method or MERGE_DEFAULT
        if method not in MERGE_METHODS:
            raise BadRequest(f"merge_method={method[:64]!r}: use one of {', '.join(MERGE_METHODS)}")
        density, sign = check_merge_request(req, self.options.max_merge_adapters)
        parts = []
        for i, item in enumerate(req.merge):
            if not item.adapter:
                raise BadRequest(f"merge[{i}].adapter is empty")
            if not math.isfinite(item.weight) or item.weight == 0:
                raise BadRequest(f"merge[{i}].weight={item.weight}: must be a non-zero finite number")
            version = self.registry.resolve(parse_ref(item.adapter))
            self._check_compatible(version)
            # 7 significant digits, a float32's: gRPC's 0.7 arrives as 0.69999998, and must key the same merge as 0.7
            parts.append((version, float(f"{item.weight:.7g}")))
        key = merge_key([(v.ref, w) for v, w in parts], method, density=density, majority_sign_method=sign)
        if all(v.rank for v, _ in parts):  # refuse an oversized merge before reading any file
            rank = merged_rank(method, [v.rank for v, _ in parts])
            check_merge_rank(key, rank, self.options.max_merge_rank)
            self.engine.check_slot_memory(key, rank, self.cache.max_bytes)
        entry = self.cache.acquire(key, lambda: self._load_merge(parts, method, density, sign, key))
        return key, key, entry.slot

    def _load_merge(self, parts, method: str, density: float | None, sign: str, key: str):
        """PEFT's weighted-adapter math on the versions' files, placed in a slot like any adapter."""
        from registry.modeling.lora import read_lora
        from registry.modeling.merge import merge_adapters

        merged = merge_adapters([(read_lora(self._local_dir(v), "merge"), w) for v, w in parts], method,
                                density=density, majority_sign_method=sign)
        check_merge_rank(key, merged.rank, self.options.max_merge_rank)
        return self.engine.adapter_from_tensors(merged)

    # --- adapters, feedback, stats --------------------------------------------------------

    def list_adapters(self, loaded_only: bool = False) -> list[AdapterInfo]:
        """What this server can serve: each adapter's latest version trained on this base (or, with `loaded_only`,
        what sits in the adapter cache now, merges included)."""
        loaded = dict(self.cache.entries)
        if loaded_only:
            return [AdapterInfo(name=key.split(":")[0], version=key, loaded=True, pinned=e.pinned, rank=e.rank,
                                size_bytes=e.nbytes, requests=e.requests, base=self.base.name) for key, e in loaded.items()]
        out = []
        for summary in self.registry.list_adapters():
            if not summary.latest:
                continue
            v = self.registry.resolve(summary.name)
            if v.base_digest != self.base.weights_digest:
                continue  # not servable here
            e = loaded.get(v.ref)
            out.append(AdapterInfo(
                name=summary.name, version=v.ref, loaded=e is not None, pinned=bool(e and e.pinned),
                peft_type=v.peft_type, rank=v.rank or 0, size_bytes=v.size_bytes,
                aliases=[f"{a}->{n}" for a, n in summary.aliases.items()], requests=e.requests if e else 0,
                base=v.base_name,
            ))
        return out

    def load_adapter(self, ref: str, pin: bool = False) -> LoadedAdapter:
        started = time.perf_counter()
        version = self.registry.resolve(parse_ref(ref))
        self._check_compatible(version)
        already = version.ref in self.cache.entries
        entry = self.cache.acquire(version.ref, lambda: self._load_version(version), pin=pin)
        self.cache.release(version.ref)
        info = AdapterInfo(name=version.adapter, version=version.ref, loaded=True, pinned=entry.pinned,
                           peft_type=version.peft_type, rank=version.rank or 0, size_bytes=version.size_bytes,
                           base=version.base_name)
        return LoadedAdapter(info, load_ms=(time.perf_counter() - started) * 1000, already_loaded=already)

    def unload_adapter(self, ref: str) -> bool:
        parsed = parse_ref(ref)
        key = str(parsed) if parsed.version is not None else self.registry.resolve(parsed).ref
        return self.cache.unload(key)

    def _capture(self, req: GenerateRequest, version: str, choice: Choice | None, result: EngineResult) -> None:
        """Keep a sample of a served request of an adapter with capture on, redacted, for the worker to store."""
        name, _, number = version.rpartition(":")
        found = self.rollout_worker.capture.get(name) if number.isdigit() else None  # never the base or a merge
        if found is None or random.random() >= found[0].sample:
            return
        redact = found[1]
        self.rollout_worker.record_capture(CapturedRequest(
            name, int(number), choice.revision if choice else None, choice.arm if choice else "", result.request_id,
            (choice.key_hash or "") if choice else "", redact(req.prompt) if not req.messages else "",
            [{"role": m.role, "content": redact(m.content)} for m in req.messages], redact(result.text), "OK",
            result.total_ms, utcnow()))

    def _remember(self, request_id: str, version: str, choice: Choice | None) -> None:
        self.recent[request_id] = (version, choice)
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    def record_feedback(self, request_id: str, score: float, label: str, correction: str = "") -> FeedbackRecord:
        """Attach an outcome to a recent request; stored (with its rollout arm, if any) by the rollout worker.

        `score`: finite, within +-1e6 (the rollout report reads its sign and mean); `label`: 1-64 letters, digits, _.:-;
        `correction`: the response it should have given, kept (redacted) only while the adapter's capture is on.

        A replica of a fleet (a remote registry) also takes feedback for a request it did not serve: behind a load
        balancer another replica may have. It goes to the registry without an adapter, which places it with that
        request's outcome or capture (`registry.rollouts.Rollouts.record`); its correction is dropped, since
        only the serving replica knows which adapter's redaction applies."""
        check_feedback(score, label, correction)
        if request_id not in self.recent:
            if self.registry.is_local:
                raise NotFound(f"no recent request with id {request_id[:128]!r} (feedback is accepted for the last "
                               f"{RECENT_REQUESTS:,} requests)")
            record = FeedbackRecord(request_id, "", None, None, "", None if score == 0 and label else score, label,
                                    utcnow())
            self.rollout_worker.record_feedback(record)
            return record
        version, choice = self.recent[request_id]
        name, _, number = version.rpartition(":")
        adapter, number = (name, int(number)) if number.isdigit() else (version, None)  # the base or a merge: no number
        capture = self.rollout_worker.capture.get(adapter) if number is not None else None
        record = FeedbackRecord(
            request_id, adapter, number, choice.revision if choice else None, choice.arm if choice else "",
            None if score == 0 and label else score, label, utcnow(),  # on the wire an absent score reads 0
            capture[1](correction) if capture and correction else "",
        )
        self.rollout_worker.record_feedback(record)
        return record

    def server_stats(self) -> ServerStats:
        adapters = []
        for version, v in sorted(self.stats.snapshot().items()):
            adapters.append(AdapterStats(version, v.requests, v.errors, v.prompt_tokens, v.completion_tokens,
                                         _summary(list(v.latency_ms)), _summary(list(v.ttft_ms)),
                                         v.requests_last_minute))
        cache, engine = self.cache, self.engine.stats()
        return ServerStats(
            base=self.base.name, quantization=self.quantization, adapters=adapters,
            cache=CacheStats(hits=cache.hits, misses=cache.misses, evictions=cache.evictions, loaded=len(cache.entries),
                             max_adapters=cache.max_adapters, memory_bytes=cache.used_bytes, max_memory_bytes=cache.max_bytes,
                             slot_memory_bytes=engine.slot_memory_bytes, gathered_memory_bytes=engine.gathered_memory_bytes),
            batch_size=engine.batch_size, queue_depth=engine.queue_depth, max_batch_size=engine.max_batch_size,
            max_queue=engine.max_queue, total_requests=self.stats.total_requests, uptime_s=time.time() - self.started,
            decode_tokens_per_s=engine.decode_tokens_per_s,
        )


def _summary(values: list[float]) -> LatencySummary:
    return LatencySummary(percentile(values, .5), percentile(values, .95), percentile(values, .99))


def _status_name(error: BaseException | None, finish_reason: str = "") -> str:
    """The status a request ended with, by its gRPC name in the error table (CANCELLED for a client's cancel)."""
    if error is not None:
        return error.grpc_status if isinstance(error, LoradockError) else "INTERNAL"
    return "CANCELLED" if finish_reason == "cancelled" else "OK"
