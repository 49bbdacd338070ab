"""A small typed client for loradock's Inference service (used by `reg generate`, the demo, tests, load tests)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from .rpc import pb, pb_grpc


@dataclass
class Completion:
    request_id: str
    text: str
    adapter_version: str
    variant: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float

    @classmethod
    def from_pb(cls, m) -> "Completion":
        return cls(m.request_id, m.text, m.adapter_version, m.variant, m.finish_reason, m.usage.prompt_tokens,
                   m.usage.completion_tokens, m.timing.queue_ms, m.timing.ttft_ms, m.timing.total_ms)


class LoradockClient:
    """`LoradockClient("localhost:50051")`; every call takes `timeout` (seconds) as its gRPC deadline."""

    def __init__(self, target: str, timeout: float | None = 120.0, token: str | None = None, tls_ca: str | None = None):
        self.target = target
        self.timeout = timeout
        if tls_ca:
            from pathlib import Path

            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(target, credentials)
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None  # `reg serve --auth-tokens`

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "LoradockClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def request(prompt: str | None = None, adapter: str = "", messages: list[dict] | None = None, max_new_tokens: int = 0,
                temperature: float = 0.0, top_p: float = 0.0, top_k: int = 0, seed: int = 0, stop: list[str] | None = None,
                repetition_penalty: float = 0.0, routing_key: str = "", merge: list[tuple[str, float]] | None = None,
                merge_method: str = "", request_id: str = "", merge_density: float = 0.0,
                merge_majority_sign_method: str = ""):
        return pb.GenerateRequest(
            adapter=adapter, prompt=prompt or "", messages=[pb.ChatMessage(**m) for m in messages or []],
            params=pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                     seed=seed, stop=stop or [], repetition_penalty=repetition_penalty),
            routing_key=routing_key, merge=[pb.WeightedAdapter(adapter=a, weight=w) for a, w in merge or []],
            merge_method=merge_method, request_id=request_id, merge_density=merge_density,
            merge_majority_sign_method=merge_majority_sign_method,
        )

    def generate(self, prompt: str | None = None, timeout: float | None = None, **kwargs) -> Completion:
        reply = self.stub.Generate(self.request(prompt, **kwargs), timeout=timeout or self.timeout, metadata=self.metadata)
        return Completion.from_pb(reply)

    def stream(self, prompt: str | None = None, timeout: float | None = None, **kwargs) -> Iterator[pb.GenerateChunk]:
        """Chunks as they are decoded; the last has `done=True` and the final fields."""
        yield from self.stub.GenerateStream(self.request(prompt, **kwargs), timeout=timeout or self.timeout, metadata=self.metadata)

    def list_adapters(self, loaded_only: bool = False):
        request = pb.ListAdaptersRequest(loaded_only=loaded_only)
        return list(self.stub.ListAdapters(request, timeout=self.timeout, metadata=self.metadata).adapters)

    def load_adapter(self, adapter: str, pin: bool = False):
        return self.stub.LoadAdapter(pb.LoadAdapterRequest(adapter=adapter, pin=pin), timeout=self.timeout, metadata=self.metadata)

    def unload_adapter(self, adapter: str) -> bool:
        return self.stub.UnloadAdapter(pb.UnloadAdapterRequest(adapter=adapter), timeout=self.timeout, metadata=self.metadata).unloaded

    def feedback(self, request_id: str, score: float = 0.0, label: str = "", correction: str = "") -> bool:
        request = pb.FeedbackRequest(request_id=request_id, score=score, label=label, correction=correction)
        return self.stub.Feedback(request, timeout=self.timeout, metadata=self.metadata).recorded

    def stats(self):
        return self.stub.ServerStats(pb.ServerStatsRequest(), timeout=self.timeout, metadata=self.metadata)

    def wait_ready(self, timeout: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


def message_dict(message) -> dict:
    """A reply as a JSON-ready dict with the proto's field names, zeros included (`reg stats --json`)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
