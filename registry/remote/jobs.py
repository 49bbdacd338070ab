"""`RemoteJobs`: `registry.jobs` of a remote registry, over the gRPC Jobs service (proto/loradock/v1/jobs.proto).

It implements `registry.interface.JobsAPI` as the local `JobQueue` does and returns the same records (`Job`,
`JobEvent`, `Checkpoint`, `PushResult`, through the one converter in `registry.remote.messages`), so `reg job ...`
prints the same whichever registry it talks to. The server decides who the caller is from its token: the
`actor` of `cancel`/`resume` is not sent. A submission (`submit_request`, called by `trainer.jobs.submit`) streams
the config, then its datasets' bytes in chunks; the server checks and queues it, or refuses it in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc

from ..errors import InvalidInput, TooLarge
from ..jobs import Checkpoint, Job, JobEvent, SubmitRequest, WorkerInfo
from ..jobs.queue import DEFAULT_LEASE_S, MAX_EVENTS_PAGE, newest_page_size
from ..blobs import sha256_file
from ..records import FileRecord, PushResult
from .messages import to_message, to_python, to_record
from .rpc import jobs_pb, jobs_pb_grpc, pb

# The datasets one remote submission carries, in all: the Jobs service's bound (trainer.jobs.submit.MAX_SUBMITTED_BYTES
# refuses more before reading them; tests/test_jobs_remote.py checks the two agree).
MAX_SUBMITTED_BYTES = 64 * 2**20
MAX_SUBMITTED_FILES = 256
MAX_CONFIG_BYTES = 2**20  # the first message (config, overrides, file names): far below every server's receive limit


class RemoteJobs:
    """The jobs of the registry `remote` (a `RemoteRegistry`) serves: list, show, events, cancel, resume, submit;
    and, for a remote worker, the queue's worker side (`JobQueue`'s calls of the same names and arguments)."""

    def __init__(self, remote):
        self.remote = remote
        self.stub = jobs_pb_grpc.JobsStub(remote.channel)
        self.workers_stub = jobs_pb_grpc.JobWorkersStub(remote.channel)

    def _call(self, method: str, request, timeout: float | None = -1.0, stub=None):
        try:
            return getattr(stub or self.stub, method)(request, metadata=self.remote.metadata,
                                                      timeout=self.remote.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as exc:
            raise self.remote._error(exc) from None

    def _work(self, method: str, request_class, **fields):
        """A JobWorkers RPC with `fields` as its request; its answer as plain Python."""
        return to_python(self._call(method, to_message(fields, request_class), stub=self.workers_stub))

    def _job(self, method: str, job_id: str) -> Job:
        return to_record(Job, to_python(self._call(method, jobs_pb.JobRequest(job_id=job_id))))

    # --- reading ----------------------------------------------------------------------------------

    def list(self, state: str | None = None, submitter: str | None = None, limit: int | None = 100) -> list[Job]:
        request = jobs_pb.ListJobsRequest(state=state or "", submitter=submitter or "", limit=limit or None)
        return [to_record(Job, d) for d in to_python(self._call("ListJobs", request))]

    def get(self, job_id: str) -> Job:
        return self._job("GetJob", job_id)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events numbered above `after`, oldest first (at most `limit`, and at most one page of 1000)."""
        request = jobs_pb.JobEventsRequest(job_id=job_id, after=after, limit=max(0, min(int(limit), MAX_EVENTS_PAGE)))
        return list(self._stream(request, self.remote.timeout))

    def newest_events(self, job_id: str, limit: int, before: int | None = None) -> list[JobEvent]:
        """The job's newest `limit` events (at most a page) numbered below `before` (None: all), oldest first."""
        request = jobs_pb.JobEventsRequest(job_id=job_id, newest=True, limit=newest_page_size(limit), before=before)
        return list(self._stream(request, self.remote.timeout))

    def follow_events(self, job_id: str, after: int = 0) -> Iterator[JobEvent]:
        """Every event numbered above `after`, then each new one as the server records it, until the job has ended."""
        yield from self._stream(jobs_pb.JobEventsRequest(job_id=job_id, after=after, follow=True), None)

    def _stream(self, request, timeout: float | None) -> Iterator[JobEvent]:
        call = self.stub.JobEvents(request, metadata=self.remote.metadata, timeout=timeout)
        try:
            for message in call:
                yield to_record(JobEvent, to_python(message))
        except grpc.RpcError as exc:
            raise self.remote._error(exc) from None
        finally:
            call.cancel()  # the caller stopped reading (Ctrl-C while following): end the stream on the server too

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        answer = to_python(self._call("ListCheckpoints", jobs_pb.JobRequest(job_id=job_id)))
        return [to_record(Checkpoint, d) for d in answer]

    # --- changing ---------------------------------------------------------------------------------

    def cancel(self, job_id: str, actor: str | None = None) -> Job:
        """Cancel the job; the server checks that the caller's token submitted it (or is an admin's)."""
        return self._job("CancelJob", job_id)

    def resume(self, job_id: str, actor: str | None = None) -> Job:
        return self._job("ResumeJob", job_id)

    def push_checkpoint(self, job_id: str, step: int, alias: str | None = None) -> PushResult:
        request = jobs_pb.PushCheckpointRequest(job_id=job_id, step=step, alias=alias or "")
        return to_record(PushResult, to_python(self._call("PushCheckpoint", request)))

    # --- the worker side: JobQueue's calls, over the JobWorkers service (role `worker`) ----------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        self._call("RegisterWorker", to_message(worker, jobs_pb.WorkerInfo), stub=self.workers_stub)

    def unregister_worker(self, worker_id: str) -> None:
        self._work("UnregisterWorker", jobs_pb.WorkerRequest, worker_id=worker_id)

    def claim(self, worker_id: str, free: dict, lease_s: float = DEFAULT_LEASE_S,
              max_running_per_submitter: int | None = None, job_id: str | None = None) -> Job | None:
        answer = self._work("ClaimJob", jobs_pb.ClaimJobRequest, worker_id=worker_id, free=free, lease_s=lease_s,
                            max_running_per_submitter=max_running_per_submitter, job_id=job_id)
        return to_record(Job, answer["job"]) if answer["job"] else None

    def renew(self, job_id: str, worker_id: str, lease_s: float = DEFAULT_LEASE_S, device_seconds: float | None = None,
              cost: dict | None = None) -> str:
        return self._work("RenewLease", jobs_pb.RenewLeaseRequest, job_id=job_id, worker_id=worker_id, lease_s=lease_s,
                          device_seconds=device_seconds, cost=cost)["state"]

    def to_stop(self, job_ids: list[str], worker_id: str) -> dict[str, str]:
        if not job_ids:
            return {}
        return self._work("JobsToStop", jobs_pb.JobsToStopRequest, worker_id=worker_id, job_ids=job_ids)

    def finish(self, job_id: str, worker_id: str, state: str, result_version: str | None = None, error: str | None = None,
               device_seconds: float | None = None, cost: dict | None = None) -> bool:
        return self._work("FinishJob", jobs_pb.FinishJobRequest, job_id=job_id, worker_id=worker_id, state=state,
                          result_version=result_version, error=error, device_seconds=device_seconds, cost=cost)["finished"]

    def progress(self, job_id: str, step: int, total_steps: int, metrics: dict) -> None:
        self._work("ReportProgress", jobs_pb.ReportProgressRequest, job_id=job_id, step=step, total_steps=total_steps,
                   metrics=metrics)

    def record_checkpoint(self, job_id: str, step: int, path: str, metrics: dict, files: list[dict] | None = None) -> None:
        self._work("RecordCheckpoint", jobs_pb.RecordCheckpointRequest, job_id=job_id, step=step, path=path,
                   metrics=metrics, files=files or [])

    def upload_checkpoint(self, directory: Path) -> list[dict]:
        """Upload the files of a checkpoint directory the registry lacks; their (path, size, sha256), to record it."""
        files = [FileRecord(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(Path(directory).iterdir())
                 if p.is_file()]
        self.remote._upload_missing(Path(directory), files)
        return [dataclasses.asdict(f) for f in files]

    def add_event(self, job_id: str, level: str, type: str, message: str, data: dict | None = None) -> int:
        return self._work("AddJobEvent", jobs_pb.AddJobEventRequest, job_id=job_id, level=level, type=type,
                          message=message, data=data or {})["seq"]

    def set_run(self, job_id: str, run_id: str) -> None:
        self._work("SetJobRun", jobs_pb.SetJobRunRequest, job_id=job_id, run_id=run_id)

    def fetch_job_file(self, job_id: str, worker_id: str, digest: str, size: int, dest: Path, what: str) -> None:
        """Download a dataset or stored checkpoint file of a job this worker holds to `dest`, verified."""
        def chunks(offset: int):
            request = jobs_pb.JobDataRequest(job_id=job_id, worker_id=worker_id, digest=digest, offset=offset)
            return self.workers_stub.DownloadJobData(request, metadata=self.remote.metadata, timeout=None)

        self.remote.download_verified(digest, size, dest, what, chunks)

    # --- submitting -------------------------------------------------------------------------------

    def submit_request(self, request: SubmitRequest) -> Job:
        """Send a submission (the config's mapping and its datasets' bytes) to be checked and queued by the server."""
        first = _submission(request)
        chunk = self.remote.chunk_bytes

        def messages():
            yield jobs_pb.SubmitJobRequest(submission=first)
            for path, data in request.files.items():
                view = memoryview(data)
                for start in range(0, len(view), chunk):
                    yield jobs_pb.SubmitJobRequest(chunk=jobs_pb.FileChunk(path=path, data=bytes(view[start:start + chunk])))

        # no deadline, as for blob uploads: sending 64 MiB and checking every line may take a while
        return to_record(Job, to_python(self._call("SubmitJob", messages(), timeout=None)))


def _submission(request: SubmitRequest) -> jobs_pb.JobSubmission:
    """The first message of a submission, refused here (before anything is sent) when the server would refuse it."""
    if request.config_path or not isinstance(request.config, dict):
        raise InvalidInput("a remote submission carries the config's mapping and its files, not a path on this machine "
                           "(trainer.jobs.submit.with_files makes one)")
    if len(request.files) > MAX_SUBMITTED_FILES:
        raise TooLarge(f"{len(request.files)} dataset files in one submission; at most {MAX_SUBMITTED_FILES}")
    total = sum(len(data) for data in request.files.values())
    if total > MAX_SUBMITTED_BYTES:
        raise TooLarge(f"the datasets add up to {total:,} bytes, more than the {MAX_SUBMITTED_BYTES:,} one remote "
                       f"submission carries; submit on the registry's host")
    try:
        config = to_message(request.config, pb.JsonObject)
    except TypeError as exc:  # a YAML value JSON has no type for (a date, a set, binary)
        raise InvalidInput(f"config: {str(exc)[:300]}; use strings and numbers") from None
    first = jobs_pb.JobSubmission(
        config=config, name=request.name, overrides=request.overrides, priority=request.priority, gpus=request.gpus,
        num_processes=request.num_processes, max_attempts=request.max_attempts,
        files=[jobs_pb.SubmittedFile(path=path, size=len(data)) for path, data in request.files.items()],
    )
    if first.ByteSize() > MAX_CONFIG_BYTES:
        raise TooLarge(f"the config and its overrides are {first.ByteSize():,} bytes; at most {MAX_CONFIG_BYTES:,}")
    return first
