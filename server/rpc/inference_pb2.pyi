from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "repetition_penalty")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    repetition_penalty: float
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class WeightedAdapter(_message.Message):
    __slots__ = ("adapter", "weight")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    weight: float
    def __init__(self, adapter: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("adapter", "prompt", "messages", "params", "routing_key", "merge", "merge_method", "request_id", "merge_density", "merge_majority_sign_method")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    MERGE_METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MERGE_MAJORITY_SIGN_METHOD_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    params: SamplingParams
    routing_key: str
    merge: _containers.RepeatedCompositeFieldContainer[WeightedAdapter]
    merge_method: str
    request_id: str
    merge_density: float
    merge_majority_sign_method: str
    def __init__(self, adapter: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., routing_key: _Optional[str] = ..., merge: _Optional[_Iterable[_Union[WeightedAdapter, _Mapping]]] = ..., merge_method: _Optional[str] = ..., request_id: _Optional[str] = ..., merge_density: _Optional[float] = ..., merge_majority_sign_method: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "ttft_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    ttft_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "adapter_version", "variant", "finish_reason", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    adapter_version: str
    variant: str
    finish_reason: str
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., adapter_version: _Optional[str] = ..., variant: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("request_id", "text", "done", "adapter_version", "variant", "finish_reason", "usage", "timing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    done: bool
    adapter_version: str
    variant: str
    finish_reason: str
    usage: Usage
    timing: Timing
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., done: _Optional[bool] = ..., adapter_version: _Optional[str] = ..., variant: _Optional[str] = ..., finish_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("loaded_only",)
    LOADED_ONLY_FIELD_NUMBER: _ClassVar[int]
    loaded_only: bool
    def __init__(self, loaded_only: _Optional[bool] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "version", "loaded", "pinned", "peft_type", "rank", "size_bytes", "aliases", "requests", "base")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PEFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    loaded: bool
    pinned: bool
    peft_type: str
    rank: int
    size_bytes: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    requests: int
    base: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., loaded: _Optional[bool] = ..., pinned: _Optional[bool] = ..., peft_type: _Optional[str] = ..., rank: _Optional[int] = ..., size_bytes: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., requests: _Optional[int] = ..., base: _Optional[str] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("adapter", "pin")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    pin: bool
    def __init__(self, adapter: _Optional[str] = ..., pin: _Optional[bool] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("adapter", "load_ms", "already_loaded")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LOADED_FIELD_NUMBER: _ClassVar[int]
    adapter: AdapterInfo
    load_ms: float
    already_loaded: bool
    def __init__(self, adapter: _Optional[_Union[AdapterInfo, _Mapping]] = ..., load_ms: _Optional[float] = ..., already_loaded: _Optional[bool] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    def __init__(self, adapter: _Optional[str] = ...) -> None: ...

class UnloadAdapterResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "score", "label", "correction")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    label: str
    correction: str
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., correction: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    def __init__(self, recorded: _Optional[bool] = ...) -> None: ...

class ServerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "p99_ms")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class AdapterStats(_message.Message):
    __slots__ = ("version", "requests", "errors", "prompt_tokens", "completion_tokens", "latency", "ttft", "requests_last_minute")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    version: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency: LatencySummary
    ttft: LatencySummary
    requests_last_minute: int
    def __init__(self, version: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency: _Optional[_Union[LatencySummary, _Mapping]] = ..., ttft: _Optional[_Union[LatencySummary, _Mapping]] = ..., requests_last_minute: _Optional[int] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("hits", "misses", "evictions", "loaded", "max_adapters", "memory_bytes", "max_memory_bytes", "slot_memory_bytes", "gathered_memory_bytes")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MAX_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SLOT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GATHERED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    hits: int
    misses: int
    evictions: int
    loaded: int
    max_adapters: int
    memory_bytes: int
    max_memory_bytes: int
    slot_memory_bytes: int
    gathered_memory_bytes: int
    def __init__(self, hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., loaded: _Optional[int] = ..., max_adapters: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., max_memory_bytes: _Optional[int] = ..., slot_memory_bytes: _Optional[int] = ..., gathered_memory_bytes: _Optional[int] = ...) -> None: ...

class ServerStatsResponse(_message.Message):
    __slots__ = ("base", "quantization", "adapters", "cache", "batch_size", "queue_depth", "max_batch_size", "max_queue", "total_requests", "uptime_s", "decode_tokens_per_s")
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    base: str
    quantization: str
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterStats]
    cache: CacheStats
    batch_size: int
    queue_depth: int
    max_batch_size: int
    max_queue: int
    total_requests: int
    uptime_s: float
    decode_tokens_per_s: float
    def __init__(self, base: _Optional[str] = ..., quantization: _Optional[str] = ..., adapters: _Optional[_Iterable[_Union[AdapterStats, _Mapping]]] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ..., batch_size: _Optional[int] = ..., queue_depth: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_queue: _Optional[int] = ..., total_requests: _Optional[int] = ..., uptime_s: _Optional[float] = ..., decode_tokens_per_s: _Optional[float] = ...) -> None: ...
