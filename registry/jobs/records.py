"""The job queue's records: a job, its events and checkpoints, a worker, an uploaded file, and what a submit stores."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# OpenAI's fine-tuning job states, in order; the last three are final.
STATES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EVENT_LEVELS = ("info", "warn", "error")
EVENT_TYPES = ("message", "metrics", "checkpoint", "state")
# Where a job runs: `local`, claimed by any `reg worker`; or an external executor (trainer/jobs/executors/) that was
# handed the job and runs `reg worker --job ID` for it, the only worker that claims it.
EXECUTORS = ("local", "kubernetes", "ray")


def _seconds_since(iso: str | None, until: str | None = None) -> float | None:
    if not iso:
        return None
    end = datetime.fromisoformat(until) if until else datetime.now(timezone.utc)
    return max(0.0, (end - datetime.fromisoformat(iso)).total_seconds())


@dataclass
class DatasetFile:
    """One dataset of a job: the name it had, its format, and the blob that holds its bytes."""

    name: str
    type: str
    sha256: str  # 64 hex digits: the blob
    bytes: int
    lines: int
    split: str = "train"  # or "test": a held-out file (the config's `test_datasets`, OpenAI's validation_file)
    path: Path | None = None  # where the submitter's copy is, until `submit` has stored it


@dataclass
class SubmitRequest:
    """A submission as it arrives (CLI, gRPC, HTTP), before it is checked.

    Either `config_path` (a YAML file on this machine; datasets are read where it says) or `config` (the YAML's
    mapping) with `files`: each dataset path as written in the config -> its bytes (a remote or HTTP submission).
    """

    config: dict | None = None
    config_path: str | None = None
    name: str | None = None  # the adapter, when the config sets no push.name (the config file's stem)
    overrides: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    priority: int = 0
    gpus: int = 0
    num_processes: int = 1
    max_attempts: int = 3
    source: str = "cli"
    extra: dict = field(default_factory=dict)
    executor: str = "local"  # one of EXECUTORS


@dataclass
class JobSpec:
    """A checked submission (`trainer/jobs/submit.py` makes it): everything `JobQueue.submit` stores."""

    adapter: str
    config: dict  # the resolved training config, datasets' paths replaced by their blobs (`blob:<sha256>`)
    config_hash: str
    base: str
    datasets: list[DatasetFile]
    priority: int = 0
    resources: dict = field(default_factory=dict)  # memory_bytes, gpus, num_processes
    max_attempts: int = 3
    source: str = "cli"  # cli, grpc, openai
    extra: dict = field(default_factory=dict)  # what the submitter asked for besides the config (OpenAI's fields)
    warnings: list[str] = field(default_factory=list)  # become warning events of the new job
    executor: str = "local"  # one of EXECUTORS


@dataclass
class Job:
    id: str
    adapter: str
    state: str
    config: dict
    config_hash: str
    base: str
    datasets: list[dict]
    priority: int
    resources: dict
    submitter: str
    source: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    max_attempts: int
    worker_id: str | None
    lease_expires: float | None
    cancel_requested: bool
    run_id: str | None
    result_version: str | None
    error: str | None
    step: int
    total_steps: int
    metrics: dict
    device: str | None
    device_count: int
    device_seconds: float
    extra: dict
    executor: str = "local"  # one of EXECUTORS
    executor_handle: str | None = None  # what the external executor calls the job's worker (K8s Job name, Ray id)

    @classmethod
    def from_row(cls, row) -> "Job":
        data = dict(row)
        for key in ("config", "datasets", "resources", "metrics", "extra"):
            data[key] = json.loads(data.pop(f"{key}_json") or ("[]" if key == "datasets" else "{}"))
        data["base"] = data.pop("base_name")
        data["datasets"] = [{**d, "split": d.get("split", "train")} for d in data["datasets"]]  # jobs from before splits
        data["cancel_requested"] = bool(data["cancel_requested"])
        for key in ("step", "total_steps", "attempts", "device_count"):
            data[key] = data[key] or 0
        data["device_seconds"] = data["device_seconds"] or 0.0
        data["executor"] = data.get("executor") or "local"
        return cls(**data)

    @property
    def progress(self) -> float | None:
        return self.step / self.total_steps if self.total_steps else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate of this attempt so far (None before the first logged step or once finished)."""
        elapsed = _seconds_since(self.extra.get("attempt_started_at"))
        first = self.extra.get("attempt_first_step", 0)
        if first is None:  # a claimed attempt that has logged no step yet
            return None
        done = self.step - first
        if self.state != "running" or not elapsed or done <= 0 or not self.total_steps:
            return None
        return elapsed / done * (self.total_steps - self.step)

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600

    def as_dict(self) -> dict:
        """The job as `reg job show --json` prints it (and the remote API carries it)."""
        data = asdict(self)
        data.update(progress=self.progress, eta_s=self.eta_s, device_hours=round(self.device_hours, 6),
                    cost=self.extra.get("cost"))
        return data


@dataclass
class JobEvent:
    seq: int
    at: str
    level: str
    type: str
    message: str
    data: dict

    @classmethod
    def from_row(cls, row) -> "JobEvent":
        return cls(row["seq"], row["at"], row["level"], row["type"], row["message"], json.loads(row["data_json"] or "{}"))


@dataclass
class Checkpoint:
    step: int
    path: str
    metrics: dict
    at: str
    present: bool  # the directory is still there (the trainer keeps the newest `save_total_limit`)
    files: list[dict] = field(default_factory=list)  # path, size, sha256: stored as blobs (a remote worker's)


@dataclass
class WorkerInfo:
    """A worker as it registers: what it can run (`resources`: device, device_name, memory_bytes, gpus) and where."""

    id: str
    host: str
    pid: int
    slots: int
    resources: dict
    labels: dict = field(default_factory=dict)
    started_at: str = ""
    seen_at: float = 0.0

    @classmethod
    def from_row(cls, row) -> "WorkerInfo":
        return cls(row["id"], row["host"], row["pid"], row["slots"], json.loads(row["resources_json"] or "{}"),
                   json.loads(row["labels_json"] or "{}"), row["started_at"], row["seen_at"])


@dataclass
class UploadedFile:
    """A file uploaded for fine-tuning (OpenAI's `client.files.create`): its bytes are a blob."""

    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    lines: int
    owner: str
    created_at: str
