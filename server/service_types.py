"""The inference service's requests and replies as plain dataclasses: what every transport converts to and from.

The gRPC servicer (`server/servicer.py`) turns protobuf messages into these and back; the HTTP API does the
same with its JSON bodies, so checks on values live once, in `server/service.py`. Field names are the
proto's (`proto/loradock/v1/`), so a reply converts as `pb.Message(**dataclasses.asdict(reply))`, and zero
values mean what they mean on the wire: 0 or "" is "the server's default" or "off", as each field says.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChatMessage:
    role: str                           # system, user or assistant
    content: str


@dataclass
class WeightedAdapter:
    adapter: str                        # NAME, NAME:N or NAME@ALIAS
    weight: float


@dataclass
class SamplingParams:
    max_new_tokens: int = 0             # 0 = the server's default (--default-max-new-tokens)
    temperature: float = 0.0            # 0 = greedy
    top_p: float = 0.0                  # 0 or 1 = off
    top_k: int = 0                      # 0 = off
    seed: int = 0                       # 0 = unseeded
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the text)
    repetition_penalty: float = 0.0     # 0 or 1 = off


@dataclass
class GenerateRequest:
    """One completion: a prompt (or chat messages) for an adapter ref, a merge of several, or the bare base."""

    adapter: str = ""                   # NAME, NAME:N or NAME@ALIAS; "" = the base
    prompt: str = ""                    # raw text (no chat template), or
    messages: list[ChatMessage] = field(default_factory=list)  # chat messages (the chat template is applied)
    params: SamplingParams = field(default_factory=SamplingParams)
    routing_key: str = ""               # sticky rollout routing (gRPC `routing_key`; OpenAI's `user`)
    merge: list[WeightedAdapter] = field(default_factory=list)  # serve this weighted combination instead of `adapter`
    merge_method: str = ""              # "" = cat
    merge_density: float = 0.0          # ties, dare_*, magnitude_prune: the fraction of values kept
    merge_majority_sign_method: str = ""  # ties, dare_ties: "" = total, or frequency
    request_id: str = ""                # echoed; generated when empty
    protocol: str = "grpc"              # the front it came through (grpc or http): a label on its metrics
    timeout_s: float | None = None
    """How long the caller waits (its RPC deadline or HTTP timeout), from when the service gets the request; past
    it the request is cancelled, its batch slot freed, and `DeadlineExceeded` raised. None: no limit."""


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Timing:
    queue_ms: float                     # submitted -> admitted into the running batch
    ttft_ms: float                      # submitted -> first token
    total_ms: float


@dataclass
class GenerateResult:
    request_id: str
    text: str
    adapter_version: str                # resolved NAME:N; "" for the base; a merge key for a merge
    variant: str                        # the rollout arm that served it, if any
    finish_reason: str                  # stop, length or cancelled
    usage: Usage
    timing: Timing


@dataclass
class AdapterInfo:
    name: str
    version: str                        # NAME:N (or a merge key, for a loaded merge)
    loaded: bool = False
    pinned: bool = False
    peft_type: str = ""
    rank: int = 0
    size_bytes: int = 0
    aliases: list[str] = field(default_factory=list)  # "ALIAS->N"
    requests: int = 0
    base: str = ""


@dataclass
class LoadedAdapter:
    adapter: AdapterInfo
    load_ms: float
    already_loaded: bool


@dataclass
class LatencySummary:
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class AdapterStats:
    version: str                        # NAME:N, a merge key, "base" or "unresolved"
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency: LatencySummary
    ttft: LatencySummary
    requests_last_minute: int           # requests (failed ones too) in the last 60 s; a rate is Prometheus's job on /metrics


@dataclass
class CacheStats:
    hits: int
    misses: int
    evictions: int
    loaded: int
    max_adapters: int
    memory_bytes: int
    max_memory_bytes: int
    slot_memory_bytes: int              # the engine's slot storage (all slots, padded as it pads them)
    gathered_memory_bytes: int          # per-row adapter copies the engine keeps between decode steps


@dataclass
class ServerStats:
    base: str
    quantization: str
    adapters: list[AdapterStats]
    cache: CacheStats
    batch_size: int                     # rows in the running batch now
    queue_depth: int                    # requests waiting to join it
    max_batch_size: int
    max_queue: int
    total_requests: int
    uptime_s: float
    decode_tokens_per_s: float
