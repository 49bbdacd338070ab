"""gRPC servicer for loradock.v1.Jobs: a served registry's fine-tuning jobs, for remote `reg job ...` commands.

Thin, as the HTTP front is: it turns messages into calls of `JobsService` (server/jobs_service.py, which holds the
rules: the submitter is the caller's token name, a `train` caller changes only its own jobs) with the caller's
identity from the auth interceptor, turns the records back into messages with `registry.remote.messages`, and maps
errors through the one error table (`status.abort_with`). A submission streams in (its config, then its datasets'
bytes in chunks) and is bounded as it arrives: the sizes it declares first, then every chunk against them, so no
caller makes the server hold more than `MAX_SUBMITTED_BYTES`, and the gRPC receive limit stays a chunk's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import grpc

from registry.blobs import check_digest
from registry.errors import InvalidInput, LoradockError, NotFound, TooLarge, shown
from registry.jobs import TERMINAL, SubmitRequest, WorkerInfo
from registry.jobs.queue import MAX_EVENTS_PAGE
from registry.remote.jobs import MAX_SUBMITTED_BYTES, MAX_SUBMITTED_FILES
from registry.remote.messages import to_message, to_python, to_record
from registry.remote.rpc import jobs_pb, jobs_pb_grpc, pb

from .auth import Identity, current_identity
from .jobs_service import JobNotRunning, JobsService
from .registry_service import DOWNLOAD_CHUNK_BYTES, MAX_ANSWER_BYTES, MAX_CHUNK_BYTES, _claimed_actor
from .status import abort_with

logger = logging.getLogger(__name__)

SERVICE_NAME = jobs_pb.DESCRIPTOR.services_by_name["Jobs"].full_name
WORKERS_SERVICE_NAME = jobs_pb.DESCRIPTOR.services_by_name["JobWorkers"].full_name
MIN_LEASE_S, MAX_LEASE_S = 1.0, 3600.0  # a remote worker's lease: a lost machine's jobs wait at most an hour
MAX_EVENT_MESSAGE_CHARS = 4000  # a worker's event line; its data is bounded by the server's receive limit
FOLLOW_POLL_S = 0.3  # how often a followed job's events are read from the database


def add_jobs_service(server: grpc.Server, jobs: JobsService) -> list[str]:
    """Serve the Jobs and JobWorkers services over `jobs` on `server`; returns their full names (health, reflection)."""
    jobs_pb_grpc.add_JobsServicer_to_server(JobsServicer(jobs, FOLLOW_POLL_S), server)
    jobs_pb_grpc.add_JobWorkersServicer_to_server(JobWorkersServicer(jobs), server)
    return [SERVICE_NAME, WORKERS_SERVICE_NAME]


def _answer(value, message_class):
    """`value` as `message_class`; TooLarge if it would not fit in what a `RemoteRegistry` client accepts."""
    message = to_message(value, message_class)
    if message.ByteSize() > MAX_ANSWER_BYTES:
        raise TooLarge(f"the answer is {message.ByteSize():,} bytes, more than the {MAX_ANSWER_BYTES:,} one message may "
                       f"carry; ask for fewer (e.g. `reg job ls --limit 20`)")
    return message


def receive_submission(request_iterator) -> SubmitRequest:
    """The `SubmitRequest` a SubmitJob stream carries: its JobSubmission, then exactly the declared bytes of each file."""
    first = next(request_iterator, None)
    if first is None or first.WhichOneof("part") != "submission":
        raise InvalidInput("a job submission starts with its config (JobSubmission), then its dataset files' bytes")
    submission = first.submission
    declared: dict[str, int] = {}
    for f in submission.files:
        if f.path in declared or f.size < 0:
            raise InvalidInput(f"dataset file {shown(f.path)}: declared twice, or with a negative size ({f.size})")
        declared[f.path] = f.size
    if len(declared) > MAX_SUBMITTED_FILES:
        raise TooLarge(f"{len(declared)} dataset files in one submission; at most {MAX_SUBMITTED_FILES}")
    if sum(declared.values()) > MAX_SUBMITTED_BYTES:
        raise TooLarge(f"the datasets add up to {sum(declared.values()):,} bytes, more than the {MAX_SUBMITTED_BYTES:,} "
                       f"one remote submission carries; submit on the registry's host")
    received: dict[str, list[bytes]] = {path: [] for path in declared}
    sizes = dict.fromkeys(declared, 0)
    for message in request_iterator:
        chunk = message.chunk
        if message.WhichOneof("part") != "chunk" or chunk.path not in declared:
            raise InvalidInput(f"a submission's later messages carry the bytes of its declared files; got "
                               f"{message.WhichOneof('part')} for {shown(chunk.path)}")
        if len(chunk.data) > MAX_CHUNK_BYTES or sizes[chunk.path] + len(chunk.data) > declared[chunk.path]:
            raise InvalidInput(f"dataset file {shown(chunk.path)}: more bytes than the declared {declared[chunk.path]:,} "
                               f"(or a chunk over {MAX_CHUNK_BYTES:,})")
        received[chunk.path].append(chunk.data)
        sizes[chunk.path] += len(chunk.data)
    for path, size in declared.items():
        if sizes[path] != size:
            raise InvalidInput(f"dataset file {shown(path)}: {sizes[path]:,} of its {size:,} bytes arrived; submit again")
    given = {name: getattr(submission, name) for name in ("name", "priority", "gpus", "num_processes", "max_attempts")
               if submission.HasField(name)}  # unset: SubmitRequest's default
    return SubmitRequest(config=to_python(submission.config), overrides=list(submission.overrides),
                         files={path: b"".join(parts) for path, parts in received.items()}, source="grpc", **given)


def _caller(context) -> Identity:
    """The identity the interceptor set for this call, with the connection's peer where it named none."""
    identity = current_identity()
    return identity if identity.peer else dataclasses.replace(identity, peer=context.peer())


