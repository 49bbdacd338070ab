"""gRPC servicer for loradock.v1.Inference (errors become status codes in `status.py`, the one mapping)."""

from __future__ import annotations

import logging
import time

import grpc

from registry.errors import LoradockError

from .rpc import pb, pb_grpc
from .service import InferenceService
from .stats import percentile
from .status import abort_with, public_message  # the error -> status mapping lives there (torch-free, shared with the registry service)

_abort = abort_with
log = logging.getLogger(__name__)


def _final_fields(result) -> dict:
    return {
        "adapter_version": result.version, "variant": result.variant, "finish_reason": result.finish_reason,
        "usage": pb.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        "timing": pb.Timing(queue_ms=result.queue_ms, ttft_ms=result.ttft_ms, total_ms=result.total_ms),
    }


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, service: InferenceService):
        self.service = service

    def _start(self, request, context):
        try:
            handle, _ = self.service.submit(request)
        except LoradockError as exc:  # counted in the stats by the service (never under an unresolved name)
            _abort(context, exc)
        context.add_callback(handle.cancel)  # client cancelled or went away: free the batch slot
        return handle

    def _remaining(self, context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None or remaining > 1e8 else max(0.0, remaining)

    def Generate(self, request, context):
        handle = self._start(request, context)
        try:
            result = handle.result(timeout=self._remaining(context))
        except TimeoutError:
            handle.cancel()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded; the request was cancelled")
        except LoradockError as exc:
            _abort(context, exc)
        except Exception as exc:  # a failure inside the model fails this request only
            log.exception("request %s failed inside the model", handle.request_id)
            context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {type(exc).__name__}: {public_message(exc)}")
        return pb.GenerateResponse(request_id=result.request_id, text=result.text, **_final_fields(result))

    def GenerateStream(self, request, context):
        handle = self._start(request, context)
        try:
            for delta in handle.deltas(timeout=self._remaining(context)):
                yield pb.GenerateChunk(request_id=handle.request_id, text=delta)
            result = handle.result(timeout=5)
        except TimeoutError:
            handle.cancel()
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded; the request was cancelled")
        except Exception as exc:
            log.exception("request %s failed inside the model", handle.request_id)
            context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {type(exc).__name__}: {public_message(exc)}")
        yield pb.GenerateChunk(request_id=result.request_id, text="", done=True, **_final_fields(result))

    def ListAdapters(self, request, context):
        service = self.service
        loaded = dict(service.cache.entries)
        out = []
        try:
            if request.loaded_only:
                for key, e in loaded.items():
                    out.append(pb.AdapterInfo(name=key.split(":")[0], version=key, loaded=True, pinned=e.pinned, rank=e.rank,
                                              size_bytes=e.nbytes, requests=e.requests, base=service.base.name))
            else:
                for summary in service.registry.list_adapters():
                    if not summary.latest:
                        continue
                    v = service.registry.resolve(summary.name)
                    if v.base_digest != service.base.weights_digest:
                        continue  # not servable here
                    e = loaded.get(v.ref)
                    out.append(pb.AdapterInfo(
                        name=summary.name, version=v.ref, loaded=e is not None, pinned=bool(e and e.pinned),
                        peft_type=v.peft_type, rank=v.rank or 0, size_bytes=v.size_bytes,
                        aliases=[f"{a}->{n}" for a, n in summary.aliases.items()], requests=e.requests if e else 0,
                        base=v.base_name,
                    ))
        except LoradockError as exc:
            _abort(context, exc)
        return pb.ListAdaptersResponse(adapters=out)

    def LoadAdapter(self, request, context):
        started = time.perf_counter()
        try:
            version, entry, already = self.service.load_adapter(request.adapter, request.pin)
        except LoradockError as exc:
            _abort(context, exc)
        info = pb.AdapterInfo(name=version.adapter, version=version.ref, loaded=True, pinned=entry.pinned,
                              peft_type=version.peft_type, rank=version.rank or 0, size_bytes=version.size_bytes,
                              base=version.base_name)
        return pb.LoadAdapterResponse(adapter=info, load_ms=(time.perf_counter() - started) * 1000, already_loaded=already)

    def UnloadAdapter(self, request, context):
        try:
            return pb.UnloadAdapterResponse(unloaded=self.service.unload_adapter(request.adapter))
        except LoradockError as exc:
            _abort(context, exc)

    def Feedback(self, request, context):
        try:
            self.service.record_feedback(request.request_id, request.score, request.label)
        except LoradockError as exc:
            _abort(context, exc)
        return pb.FeedbackResponse(recorded=True)

    def ServerStats(self, request, context):
        s = self.service
        adapters = []
        for version, v in sorted(s.stats.snapshot().items()):
            lat, ttft = list(v.latency_ms), list(v.ttft_ms)
            adapters.append(pb.AdapterStats(
                version=version, requests=v.requests, errors=v.errors, prompt_tokens=v.prompt_tokens,
                completion_tokens=v.completion_tokens,
                latency=pb.LatencySummary(p50_ms=percentile(lat, .5), p95_ms=percentile(lat, .95), p99_ms=percentile(lat, .99)),
                ttft=pb.LatencySummary(p50_ms=percentile(ttft, .5), p95_ms=percentile(ttft, .95), p99_ms=percentile(ttft, .99)),
            ))
        cache = s.cache
        engine = s.engine
        return pb.ServerStatsResponse(
            base=s.base.name, quantization=s.quantization, adapters=adapters,
            cache=pb.CacheStats(hits=cache.hits, misses=cache.misses, evictions=cache.evictions, loaded=len(cache.entries),
                                max_adapters=cache.max_adapters, memory_bytes=cache.used_bytes, max_memory_bytes=cache.max_bytes,
                                slot_memory_bytes=s.lora.nbytes, gathered_memory_bytes=s.lora.gathered_nbytes),
            batch_size=engine.batch_size, queue_depth=engine.queue_depth, max_batch_size=engine.max_batch_size,
            max_queue=engine.max_queue, total_requests=s.stats.total_requests, uptime_s=time.time() - s.started,
            decode_tokens_per_s=engine.decode_tokens / engine.decode_seconds if engine.decode_seconds else 0.0,
        )
