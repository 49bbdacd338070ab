from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JsonValue(_message.Message):
    __slots__ = ("null_value", "bool_value", "int_value", "double_value", "string_value", "list_value", "object_value")
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_VALUE_FIELD_NUMBER: _ClassVar[int]
    null_value: _struct_pb2.NullValue
    bool_value: bool
    int_value: int
    double_value: float
    string_value: str
    list_value: JsonList
    object_value: JsonObject
    def __init__(self, null_value: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., list_value: _Optional[_Union[JsonList, _Mapping]] = ..., object_value: _Optional[_Union[JsonObject, _Mapping]] = ...) -> None: ...

class JsonList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JsonValue]
    def __init__(self, items: _Optional[_Iterable[_Union[JsonValue, _Mapping]]] = ...) -> None: ...

class JsonObject(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[JsonField]
    def __init__(self, fields: _Optional[_Iterable[_Union[JsonField, _Mapping]]] = ...) -> None: ...

class JsonField(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: JsonValue
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[JsonValue, _Mapping]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[_Iterable[int]] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("id", "adapter", "number", "manifest_digest", "base_name", "base_digest", "peft_type", "task_type", "rank", "alpha", "target_modules", "adapter_config", "size_bytes", "creator", "message", "parent", "run_id", "created_at", "deleted_at", "files", "ref")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASE_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PEFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    id: int
    adapter: str
    number: int
    manifest_digest: str
    base_name: str
    base_digest: str
    peft_type: str
    task_type: str
    rank: int
    alpha: float
    target_modules: StringList
    adapter_config: JsonObject
    size_bytes: int
    creator: str
    message: str
    parent: int
    run_id: str
    created_at: str
    deleted_at: str
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    ref: str
    def __init__(self, id: _Optional[int] = ..., adapter: _Optional[str] = ..., number: _Optional[int] = ..., manifest_digest: _Optional[str] = ..., base_name: _Optional[str] = ..., base_digest: _Optional[str] = ..., peft_type: _Optional[str] = ..., task_type: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., target_modules: _Optional[_Union[StringList, _Mapping]] = ..., adapter_config: _Optional[_Union[JsonObject, _Mapping]] = ..., size_bytes: _Optional[int] = ..., creator: _Optional[str] = ..., message: _Optional[str] = ..., parent: _Optional[int] = ..., run_id: _Optional[str] = ..., created_at: _Optional[str] = ..., deleted_at: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., ref: _Optional[str] = ...) -> None: ...

class VersionSummary(_message.Message):
    __slots__ = ("ref", "number", "manifest_digest", "base", "peft_type", "rank", "alpha", "target_modules", "size_bytes", "creator", "message", "parent", "run_id", "created_at", "deleted_at")
    REF_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    PEFT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    ref: str
    number: int
    manifest_digest: str
    base: str
    peft_type: str
    rank: int
    alpha: float
    target_modules: StringList
    size_bytes: int
    creator: str
    message: str
    parent: int
    run_id: str
    created_at: str
    deleted_at: str
    def __init__(self, ref: _Optional[str] = ..., number: _Optional[int] = ..., manifest_digest: _Optional[str] = ..., base: _Optional[str] = ..., peft_type: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., target_modules: _Optional[_Union[StringList, _Mapping]] = ..., size_bytes: _Optional[int] = ..., creator: _Optional[str] = ..., message: _Optional[str] = ..., parent: _Optional[int] = ..., run_id: _Optional[str] = ..., created_at: _Optional[str] = ..., deleted_at: _Optional[str] = ...) -> None: ...

class AliasEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class AdapterSummary(_message.Message):
    __slots__ = ("name", "versions", "latest", "aliases", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: int
    latest: int
    aliases: _containers.RepeatedCompositeFieldContainer[AliasEntry]
    updated_at: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[int] = ..., latest: _Optional[int] = ..., aliases: _Optional[_Iterable[_Union[AliasEntry, _Mapping]]] = ..., updated_at: _Optional[str] = ...) -> None: ...

class AdapterState(_message.Message):
    __slots__ = ("name", "live_versions", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    live_versions: int
    aliases: _containers.RepeatedCompositeFieldContainer[AliasEntry]
    def __init__(self, name: _Optional[str] = ..., live_versions: _Optional[int] = ..., aliases: _Optional[_Iterable[_Union[AliasEntry, _Mapping]]] = ...) -> None: ...

class AdapterDetail(_message.Message):
    __slots__ = ("name", "live_versions", "recent_versions", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RECENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    live_versions: int
    recent_versions: _containers.RepeatedScalarFieldContainer[int]
    aliases: _containers.RepeatedCompositeFieldContainer[AliasEntry]
    def __init__(self, name: _Optional[str] = ..., live_versions: _Optional[int] = ..., recent_versions: _Optional[_Iterable[int]] = ..., aliases: _Optional[_Iterable[_Union[AliasEntry, _Mapping]]] = ...) -> None: ...

class AliasEvent(_message.Message):
    __slots__ = ("id", "adapter", "alias", "action", "old_version", "new_version", "actor", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    adapter: str
    alias: str
    action: str
    old_version: int
    new_version: int
    actor: str
    at: str
    def __init__(self, id: _Optional[int] = ..., adapter: _Optional[str] = ..., alias: _Optional[str] = ..., action: _Optional[str] = ..., old_version: _Optional[int] = ..., new_version: _Optional[int] = ..., actor: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class TensorShape(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Iterable[int]] = ...) -> None: ...

class Base(_message.Message):
    __slots__ = ("name", "source", "path", "hub_id", "weights_digest", "architecture", "config", "tensors", "num_parameters", "size_bytes", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HUB_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    path: str
    hub_id: str
    weights_digest: str
    architecture: str
    config: JsonObject
    tensors: _containers.RepeatedCompositeFieldContainer[TensorShape]
    num_parameters: int
    size_bytes: int
    created_at: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., path: _Optional[str] = ..., hub_id: _Optional[str] = ..., weights_digest: _Optional[str] = ..., architecture: _Optional[str] = ..., config: _Optional[_Union[JsonObject, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[TensorShape, _Mapping]]] = ..., num_parameters: _Optional[int] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "adapter", "status", "config_hash", "base_name", "base_digest", "seed", "started_at", "finished_at", "duration_s", "run_dir", "job_id", "config", "datasets", "libraries", "hardware", "metrics")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    LIBRARIES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    id: str
    adapter: str
    status: str
    config_hash: str
    base_name: str
    base_digest: str
    seed: int
    started_at: str
    finished_at: str
    duration_s: float
    run_dir: str
    job_id: str
    config: JsonValue
    datasets: JsonValue
    libraries: JsonValue
    hardware: JsonValue
    metrics: JsonValue
    def __init__(self, id: _Optional[str] = ..., adapter: _Optional[str] = ..., status: _Optional[str] = ..., config_hash: _Optional[str] = ..., base_name: _Optional[str] = ..., base_digest: _Optional[str] = ..., seed: _Optional[int] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., duration_s: _Optional[float] = ..., run_dir: _Optional[str] = ..., job_id: _Optional[str] = ..., config: _Optional[_Union[JsonValue, _Mapping]] = ..., datasets: _Optional[_Union[JsonValue, _Mapping]] = ..., libraries: _Optional[_Union[JsonValue, _Mapping]] = ..., hardware: _Optional[_Union[JsonValue, _Mapping]] = ..., metrics: _Optional[_Union[JsonValue, _Mapping]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "version_id", "run_id", "name", "split", "created_at", "passed", "metrics", "base_metrics", "failures")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BASE_METRICS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    id: int
    version_id: int
    run_id: str
    name: str
    split: str
    created_at: str
    passed: bool
    metrics: JsonObject
    base_metrics: JsonObject
    failures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., version_id: _Optional[int] = ..., run_id: _Optional[str] = ..., name: _Optional[str] = ..., split: _Optional[str] = ..., created_at: _Optional[str] = ..., passed: _Optional[bool] = ..., metrics: _Optional[_Union[JsonObject, _Mapping]] = ..., base_metrics: _Optional[_Union[JsonObject, _Mapping]] = ..., failures: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportSource(_message.Message):
    __slots__ = ("version_id", "ref", "weight", "manifest_digest")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    version_id: int
    ref: str
    weight: float
    manifest_digest: str
    def __init__(self, version_id: _Optional[int] = ..., ref: _Optional[str] = ..., weight: _Optional[float] = ..., manifest_digest: _Optional[str] = ...) -> None: ...

class Export(_message.Message):
    __slots__ = ("id", "method", "format", "dtype", "out_path", "base_name", "base_digest", "status", "reason", "hub_repo", "actor", "created_at", "sources", "files", "fidelity")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OUT_PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HUB_REPO_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    id: int
    method: str
    format: str
    dtype: str
    out_path: str
    base_name: str
    base_digest: str
    status: str
    reason: str
    hub_repo: str
    actor: str
    created_at: str
    sources: _containers.RepeatedCompositeFieldContainer[ExportSource]
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    fidelity: JsonValue
    def __init__(self, id: _Optional[int] = ..., method: _Optional[str] = ..., format: _Optional[str] = ..., dtype: _Optional[str] = ..., out_path: _Optional[str] = ..., base_name: _Optional[str] = ..., base_digest: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., hub_repo: _Optional[str] = ..., actor: _Optional[str] = ..., created_at: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[ExportSource, _Mapping]]] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., fidelity: _Optional[_Union[JsonValue, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "token", "actor", "action", "target", "peer", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: str
    token: str
    actor: str
    action: str
    target: str
    peer: str
    detail: JsonObject
    def __init__(self, id: _Optional[int] = ..., at: _Optional[str] = ..., token: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., peer: _Optional[str] = ..., detail: _Optional[_Union[JsonObject, _Mapping]] = ...) -> None: ...

class Arm(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: int
    weight: int
    def __init__(self, version: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class Guard(_message.Message):
    __slots__ = ("max_error_rate", "max_p95_ratio", "min_requests")
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P95_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_error_rate: float
    max_p95_ratio: float
    min_requests: int
    def __init__(self, max_error_rate: _Optional[float] = ..., max_p95_ratio: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...

class RevisionArm(_message.Message):
    __slots__ = ("arm", "version", "ref", "weight")
    ARM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    arm: str
    version: int
    ref: str
    weight: int
    def __init__(self, arm: _Optional[str] = ..., version: _Optional[int] = ..., ref: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("adapter", "revision", "arms", "sticky", "guard", "action", "restores", "reason", "actor", "at")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESTORES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    revision: int
    arms: _containers.RepeatedCompositeFieldContainer[RevisionArm]
    sticky: bool
    guard: Guard
    action: str
    restores: int
    reason: str
    actor: str
    at: str
    def __init__(self, adapter: _Optional[str] = ..., revision: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[RevisionArm, _Mapping]]] = ..., sticky: _Optional[bool] = ..., guard: _Optional[_Union[Guard, _Mapping]] = ..., action: _Optional[str] = ..., restores: _Optional[int] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("adapter", "revision", "version", "arm", "request_id", "key_hash", "status", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "at")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    revision: int
    version: int
    arm: str
    request_id: str
    key_hash: str
    status: str
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    at: str
    def __init__(self, adapter: _Optional[str] = ..., revision: _Optional[int] = ..., version: _Optional[int] = ..., arm: _Optional[str] = ..., request_id: _Optional[str] = ..., key_hash: _Optional[str] = ..., status: _Optional[str] = ..., latency_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., at: _Optional[str] = ...) -> None: ...

class FeedbackRecord(_message.Message):
    __slots__ = ("request_id", "adapter", "version", "revision", "arm", "score", "label", "at", "correction")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    adapter: str
    version: int
    revision: int
    arm: str
    score: float
    label: str
    at: str
    correction: str
    def __init__(self, request_id: _Optional[str] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., revision: _Optional[int] = ..., arm: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., at: _Optional[str] = ..., correction: _Optional[str] = ...) -> None: ...

class CaptureConfig(_message.Message):
    __slots__ = ("sample", "retain_s", "max_bytes", "redact")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    RETAIN_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    REDACT_FIELD_NUMBER: _ClassVar[int]
    sample: float
    retain_s: int
    max_bytes: int
    redact: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sample: _Optional[float] = ..., retain_s: _Optional[int] = ..., max_bytes: _Optional[int] = ..., redact: _Optional[_Iterable[str]] = ...) -> None: ...

class CapturedMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CapturedRequest(_message.Message):
    __slots__ = ("adapter", "version", "revision", "arm", "request_id", "key_hash", "prompt", "messages", "response", "status", "latency_ms", "at")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    revision: int
    arm: str
    request_id: str
    key_hash: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[CapturedMessage]
    response: str
    status: str
    latency_ms: float
    at: str
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., revision: _Optional[int] = ..., arm: _Optional[str] = ..., request_id: _Optional[str] = ..., key_hash: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[CapturedMessage, _Mapping]]] = ..., response: _Optional[str] = ..., status: _Optional[str] = ..., latency_ms: _Optional[float] = ..., at: _Optional[str] = ...) -> None: ...

class CapturedRow(_message.Message):
    __slots__ = ("id", "adapter", "version", "revision", "arm", "request_id", "key_hash", "prompt", "response", "status", "latency_ms", "bytes", "at", "feedback_score", "feedback_label", "correction", "messages")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SCORE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_LABEL_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    id: int
    adapter: str
    version: int
    revision: int
    arm: str
    request_id: str
    key_hash: str
    prompt: str
    response: str
    status: str
    latency_ms: float
    bytes: int
    at: str
    feedback_score: float
    feedback_label: str
    correction: str
    messages: _containers.RepeatedCompositeFieldContainer[CapturedMessage]
    def __init__(self, id: _Optional[int] = ..., adapter: _Optional[str] = ..., version: _Optional[int] = ..., revision: _Optional[int] = ..., arm: _Optional[str] = ..., request_id: _Optional[str] = ..., key_hash: _Optional[str] = ..., prompt: _Optional[str] = ..., response: _Optional[str] = ..., status: _Optional[str] = ..., latency_ms: _Optional[float] = ..., bytes: _Optional[int] = ..., at: _Optional[str] = ..., feedback_score: _Optional[float] = ..., feedback_label: _Optional[str] = ..., correction: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[CapturedMessage, _Mapping]]] = ...) -> None: ...

class AdapterSummaryList(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterSummary]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterSummary, _Mapping]]] = ...) -> None: ...