class JobsServicer(jobs_pb_grpc.JobsServicer):
    """Serves `JobsService`'s jobs; the caller of each RPC is `server.auth.current_identity()`."""

    def __init__(self, jobs: JobsService, poll_s: float = FOLLOW_POLL_S):
        self.jobs = jobs
        self.poll_s = poll_s

    def _read(self, context, fn, message_class):
        try:
            return _answer(fn(), message_class)
        except LoradockError as exc:
            abort_with(context, exc)

    # --- submitting and changing ------------------------------------------------------------------

    def SubmitJob(self, request_iterator, context):
        try:
            job = self.jobs.submit(receive_submission(request_iterator), _caller(context), _claimed_actor(context))
        except LoradockError as exc:
            abort_with(context, exc)
        logger.info(f"job {job.id} ({job.adapter}) submitted by {job.submitter}")
        return _answer(job.as_dict(), jobs_pb.Job)

    def _change(self, context, change, job_id: str):
        try:
            job = change(job_id, _caller(context), _claimed_actor(context))
        except LoradockError as exc:
            abort_with(context, exc)
        return _answer(job.as_dict(), jobs_pb.Job)

    def CancelJob(self, request, context):
        return self._change(context, self.jobs.cancel, request.job_id)

    def ResumeJob(self, request, context):
        return self._change(context, self.jobs.resume, request.job_id)

    def PushCheckpoint(self, request, context):
        try:
            result = self.jobs.push_checkpoint(request.job_id, request.step, request.alias or None, _caller(context),
                                               _claimed_actor(context))
            return _answer(result, jobs_pb.PushCheckpointResponse)
        except LoradockError as exc:
            abort_with(context, exc)

    # --- reading ----------------------------------------------------------------------------------

    def ListJobs(self, request, context):
        limit = request.limit if request.HasField("limit") else None
        return self._read(context, lambda: [j.as_dict() for j in self.jobs.list(
            state=request.state or None, submitter=request.submitter or None, limit=limit)], jobs_pb.JobList)

    def GetJob(self, request, context):
        return self._read(context, lambda: self.jobs.get(request.job_id).as_dict(), jobs_pb.Job)

    def ListCheckpoints(self, request, context):
        return self._read(context, lambda: self.jobs.checkpoints(request.job_id), jobs_pb.CheckpointList)

    def JobEvents(self, request, context):
        try:
            if request.newest and (request.follow or request.after):
                raise InvalidInput("the newest events are one page below `before`: ask for them without after or follow")
            if request.follow:
                yield from self._follow(request.job_id, request.after, context)
                return
            limit = request.limit if request.limit > 0 else MAX_EVENTS_PAGE
            if request.newest:
                before = request.before if request.HasField("before") else None
                events = self.jobs.newest_events(request.job_id, limit, before=before)
            else:
                events = self.jobs.events(request.job_id, after=request.after, limit=limit)
            for event in events:
                yield to_message(event, jobs_pb.JobEvent)
        except LoradockError as exc:
            abort_with(context, exc)

    def _follow(self, job_id: str, after: int, context):
        """Events above `after` as they are recorded, until the job has ended and all are sent, or the call ends."""
        ended = threading.Event()
        if not context.add_callback(ended.set):  # the client cancelled, its deadline passed, or the server is stopping
            return
        while True:
            state = self.jobs.get(job_id).state  # read before the events: the last state change is itself an event
            events = self.jobs.events(job_id, after=after)
            for event in events:
                yield to_message(event, jobs_pb.JobEvent)
                after = event.seq
            if events:
                continue  # another page may be waiting
            if state in TERMINAL or ended.wait(self.poll_s):
                return


