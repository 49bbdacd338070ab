from . import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobDataset(_message.Message):
    __slots__ = ("name", "type", "sha256", "bytes", "lines", "split")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    sha256: str
    bytes: int
    lines: int
    split: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., lines: _Optional[int] = ..., split: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "adapter", "state", "config", "config_hash", "base", "datasets", "priority", "resources", "submitter", "source", "created_at", "started_at", "finished_at", "attempts", "max_attempts", "worker_id", "lease_expires", "cancel_requested", "run_id", "result_version", "error", "step", "total_steps", "metrics", "device", "device_count", "device_seconds", "extra", "executor", "executor_handle", "progress", "eta_s", "device_hours", "cost")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_HANDLE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_HOURS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    id: str
    adapter: str
    state: str
    config: _registry_pb2.JsonObject
    config_hash: str
    base: str
    datasets: _containers.RepeatedCompositeFieldContainer[JobDataset]
    priority: int
    resources: _registry_pb2.JsonObject
    submitter: str
    source: str
    created_at: str
    started_at: str
    finished_at: str
    attempts: int
    max_attempts: int
    worker_id: str
    lease_expires: float
    cancel_requested: bool
    run_id: str
    result_version: str
    error: str
    step: int
    total_steps: int
    metrics: _registry_pb2.JsonObject
    device: str
    device_count: int
    device_seconds: float
    extra: _registry_pb2.JsonObject
    executor: str
    executor_handle: str
    progress: float
    eta_s: float
    device_hours: float
    cost: _registry_pb2.JsonObject
    def __init__(self, id: _Optional[str] = ..., adapter: _Optional[str] = ..., state: _Optional[str] = ..., config: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., config_hash: _Optional[str] = ..., base: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[JobDataset, _Mapping]]] = ..., priority: _Optional[int] = ..., resources: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., submitter: _Optional[str] = ..., source: _Optional[str] = ..., created_at: _Optional[str] = ..., started_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., worker_id: _Optional[str] = ..., lease_expires: _Optional[float] = ..., cancel_requested: _Optional[bool] = ..., run_id: _Optional[str] = ..., result_version: _Optional[str] = ..., error: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., device: _Optional[str] = ..., device_count: _Optional[int] = ..., device_seconds: _Optional[float] = ..., extra: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., executor: _Optional[str] = ..., executor_handle: _Optional[str] = ..., progress: _Optional[float] = ..., eta_s: _Optional[float] = ..., device_hours: _Optional[float] = ..., cost: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "at", "level", "type", "message", "data")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: str
    level: str
    type: str
    message: str
    data: _registry_pb2.JsonObject
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[str] = ..., level: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., data: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "path", "metrics", "at", "present", "files")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    metrics: _registry_pb2.JsonObject
    at: str
    present: bool
    files: _containers.RepeatedCompositeFieldContainer[_registry_pb2.FileEntry]
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., metrics: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., at: _Optional[str] = ..., present: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[_registry_pb2.FileEntry, _Mapping]]] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CheckpointList(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class PushCheckpointResponse(_message.Message):
    __slots__ = ("version", "created", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: _registry_pb2.Version
    created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[_registry_pb2.Version, _Mapping]] = ..., created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmittedFile(_message.Message):
    __slots__ = ("path", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class JobSubmission(_message.Message):
    __slots__ = ("config", "name", "overrides", "priority", "gpus", "num_processes", "max_attempts", "files")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    config: _registry_pb2.JsonObject
    name: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    gpus: int
    num_processes: int
    max_attempts: int
    files: _containers.RepeatedCompositeFieldContainer[SubmittedFile]
    def __init__(self, config: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., name: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ..., gpus: _Optional[int] = ..., num_processes: _Optional[int] = ..., max_attempts: _Optional[int] = ..., files: _Optional[_Iterable[_Union[SubmittedFile, _Mapping]]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("submission", "chunk")
    SUBMISSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    submission: JobSubmission
    chunk: FileChunk
    def __init__(self, submission: _Optional[_Union[JobSubmission, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "submitter", "limit")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    state: str
    submitter: str
    limit: int
    def __init__(self, state: _Optional[str] = ..., submitter: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEventsRequest(_message.Message):
    __slots__ = ("job_id", "after", "follow", "limit", "newest", "before")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after: int
    follow: bool
    limit: int
    newest: bool
    before: int
    def __init__(self, job_id: _Optional[str] = ..., after: _Optional[int] = ..., follow: _Optional[bool] = ..., limit: _Optional[int] = ..., newest: _Optional[bool] = ..., before: _Optional[int] = ...) -> None: ...

class PushCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "step", "alias")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    alias: str
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "host", "pid", "slots", "resources", "labels", "started_at", "seen_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    pid: int
    slots: int
    resources: _registry_pb2.JsonObject
    labels: _registry_pb2.JsonObject
    started_at: str
    seen_at: float
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., slots: _Optional[int] = ..., resources: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., labels: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., started_at: _Optional[str] = ..., seen_at: _Optional[float] = ...) -> None: ...

class WorkerAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class ClaimJobRequest(_message.Message):
    __slots__ = ("worker_id", "free", "lease_s", "max_running_per_submitter", "job_id")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_PER_SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    free: _registry_pb2.JsonObject
    lease_s: float
    max_running_per_submitter: int
    job_id: str
    def __init__(self, worker_id: _Optional[str] = ..., free: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., lease_s: _Optional[float] = ..., max_running_per_submitter: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class ClaimJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "lease_s", "device_seconds", "cost")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    lease_s: float
    device_seconds: float
    cost: _registry_pb2.JsonObject
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., lease_s: _Optional[float] = ..., device_seconds: _Optional[float] = ..., cost: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class JobsToStopRequest(_message.Message):
    __slots__ = ("worker_id", "job_ids")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worker_id: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StopEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class JobsToStopResponse(_message.Message):
    __slots__ = ("stop",)
    STOP_FIELD_NUMBER: _ClassVar[int]
    stop: _containers.RepeatedCompositeFieldContainer[StopEntry]
    def __init__(self, stop: _Optional[_Iterable[_Union[StopEntry, _Mapping]]] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "state", "result_version", "error", "device_seconds", "cost")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    state: str
    result_version: str
    error: str
    device_seconds: float
    cost: _registry_pb2.JsonObject
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., state: _Optional[str] = ..., result_version: _Optional[str] = ..., error: _Optional[str] = ..., device_seconds: _Optional[float] = ..., cost: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class FinishJobResponse(_message.Message):
    __slots__ = ("finished",)
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    finished: bool
    def __init__(self, finished: _Optional[bool] = ...) -> None: ...

class AddJobEventRequest(_message.Message):
    __slots__ = ("job_id", "level", "type", "message", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    level: str
    type: str
    message: str
    data: _registry_pb2.JsonObject
    def __init__(self, job_id: _Optional[str] = ..., level: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., data: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class AddJobEventResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "step", "total_steps", "metrics")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    total_steps: int
    metrics: _registry_pb2.JsonObject
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ...) -> None: ...

class RecordCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "step", "path", "metrics", "files")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    path: str
    metrics: _registry_pb2.JsonObject
    files: _containers.RepeatedCompositeFieldContainer[_registry_pb2.FileEntry]
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., path: _Optional[str] = ..., metrics: _Optional[_Union[_registry_pb2.JsonObject, _Mapping]] = ..., files: _Optional[_Iterable[_Union[_registry_pb2.FileEntry, _Mapping]]] = ...) -> None: ...

class SetJobRunRequest(_message.Message):
    __slots__ = ("job_id", "run_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class JobDataRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "digest", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    digest: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...
