"""The inference service: turns a GenerateRequest into an engine request, and everything around it.

Validation, chat templating, resolving adapter refs through the registry (so pushes and alias
moves are served on the next request), A/B rollouts of bare names (`router.py`; outcomes and
feedback recorded per arm off the request path by `rollout_worker.py`), base compatibility, the
adapter cache, per-request merges, stats and feedback. Transport-free: the gRPC servicer is a thin
layer over this.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from registry import Registry
from registry.bases import Base
from registry.db import utcnow
from registry.errors import BaseMismatch, LoradockError, NotFound
from registry.names import Ref, parse_ref
from registry.rollouts import FeedbackRecord

from .cache import AdapterCache, adapter_dir_for
from .engine import Engine, EngineRequest, Handle, Result
from .errors import BadRequest
from .limits import (
    check_feedback, check_merge_rank, check_merge_request, check_prompt_size, check_request_ids, check_slot_memory,
    max_prompt_bytes, merged_rank,
)
from .options import ServerOptions
from .rollout_worker import RolloutWorker
from .router import Choice, RolloutRouter
from .sampling import Sampling
from .stats import UNRESOLVED, Stats
from .status import status_for

MERGE_DEFAULT = "cat"
RECENT_REQUESTS = 100_000  # request_id -> (version, rollout arm), for Feedback


@dataclass
class Prepared:
    request: EngineRequest
    cache_key: str | None


class InferenceService:
    def __init__(self, registry: Registry, base: Base, model, tokenizer, lora, options: ServerOptions, quantization: str):
        self.registry = registry
        self.base = base
        self.tokenizer = tokenizer
        self.lora = lora
        self.options = options
        self.quantization = quantization
        self.context_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.max_prompt_bytes = max_prompt_bytes(options.max_prompt_bytes, self.context_len)
        self.engine = Engine(model, tokenizer, lora, options.max_batch_size, options.max_queue)
        self.cache = AdapterCache(lora, options.max_adapters, options.adapter_memory_mb * 2**20, self.engine.lock)
        self.stats = Stats()
        self.recent: OrderedDict[str, tuple[str, Choice | None]] = OrderedDict()
        self.router = RolloutRouter()
        self.rollout_worker = RolloutWorker(registry.new_connection(), self.router)  # its own connection
        self.started = time.time()
        self.adapter_files = registry.home / "cache" / "adapters"

    def start(self) -> "InferenceService":
        self.rollout_worker.start()
        self.engine.start()
        return self

    def stop(self, drain_s: float = 0.0) -> None:
        self.engine.stop(drain_s)
        self.rollout_worker.stop()  # after the engine, so the last outcomes are written too

    # --- requests -------------------------------------------------------------------------

    def submit(self, req) -> tuple[Handle, Prepared]:
        prepared = self.prepare(req)
        try:
            return self.engine.submit(prepared.request), prepared
        except Exception as exc:
            if prepared.cache_key:
                self.cache.release(prepared.cache_key)
            if isinstance(exc, LoradockError):
                self.stats.record(prepared.request.version, ok=False)
            raise

    def prepare(self, req) -> Prepared:
        """Validate and tokenize; resolve and load the adapter. Raises loradock errors (mapped by the servicer).

        A request that fails counts in the stats of the version it resolved to, or in one `unresolved` bucket
        (an unknown or malformed name must not add a stats entry of its own)."""
        resolved: list[str] = []
        try:
            return self._prepare(req, resolved)
        except LoradockError:
            self.stats.record(resolved[-1] if resolved else UNRESOLVED, ok=False)
            raise

    def _prepare(self, req, resolved: list[str]) -> Prepared:
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
                version, key, slot = self._acquire_adapter(ref, resolved)
            except LoradockError as exc:  # the arm failed this request (e.g. its stored weights are corrupt)
                if choice:
                    self.rollout_worker.record_outcome(choice, request_id, _status_name(exc))
                raise
        def on_finish(result: Result) -> None:
            if key:
                self.cache.release(key)
            self.stats.record(version, result.error is None, result.prompt_tokens, result.completion_tokens,
                              result.total_ms, result.ttft_ms)
            self._remember(result.request_id, version, choice)
            if choice:
                self.rollout_worker.record_outcome(choice, result.request_id, _status_name(result.error, result.finish_reason),
                                                   result)

        variant = choice.arm if choice else ""
        return Prepared(EngineRequest(request_id, prompt_ids, sampling, slot, version, variant, on_finish), key)

    def _sampling(self, p) -> Sampling:
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

    def _prompt_ids(self, req) -> list[int]:
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
            check_slot_memory(self.lora, version.ref, version.rank, self.cache.max_bytes)
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
        from .lora import load_lora_weights

        return load_lora_weights(self._local_dir(version), self.lora)

    def _acquire_merge(self, req) -> tuple[str, str, int]:
        from .merge import MERGE_METHODS, merge_key

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
            parts.append((version, float(f"{item.weight:.7g}")))  # the wire is float32: 0.7 arrives as 0.69999998
        key = merge_key([(v.ref, w) for v, w in parts], method, density=density, majority_sign_method=sign)
        if all(v.rank for v, _ in parts):  # refuse an oversized merge before reading any file
            rank = merged_rank(method, [v.rank for v, _ in parts])
            check_merge_rank(key, rank, self.options.max_merge_rank)
            check_slot_memory(self.lora, key, rank, self.cache.max_bytes)
        entry = self.cache.acquire(key, lambda: self._load_merge(parts, method, density, sign, key))
        return key, key, entry.slot

    def _load_merge(self, parts, method: str, density: float | None, sign: str, key: str):
        """PEFT's weighted-adapter math on the versions' files, placed in a slot like any adapter."""
        from .lora import LoraWeights, check_fits
        from .merge import merge_adapters, read_lora_adapter

        merged = merge_adapters([(read_lora_adapter(self._local_dir(v)), w) for v, w in parts], method,
                                density=density, majority_sign_method=sign)
        modules = {m: (merged.lora_A[m].float().contiguous(), (merged.lora_B[m].float() * merged.scaling[m]).contiguous())
                   for m in merged.lora_A}
        weights = LoraWeights(modules, rank=max(a.shape[0] for a, _ in modules.values()),
                              nbytes=sum(a.nbytes + b.nbytes for a, b in modules.values()))
        check_merge_rank(key, weights.rank, self.options.max_merge_rank)
        check_fits(weights, self.lora)
        return weights

    # --- the other RPCs -------------------------------------------------------------------

    def load_adapter(self, ref: str, pin: bool):
        version = self.registry.resolve(parse_ref(ref))
        self._check_compatible(version)
        already = version.ref in self.cache.entries
        entry = self.cache.acquire(version.ref, lambda: self._load_version(version), pin=pin)
        self.cache.release(version.ref)
        return version, entry, already

    def unload_adapter(self, ref: str) -> bool:
        parsed = parse_ref(ref)
        key = str(parsed) if parsed.version is not None else self.registry.resolve(parsed).ref
        return self.cache.unload(key)

    def _remember(self, request_id: str, version: str, choice: Choice | None) -> None:
        self.recent[request_id] = (version, choice)
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    def record_feedback(self, request_id: str, score: float, label: str) -> FeedbackRecord:
        """Attach an outcome to a recent request; stored (with its rollout arm, if any) by the rollout worker.

        `score`: finite, within +-1e6 (the rollout report reads its sign and mean); `label`: 1-64 letters, digits, _.:-"""
        check_feedback(score, label)
        if request_id not in self.recent:
            raise NotFound(f"no recent request with id {request_id[:128]!r} (feedback is accepted for the last {RECENT_REQUESTS:,} requests)")
        version, choice = self.recent[request_id]
        name, _, number = version.rpartition(":")
        adapter, number = (name, int(number)) if number.isdigit() else (version, None)  # the base or a merge: no number
        record = FeedbackRecord(
            request_id, adapter, number, choice.revision if choice else None, choice.arm if choice else "",
            None if score == 0 and label else score, label, utcnow(),  # on the wire an absent score reads 0
        )
        self.rollout_worker.record_feedback(record)
        return record


def _status_name(error: BaseException | None, finish_reason: str = "") -> str:
    """The gRPC status a request ended with, as the servicer maps it (CANCELLED for a client's cancel)."""
    if error is not None:
        return status_for(error).name
    return "CANCELLED" if finish_reason == "cancelled" else "OK"