class VersionListing(_message.Message):
    __slots__ = ("versions", "summaries")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    summaries: _containers.RepeatedCompositeFieldContainer[VersionSummary]
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ..., summaries: _Optional[_Iterable[_Union[VersionSummary, _Mapping]]] = ...) -> None: ...

class Description(_message.Message):
    __slots__ = ("version", "adapter", "aliases_here", "run", "evaluations", "exports")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ALIASES_HERE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    version: Version
    adapter: AdapterDetail
    aliases_here: _containers.RepeatedScalarFieldContainer[str]
    run: Run
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    exports: _containers.RepeatedCompositeFieldContainer[Export]
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., adapter: _Optional[_Union[AdapterDetail, _Mapping]] = ..., aliases_here: _Optional[_Iterable[str]] = ..., run: _Optional[_Union[Run, _Mapping]] = ..., evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., exports: _Optional[_Iterable[_Union[Export, _Mapping]]] = ...) -> None: ...

class FieldChange(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: _containers.RepeatedCompositeFieldContainer[JsonValue]
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Iterable[_Union[JsonValue, _Mapping]]] = ...) -> None: ...

class FilesDiff(_message.Message):
    __slots__ = ("added", "removed", "changed")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorChange(_message.Message):
    __slots__ = ("name", "shape", "dtype", "same_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedCompositeFieldContainer[IntList]
    dtype: _containers.RepeatedScalarFieldContainer[str]
    same_bytes: bool
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[_Union[IntList, _Mapping]]] = ..., dtype: _Optional[_Iterable[str]] = ..., same_bytes: _Optional[bool] = ...) -> None: ...

