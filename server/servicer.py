"""gRPC servicer for loradock.v1.Inference: protobuf <-> the service's dataclasses, loradock errors -> status codes.

Nothing here decides anything: values are checked by the service (`service.py`), so the HTTP API checks them
the same way; errors become status codes in `status.py`, from the one error table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import grpc

from registry.errors import LoradockError

from .rpc import pb, pb_grpc
from .service import Generation, InferenceService
from .service_types import ChatMessage, GenerateRequest, GenerateResult, SamplingParams, WeightedAdapter
from .status import abort_with, public_message  # the error -> status mapping lives there (torch-free, shared with the registry service)

_abort = abort_with
log = logging.getLogger(__name__)

NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a very large time remaining


def generate_request(m: pb.GenerateRequest, timeout_s: float | None = None) -> GenerateRequest:
    p = m.params
    return GenerateRequest(
        adapter=m.adapter, prompt=m.prompt, messages=[ChatMessage(x.role, x.content) for x in m.messages],
        params=SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
                              seed=p.seed, stop=list(p.stop), repetition_penalty=p.repetition_penalty),
        routing_key=m.routing_key, merge=[WeightedAdapter(w.adapter, w.weight) for w in m.merge],
        merge_method=m.merge_method, merge_density=m.merge_density,
        merge_majority_sign_method=m.merge_majority_sign_method, request_id=m.request_id, timeout_s=timeout_s,
    )


def _timeout_s(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > NO_DEADLINE_S else max(0.0, remaining)


def _final_fields(result: GenerateResult) -> dict:
    fields = asdict(result)
    del fields["request_id"], fields["text"]
    return fields


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, service: InferenceService):
        self.service = service

    def _start(self, request, context) -> Generation:
        try:
            generation = self.service.submit(generate_request(request, _timeout_s(context)))
        except LoradockError as exc:  # counted in the stats by the service (never under an unresolved name)
            _abort(context, exc)
        context.add_callback(generation.cancel)  # client cancelled or went away: free the batch slot
        return generation

    def _failed(self, context, generation: Generation, exc: Exception):
        if isinstance(exc, LoradockError):  # the deadline passed (DEADLINE_EXCEEDED), or another table error
            _abort(context, exc)
        log.exception("request %s failed inside the model", generation.request_id)  # fails this request only
        context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {type(exc).__name__}: {public_message(exc)}")

    def Generate(self, request, context):
        generation = self._start(request, context)
        try:
            result = generation.result()
        except Exception as exc:
            self._failed(context, generation, exc)
        return pb.GenerateResponse(**asdict(result))

    def GenerateStream(self, request, context):
        generation = self._start(request, context)
        try:
            for delta in generation.deltas():
                yield pb.GenerateChunk(request_id=generation.request_id, text=delta)
            result = generation.result()
        except Exception as exc:
            self._failed(context, generation, exc)
        yield pb.GenerateChunk(request_id=result.request_id, text="", done=True, **_final_fields(result))

    def ListAdapters(self, request, context):
        try:
            adapters = self.service.list_adapters(request.loaded_only)
        except LoradockError as exc:
            _abort(context, exc)
        return pb.ListAdaptersResponse(adapters=[asdict(a) for a in adapters])

    def LoadAdapter(self, request, context):
        try:
            loaded = self.service.load_adapter(request.adapter, request.pin)
        except LoradockError as exc:
            _abort(context, exc)
        return pb.LoadAdapterResponse(**asdict(loaded))

    def UnloadAdapter(self, request, context):
        try:
            return pb.UnloadAdapterResponse(unloaded=self.service.unload_adapter(request.adapter))
        except LoradockError as exc:
            _abort(context, exc)

    def Feedback(self, request, context):
        try:
            self.service.record_feedback(request.request_id, request.score, request.label, request.correction)
        except LoradockError as exc:
            _abort(context, exc)
        return pb.FeedbackResponse(recorded=True)

    def ServerStats(self, request, context):
        return pb.ServerStatsResponse(**asdict(self.service.server_stats()))