class JobWorkersServicer(jobs_pb_grpc.JobWorkersServicer):
    """The queue's worker side for remote workers (role `worker`): each RPC is one `JobQueue` call of that name.

    The queue itself refuses what is not the worker's (a renewal or an end of a job another worker holds answers
    `lost` / `finished: false`, as it does locally); a job's events, progress, checkpoints and run are written only
    while it runs."""

    def __init__(self, jobs: JobsService):
        self.jobs = jobs

    def _do(self, context, fn, message_class=jobs_pb.WorkerAck):
        try:
            return to_message(fn(), message_class)
        except LoradockError as exc:
            abort_with(context, exc)

    @property
    def queue(self):
        return self.jobs.registry.jobs

    def RegisterWorker(self, request, context):
        def register():
            info = to_record(WorkerInfo, to_python(request))
            if not 0 < len(info.id) <= 200 or info.slots < 1:
                raise InvalidInput(f"worker id {shown(info.id)}, slots {info.slots}: a worker has an id of 1 to 200 "
                                   f"characters and at least one slot")
            self.queue.register_worker(info)
            logger.info(f"worker {info.id} on {info.host} registered ({info.slots} slot(s), {context.peer()})")
            return {}

        return self._do(context, register)

    def UnregisterWorker(self, request, context):
        return self._do(context, lambda: self.queue.unregister_worker(request.worker_id) or {})

    def ClaimJob(self, request, context):
        def claim():
            job = self.queue.claim(**_checked_lease(to_python(request)))
            return {"job": job.as_dict() if job else None}

        return self._do(context, claim, jobs_pb.ClaimJobResponse)

    def RenewLease(self, request, context):
        given = to_python(request)  # unset optional fields: None, as the queue takes them
        return self._do(context, lambda: {"state": self.queue.renew(**_checked_lease(given))}, jobs_pb.RenewLeaseResponse)

    def JobsToStop(self, request, context):
        return self._do(context, lambda: self.queue.to_stop(list(request.job_ids), request.worker_id),
                        jobs_pb.JobsToStopResponse)

    def FinishJob(self, request, context):
        def finish():
            given = to_python(request)
            if given["result_version"] is not None:
                self.jobs.registry.resolve(given["result_version"])  # a success names a version this registry holds
            return {"finished": self.queue.finish(**given)}

        return self._do(context, finish, jobs_pb.FinishJobResponse)

    def AddJobEvent(self, request, context):
        def add():
            self.jobs.running(request.job_id)
            return {"seq": self.queue.add_event(request.job_id, request.level, request.type,
                                                request.message[:MAX_EVENT_MESSAGE_CHARS], to_python(request.data))}

        return self._do(context, add, jobs_pb.AddJobEventResponse)

    def ReportProgress(self, request, context):
        def report():
            self.jobs.running(request.job_id)
            self.queue.progress(request.job_id, request.step, request.total_steps, to_python(request.metrics))
            return {}

        return self._do(context, report)

    def RecordCheckpoint(self, request, context):
        def record():
            self.jobs.running(request.job_id)
            given = to_python(request)
            self.queue.record_checkpoint(request.job_id, request.step, request.path, given["metrics"], given["files"])
            return {}

        return self._do(context, record)

    def DownloadJobData(self, request, context):
        try:
            job = self.jobs.running(request.job_id)
            if job.worker_id != request.worker_id:
                raise JobNotRunning(f"job {job.id} is held by worker {shown(job.worker_id)}, not {shown(request.worker_id)}")
            digest = check_digest(request.digest)
            stored = {f["sha256"] for c in self.queue.checkpoints(job.id) for f in c.files}
            if digest not in {d["sha256"] for d in job.datasets} | stored:
                raise NotFound(f"job {job.id} has no dataset or stored checkpoint file sha256:{digest}")
            chunks = self.jobs.registry.blobs.read_chunks(digest, request.offset, DOWNLOAD_CHUNK_BYTES)
        except LoradockError as exc:
            abort_with(context, exc)
        try:
            for chunk in chunks:
                yield pb.BlobChunk(data=chunk)
        except LoradockError as exc:
            abort_with(context, exc)

    def SetJobRun(self, request, context):
        def set_run():
            self.jobs.running(request.job_id)
            self.queue.set_run(request.job_id, request.run_id)
            return {}

        return self._do(context, set_run)


def _checked_lease(given: dict) -> dict:
    """`given`, if its lease is one a worker may hold (MIN_LEASE_S to MAX_LEASE_S); else InvalidInput naming it."""
    if not MIN_LEASE_S <= given["lease_s"] <= MAX_LEASE_S:
        raise InvalidInput(f"lease_s={given['lease_s']!r}: a worker's lease is {MIN_LEASE_S:g} to {MAX_LEASE_S:g} s")
    return given