class TensorsDiff(_message.Message):
    __slots__ = ("added", "removed", "changed", "unchanged")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedCompositeFieldContainer[TensorChange]
    unchanged: int
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[_Union[TensorChange, _Mapping]]] = ..., unchanged: _Optional[int] = ...) -> None: ...

class MetricDelta(_message.Message):
    __slots__ = ("a", "b", "delta")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    a: JsonValue
    b: JsonValue
    delta: JsonValue
    def __init__(self, a: _Optional[_Union[JsonValue, _Mapping]] = ..., b: _Optional[_Union[JsonValue, _Mapping]] = ..., delta: _Optional[_Union[JsonValue, _Mapping]] = ...) -> None: ...

class MetricChange(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: MetricDelta
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetricDelta, _Mapping]] = ...) -> None: ...

class VersionDiff(_message.Message):
    __slots__ = ("a", "b", "same_content", "fields", "config", "files", "tensors", "metrics")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SAME_CONTENT_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    same_content: bool
    fields: _containers.RepeatedCompositeFieldContainer[FieldChange]
    config: _containers.RepeatedCompositeFieldContainer[FieldChange]
    files: FilesDiff
    tensors: TensorsDiff
    metrics: _containers.RepeatedCompositeFieldContainer[MetricChange]
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ..., same_content: _Optional[bool] = ..., fields: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., config: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., files: _Optional[_Union[FilesDiff, _Mapping]] = ..., tensors: _Optional[_Union[TensorsDiff, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[MetricChange, _Mapping]]] = ...) -> None: ...

