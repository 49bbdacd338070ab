"""Fine-tuning jobs: the durable queue in the registry database, its events, checkpoints and workers.

`registry.jobs` (a `JobQueue`) is the system of record: a job is submitted with its config frozen and its
datasets stored as blobs, waits `queued` by priority, is claimed by one worker under a lease the worker
renews, and ends `succeeded` (with the version it made), `failed` or `cancelled`. Checking a submission
(config keys, dataset lines, the base, the memory estimate) is the trainer's (`trainer/jobs/submit.py`);
running one is the worker's (`trainer/jobs/worker.py`). This package imports neither.
"""

from .queue import JobQueue
from .records import EXECUTORS, STATES, TERMINAL, Checkpoint, Job, JobEvent, JobSpec, SubmitRequest, UploadedFile, WorkerInfo

__all__ = ["JobQueue", "EXECUTORS", "STATES", "TERMINAL", "Checkpoint", "Job", "JobEvent", "JobSpec", "SubmitRequest", "UploadedFile",
           "WorkerInfo"]