class BaseList(_message.Message):
    __slots__ = ("bases",)
    BASES_FIELD_NUMBER: _ClassVar[int]
    bases: _containers.RepeatedCompositeFieldContainer[Base]
    def __init__(self, bases: _Optional[_Iterable[_Union[Base, _Mapping]]] = ...) -> None: ...

class AliasEventList(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AliasEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AliasEvent, _Mapping]]] = ...) -> None: ...

class GcReport(_message.Message):
    __slots__ = ("removed", "removed_bytes", "kept_recent", "temp_removed", "dry_run")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_RECENT_FIELD_NUMBER: _ClassVar[int]
    TEMP_REMOVED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    removed_bytes: int
    kept_recent: int
    temp_removed: int
    dry_run: bool
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., removed_bytes: _Optional[int] = ..., kept_recent: _Optional[int] = ..., temp_removed: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("ref", "path", "sha256", "problem")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    ref: str
    path: str
    sha256: str
    problem: str
    def __init__(self, ref: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class VerifyReport(_message.Message):
    __slots__ = ("versions", "files", "bytes", "problems", "database_problems", "ok")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DATABASE_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    versions: int
    files: int
    bytes: int
    problems: _containers.RepeatedCompositeFieldContainer[Problem]
    database_problems: _containers.RepeatedScalarFieldContainer[str]
    ok: bool
    def __init__(self, versions: _Optional[int] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., database_problems: _Optional[_Iterable[str]] = ..., ok: _Optional[bool] = ...) -> None: ...

class AuditEntryList(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class RolloutView(_message.Message):
    __slots__ = ("adapter", "current", "resolves_to_latest", "history")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    RESOLVES_TO_LATEST_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    current: Revision
    resolves_to_latest: str
    history: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, adapter: _Optional[str] = ..., current: _Optional[_Union[Revision, _Mapping]] = ..., resolves_to_latest: _Optional[str] = ..., history: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class ArmReport(_message.Message):
    __slots__ = ("arm", "version", "ref", "weight", "requests", "errors", "error_rate", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "prompt_tokens", "completion_tokens", "mean_completion_tokens", "feedback", "mean_score", "successes", "trials", "success_rate")
    ARM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    arm: str
    version: int
    ref: str
    weight: int
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    prompt_tokens: int
    completion_tokens: int
    mean_completion_tokens: float
    feedback: int
    mean_score: float
    successes: int
    trials: int
    success_rate: float
    def __init__(self, arm: _Optional[str] = ..., version: _Optional[int] = ..., ref: _Optional[str] = ..., weight: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., ttft_p50_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., mean_completion_tokens: _Optional[float] = ..., feedback: _Optional[int] = ..., mean_score: _Optional[float] = ..., successes: _Optional[int] = ..., trials: _Optional[int] = ..., success_rate: _Optional[float] = ...) -> None: ...

class ArmComparison(_message.Message):
    __slots__ = ("metric", "arm", "against", "rate", "against_rate", "z", "p_value", "verdict")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    AGAINST_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    AGAINST_RATE_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    arm: str
    against: str
    rate: float
    against_rate: float
    z: float
    p_value: float
    verdict: str
    def __init__(self, metric: _Optional[str] = ..., arm: _Optional[str] = ..., against: _Optional[str] = ..., rate: _Optional[float] = ..., against_rate: _Optional[float] = ..., z: _Optional[float] = ..., p_value: _Optional[float] = ..., verdict: _Optional[str] = ...) -> None: ...

class RolloutReportResponse(_message.Message):
    __slots__ = ("adapter", "revision", "since_revision", "arms", "comparisons", "timeline")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    revision: int
    since_revision: int
    arms: _containers.RepeatedCompositeFieldContainer[ArmReport]
    comparisons: _containers.RepeatedCompositeFieldContainer[ArmComparison]
    timeline: _containers.RepeatedCompositeFieldContainer[ReportBucket]
    def __init__(self, adapter: _Optional[str] = ..., revision: _Optional[int] = ..., since_revision: _Optional[int] = ..., arms: _Optional[_Iterable[_Union[ArmReport, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[ArmComparison, _Mapping]]] = ..., timeline: _Optional[_Iterable[_Union[ReportBucket, _Mapping]]] = ...) -> None: ...

class ReportBucket(_message.Message):
    __slots__ = ("start", "end", "arms")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    arms: _containers.RepeatedCompositeFieldContainer[BucketArm]
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[BucketArm, _Mapping]]] = ...) -> None: ...

class BucketArm(_message.Message):
    __slots__ = ("arm", "version", "requests", "errors", "latency_p50_ms", "successes", "trials")
    ARM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    arm: str
    version: int
    requests: int
    errors: int
    latency_p50_ms: float
    successes: int
    trials: int
    def __init__(self, arm: _Optional[str] = ..., version: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., successes: _Optional[int] = ..., trials: _Optional[int] = ...) -> None: ...

class RolloutStateResponse(_message.Message):
    __slots__ = ("change_id", "revisions")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    change_id: int
    revisions: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, change_id: _Optional[int] = ..., revisions: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class RolloutRecordResponse(_message.Message):
    __slots__ = ("outcomes", "feedback", "guard")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    outcomes: int
    feedback: int
    guard: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, outcomes: _Optional[int] = ..., feedback: _Optional[int] = ..., guard: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class CaptureStateResponse(_message.Message):
    __slots__ = ("change_id", "configs")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    change_id: str
    configs: _containers.RepeatedCompositeFieldContainer[CaptureConfigEntry]
    def __init__(self, change_id: _Optional[str] = ..., configs: _Optional[_Iterable[_Union[CaptureConfigEntry, _Mapping]]] = ...) -> None: ...

class CaptureConfigEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: CaptureConfig
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[CaptureConfig, _Mapping]] = ...) -> None: ...

class CaptureRecordResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class CaptureOffResponse(_message.Message):
    __slots__ = ("was_on",)
    WAS_ON_FIELD_NUMBER: _ClassVar[int]
    was_on: bool
    def __init__(self, was_on: _Optional[bool] = ...) -> None: ...

class CaptureClearResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CaptureExpireResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class CaptureSummaryResponse(_message.Message):
    __slots__ = ("adapter", "on", "config", "requests", "bytes", "with_feedback", "oldest", "newest")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    WITH_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    on: bool
    config: CaptureConfig
    requests: int
    bytes: int
    with_feedback: int
    oldest: str
    newest: str
    def __init__(self, adapter: _Optional[str] = ..., on: _Optional[bool] = ..., config: _Optional[_Union[CaptureConfig, _Mapping]] = ..., requests: _Optional[int] = ..., bytes: _Optional[int] = ..., with_feedback: _Optional[int] = ..., oldest: _Optional[str] = ..., newest: _Optional[str] = ...) -> None: ...

class RefRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class RegistryListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HasBlobsRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobState(_message.Message):
    __slots__ = ("digest", "present", "received")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    present: bool
    received: int
    def __init__(self, digest: _Optional[str] = ..., present: _Optional[bool] = ..., received: _Optional[int] = ...) -> None: ...

class HasBlobsResponse(_message.Message):
    __slots__ = ("blobs", "max_blob_bytes", "max_chunk_bytes")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    blobs: _containers.RepeatedCompositeFieldContainer[BlobState]
    max_blob_bytes: int
    max_chunk_bytes: int
    def __init__(self, blobs: _Optional[_Iterable[_Union[BlobState, _Mapping]]] = ..., max_blob_bytes: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class UploadBlobRequest(_message.Message):
    __slots__ = ("digest", "size", "offset", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    offset: int
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBlobResponse(_message.Message):
    __slots__ = ("digest", "size", "received_bytes", "already_present")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    received_bytes: int
    already_present: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., received_bytes: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class DownloadBlobRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobURLsRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobURL(_message.Message):
    __slots__ = ("digest", "url")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    digest: str
    url: str
    def __init__(self, digest: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class BlobURLsResponse(_message.Message):
    __slots__ = ("urls", "expires_in_s")
    URLS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    urls: _containers.RepeatedCompositeFieldContainer[BlobURL]
    expires_in_s: int
    def __init__(self, urls: _Optional[_Iterable[_Union[BlobURL, _Mapping]]] = ..., expires_in_s: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class CommitPushRequest(_message.Message):
    __slots__ = ("name", "files", "base", "message", "alias", "allow_duplicate", "creator", "run_id", "parent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    base: str
    message: str
    alias: str
    allow_duplicate: bool
    creator: str
    run_id: str
    parent: int
    def __init__(self, name: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., base: _Optional[str] = ..., message: _Optional[str] = ..., alias: _Optional[str] = ..., allow_duplicate: _Optional[bool] = ..., creator: _Optional[str] = ..., run_id: _Optional[str] = ..., parent: _Optional[int] = ...) -> None: ...

class CommitPushResponse(_message.Message):
    __slots__ = ("version", "created", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: Version
    created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ..., created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAdapterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name", "include_deleted", "limit", "summaries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_deleted: bool
    limit: int
    summaries: bool
    def __init__(self, name: _Optional[str] = ..., include_deleted: _Optional[bool] = ..., limit: _Optional[int] = ..., summaries: _Optional[bool] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("ref_a", "ref_b")
    REF_A_FIELD_NUMBER: _ClassVar[int]
    REF_B_FIELD_NUMBER: _ClassVar[int]
    ref_a: str
    ref_b: str
    def __init__(self, ref_a: _Optional[str] = ..., ref_b: _Optional[str] = ...) -> None: ...

class AliasHistoryRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RemoveAliasRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class AliasChangeResponse(_message.Message):
    __slots__ = ("old_version",)
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    old_version: int
    def __init__(self, old_version: _Optional[int] = ...) -> None: ...

class RemoveVersionRequest(_message.Message):
    __slots__ = ("ref", "force")
    REF_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    force: bool
    def __init__(self, ref: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class GcRequest(_message.Message):
    __slots__ = ("dry_run", "grace_s")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    grace_s: float
    def __init__(self, dry_run: _Optional[bool] = ..., grace_s: _Optional[float] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("name", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    since: int
    def __init__(self, name: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class RolloutStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutRecordRequest(_message.Message):
    __slots__ = ("outcomes", "feedback")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    feedback: _containers.RepeatedCompositeFieldContainer[FeedbackRecord]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., feedback: _Optional[_Iterable[_Union[FeedbackRecord, _Mapping]]] = ...) -> None: ...

class RolloutChangeRequest(_message.Message):
    __slots__ = ("name", "action", "arms", "sticky", "guard", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    sticky: bool
    guard: Guard
    version: int
    reason: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., sticky: _Optional[bool] = ..., guard: _Optional[_Union[Guard, _Mapping]] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordRunRequest(_message.Message):
    __slots__ = ("run_id", "adapter", "config", "config_hash", "base_name", "base_digest", "datasets", "seed", "libraries", "hardware", "metrics", "started_at", "finished_at", "duration_s", "run_dir", "status", "job_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LIBRARIES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    adapter: str
    config: JsonObject
    config_hash: str
    base_name: str
    base_digest: str
    datasets: JsonList
    seed: int
    libraries: JsonObject
    hardware: JsonObject
    metrics: JsonObject
    started_at: str
    finished_at: str
    duration_s: float
    run_dir: str
    status: str
    job_id: str
    def __init__(self, run_id: _Optional[str] = ..., adapter: _Optional[str] = ..., config: _Optional[_Union[JsonObject, _Mapping]] = ..., config_hash: _Optional[str] = ..., base_name: _Optional[str] = ..., base_digest: _Optional[str] = ..., datasets: _Optional[_Union[JsonList, _Mapping]] = ..., seed: _Optional[int] = ..., libraries: _Optional[_Union[JsonObject, _Mapping]] = ..., hardware: _Optional[_Union[JsonObject, _Mapping]] = ..., metrics: _Optional[_Union[JsonObject, _Mapping]] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., duration_s: _Optional[float] = ..., run_dir: _Optional[str] = ..., status: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class RecordRunResponse(_message.Message):
    __slots__ = ("run", "created")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    run: Run
    created: bool
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RecordEvaluationRequest(_message.Message):
    __slots__ = ("ref", "manifest_digest", "name", "split", "metrics", "base_metrics", "run_id", "passed", "failures")
    REF_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BASE_METRICS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    ref: str
    manifest_digest: str
    name: str
    split: str
    metrics: JsonObject
    base_metrics: JsonObject
    run_id: str
    passed: bool
    failures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., name: _Optional[str] = ..., split: _Optional[str] = ..., metrics: _Optional[_Union[JsonObject, _Mapping]] = ..., base_metrics: _Optional[_Union[JsonObject, _Mapping]] = ..., run_id: _Optional[str] = ..., passed: _Optional[bool] = ..., failures: _Optional[_Iterable[str]] = ...) -> None: ...

class CaptureStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CaptureRecordRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CapturedRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CapturedRequest, _Mapping]]] = ...) -> None: ...

class CaptureSetRequest(_message.Message):
    __slots__ = ("adapter", "config")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    config: CaptureConfig
    def __init__(self, adapter: _Optional[str] = ..., config: _Optional[_Union[CaptureConfig, _Mapping]] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    def __init__(self, adapter: _Optional[str] = ...) -> None: ...

class CaptureExpireRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CaptureRowsRequest(_message.Message):
    __slots__ = ("adapter", "since", "limit")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    since: str
    limit: int
    def __init__(self, adapter: _Optional[str] = ..., since: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...
