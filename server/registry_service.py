"""gRPC servicer for loradock.v1.Registry: a local registry served to remote `reg` commands and servers.

Blobs arrive in chunks and are stored only when their size and sha256 match what the client
declared; the bytes of an interrupted upload stay in `blobs/tmp/upload-<digest>`, so the next push
resumes there (the prefix is re-hashed from disk, never trusted). A version is committed by
`Registry.push_stored` in one transaction, and only when every blob is stored. Every accepted
write is appended to the audit log with the name of the token that made it. Answers are the typed messages of
proto/loradock/v1/registry.proto, made from the local registry's records by `registry.remote.messages`.

A training run made elsewhere (a remote fine-tuning worker) arrives as the trainer records it locally: RecordRun,
CommitPush naming the run, RecordEvaluation of the version. Each is checked whole before anything is written (the
base must be this registry's, with the same weights; the run must be of the adapter pushed; the version must be
the one evaluated), then stored by the local registry's own `record_run` / `record_evaluation`.

Capture (`registry/capture.py`) is served to an inference server backed by this registry as to `reg capture`: the
configs it polls, the requests it captured (stored by the local `Captures`, which redacts them again), the settings,
summary and rows; a batch sent twice is stored once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import grpc

from registry import Registry, audit
from registry.blobs import check_digest, hash_into
from registry.capture import CapturedRequest
from registry.errors import (
    BaseMismatch,
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidRef,
    LoradockError,
    NotFound,
    TooLarge,
    shown,
)
from registry.failures import from_os_error
from registry.jobs.queue import check_job_id
from registry.names import check_run_id, parse_ref, validate_name
from registry.records import FileRecord
from registry.remote.client import MAX_MESSAGE_BYTES, capture_config
from registry.remote.messages import to_message, to_python, to_record
from registry.remote.rpc import pb, pb_grpc
from registry.rollout_records import Arm, FeedbackRecord, Guard, Outcome

from .auth import current_identity
from .status import abort_with

MAX_CHUNK_BYTES = 4 * 2**20      # one UploadBlobRequest's data; clients send 1 MiB
DOWNLOAD_CHUNK_BYTES = 2**20
MAX_DIGESTS_PER_CALL = 10_000
# How long a pre-signed blob URL (BlobURLs) stays good: long enough for a replica to fetch an adapter, short enough
# that a URL copied out of a log is soon worthless.
BLOB_URL_TTL_S = 300
UPLOAD_LOCK_WAIT_S = 30.0


# The most one answer may hold: what a `RemoteRegistry` client accepts, less room for the envelope.
MAX_ANSWER_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
# A run's lineage and a version's evaluations come back in one `reg show` answer (Describe), so each is bounded well
# below it: a run of 100,000 logged steps' curves fits in the first.
MAX_RUN_BYTES = 4 * 2**20
MAX_EVALUATION_BYTES = 256 * 1024
MAX_LABEL_CHARS = 200            # a run's hash, times and status; an evaluation's name and split
MAX_RUN_DIR_CHARS = 4096


def _answer(value, message_class):
    """`value` (a record, or the dict a local registry returns) as `message_class`; TooLarge if it would not fit.

    Every field of one version is bounded at push time, so only a listing of many versions can get here;
    `RemoteRegistry.list_versions` then asks again one version at a time.
    """
    message = to_message(value, message_class)
    if message.ByteSize() > MAX_ANSWER_BYTES:
        raise TooLarge(f"the answer is {message.ByteSize():,} bytes, more than the {MAX_ANSWER_BYTES:,} one message may "
                       f"carry; ask for fewer (e.g. `reg ls NAME --limit 10`)")
    return message


class UploadCounters:
    """What the server stored, per blob (tests use it to prove a resumed push re-sent nothing complete)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bytes_by_digest: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()

    def add(self, digest: str, n: int) -> None:
        with self.lock:
            self.bytes_by_digest[digest] += n


class RegistryServicer(pb_grpc.RegistryServicer):
    """Serves the registry at `home`; each handler thread gets its own connection (SQLite transactions are per connection)."""

    def __init__(self, home: Path | str, max_blob_bytes: int, on_chunk=None, on_sent=None):
        self.home = Path(home)
        self.max_blob_bytes = max_blob_bytes
        self.on_chunk = on_chunk  # called as on_chunk(digest, bytes_stored_so_far) after each chunk is written
        self.on_sent = on_sent  # called as on_sent(digest, bytes_sent_so_far) after each download chunk
        self.counters = UploadCounters()
        self._local = threading.local()
        self._upload_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        Registry(self.home).close()  # create the home and run migrations once, before any call

    @property
    def registry(self) -> Registry:
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.home)
        return reg

    def _actor(self, context, claimed: str = "") -> str:
        """Who a write is recorded as: the token's name when auth is on, else what the client says it is."""
        identity = current_identity()
        return identity.token_name or claimed or _claimed_actor(context) or "unknown"

    def _audit(self, context, action: str, target: str, **detail) -> None:
        identity = current_identity()
        audit.record(self.registry.conn, action, target, token=identity.token_name, actor=_claimed_actor(context),
                     peer=identity.peer or context.peer(), detail=detail)

    # --- blobs ------------------------------------------------------------------------------

    def HasBlobs(self, request, context):
        try:
            if len(request.digests) > MAX_DIGESTS_PER_CALL:
                raise TooLarge(f"{len(request.digests)} digests in one HasBlobs call; at most {MAX_DIGESTS_PER_CALL}")
            blobs = self.registry.blobs
            states = []
            for digest in request.digests:
                check_digest(digest)
                present = blobs.has(digest)
                states.append(pb.BlobState(digest=digest, present=present, received=0 if present else blobs.received(digest)))
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.HasBlobsResponse(blobs=states, max_blob_bytes=self.max_blob_bytes, max_chunk_bytes=MAX_CHUNK_BYTES)

    def _upload_lock(self, digest: str) -> threading.Lock:
        with self._locks_guard:
            return self._upload_locks.setdefault(digest, threading.Lock())

    def UploadBlob(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload: the first message must carry digest and size")
        try:
            digest = check_digest(first.digest)
            if first.size < 0 or first.offset < 0:
                raise InvalidInput(f"upload of sha256:{digest}: size {first.size} and offset {first.offset} must be >= 0")
            if first.size > self.max_blob_bytes:
                raise TooLarge(f"blob sha256:{digest} is {first.size:,} bytes; this registry accepts blobs of at most "
                               f"{self.max_blob_bytes:,} bytes (server option --max-blob-mb)")
        except LoradockError as exc:
            abort_with(context, exc)
        lock = self._upload_lock(digest)
        if not lock.acquire(timeout=UPLOAD_LOCK_WAIT_S):
            context.abort(grpc.StatusCode.ABORTED, f"another upload of sha256:{digest} is in progress; retry")
        try:
            return self._receive(digest, first, request_iterator, context)
        finally:
            lock.release()

    def _receive(self, digest: str, first, request_iterator, context):
        blobs = self.registry.blobs
        if blobs.has(digest):
            return pb.UploadBlobResponse(digest=digest, size=first.size, already_present=True)
        path = blobs.upload_path(digest)
        have = blobs.received(digest)
        if have > first.size:  # left by an upload that declared another size: not a prefix of this blob
            path.unlink(missing_ok=True)
            have = 0
        if first.offset != have:
            context.abort(grpc.StatusCode.ABORTED,
                          f"upload of sha256:{digest} starts at byte {first.offset}, but the server holds {have}; ask HasBlobs again")
        h = hashlib.sha256()
        if have:
            hash_into(path, h)  # the kept prefix is hashed from disk, so the final check covers every byte
        stored = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            message = first
            while message is not None:
                data = message.data
                if len(data) > MAX_CHUNK_BYTES:
                    raise TooLarge(f"a chunk of {len(data):,} bytes; at most {MAX_CHUNK_BYTES:,} per message")
                if have + len(data) > first.size:
                    os.close(fd)
                    fd = -1
                    path.unlink(missing_ok=True)
                    raise InvalidInput(f"blob sha256:{digest}: more bytes than the declared {first.size:,}; upload discarded")
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    h.update(data)
                    have += len(data)
                    stored += len(data)
                    self.counters.add(digest, len(data))
                    if self.on_chunk:
                        self.on_chunk(digest, have)
                message = next(request_iterator, None)
            if have < first.size:
                raise InvalidInput(f"upload of sha256:{digest} ended at byte {have:,} of {first.size:,}; "
                                   f"the bytes are kept: push again to resume")
            os.fsync(fd)
        except LoradockError as exc:
            abort_with(context, exc)
        except OSError as exc:  # a full disk: the bytes so far stay for a resume once there is room
            abort_with(context, from_os_error(exc, f"storing the upload of sha256:{digest}", blobs.root) or exc)
        finally:
            if fd >= 0:
                os.close(fd)
        if h.hexdigest() != digest:
            path.unlink(missing_ok=True)
            abort_with(context, IntegrityError(
                f"blob sha256:{digest}: the {first.size:,} bytes received hash to {h.hexdigest()}; the upload was "
                f"discarded and nothing was committed; push again"))
        try:
            blobs.place(path, digest)
        except OSError as exc:
            abort_with(context, from_os_error(exc, f"storing blob sha256:{digest}", blobs.root) or exc)
        with self.counters.lock:
            self.counters.completed[digest] += 1
        return pb.UploadBlobResponse(digest=digest, size=first.size, received_bytes=stored)

    def BlobURLs(self, request, context):
        """Pre-signed URLs for live versions' blobs, so replicas fetch adapter bytes from the bucket, not through here."""
        try:
            if len(request.digests) > MAX_DIGESTS_PER_CALL:
                raise TooLarge(f"{len(request.digests)} digests in one BlobURLs call; at most {MAX_DIGESTS_PER_CALL}")
            urls = []
            for digest in request.digests:
                if not self._is_live_blob(check_digest(digest)):
                    raise NotFound(f"no stored blob sha256:{digest} belongs to a live version")
                url = self.registry.blobs.presigned_url(digest, BLOB_URL_TTL_S)
                if url is None:  # a local store: the bytes come through DownloadBlob
                    return pb.BlobURLsResponse()
                urls.append(pb.BlobURL(digest=digest, url=url))
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.BlobURLsResponse(urls=urls, expires_in_s=BLOB_URL_TTL_S)

    def _is_live_blob(self, digest: str) -> bool:
        return self.registry.conn.execute(
            "SELECT 1 FROM files f JOIN versions v ON v.id = f.version_id WHERE f.sha256=? AND v.deleted_at IS NULL LIMIT 1",
            (digest,),
        ).fetchone() is not None

    def DownloadBlob(self, request, context):
        try:
            digest = check_digest(request.digest)
            if not self._is_live_blob(digest):
                raise NotFound(f"no stored blob sha256:{digest} belongs to a live version")
            chunks = self.registry.blobs.read_chunks(digest, request.offset, DOWNLOAD_CHUNK_BYTES)
        except NotFound:
            abort_with(context, NotFound(f"no stored blob sha256:{digest} belongs to a live version"))
        except LoradockError as exc:
            abort_with(context, exc)
        sent = 0
        try:
            for chunk in chunks:  # an object store can fail mid-way: that ends the stream with its one-line error
                yield pb.BlobChunk(data=chunk)
                sent += len(chunk)
                if self.on_sent:
                    self.on_sent(digest, sent)
        except LoradockError as exc:
            abort_with(context, exc)

    def CommitPush(self, request, context):
        try:
            files = [FileRecord(f.path, f.size, f.sha256) for f in request.files]
            run_id = self._run_of(request.run_id, validate_name(request.name)) if request.HasField("run_id") else None
            result = self.registry.push_stored(
                files, request.name, base=request.base or None, message=request.message, alias=request.alias or None,
                allow_duplicate=request.allow_duplicate, creator=self._actor(context, request.creator), run_id=run_id,
                parent=request.parent if request.HasField("parent") else None,
            )
            v = result.version
            self._audit(context, "push", v.ref, created=result.created, manifest_digest=v.manifest_digest,
                        alias=request.alias or None, claimed_creator=request.creator, run_id=run_id)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.CommitPushResponse(version=_answer(v, pb.Version), created=result.created, warnings=result.warnings)

    # --- lineage ----------------------------------------------------------------------------

    def _run_of(self, run_id: str, adapter: str) -> str:
        """`run_id` if this registry holds that run and it trained `adapter`; else NotFound or InvalidInput."""
        check_run_id(run_id)
        run = self.registry.run(run_id)
        if run is None:
            raise NotFound(f"no training run {run_id!r} is recorded on this registry; record the run first "
                           f"(`record_run`), then push or evaluate with its id")
        if run["adapter"] != adapter:
            raise InvalidInput(f"run {run_id!r} trained adapter {run['adapter']!r}, not {adapter!r}; "
                               f"a version names the run of its own adapter")
        return run_id

    def RecordRun(self, request, context):
        try:
            _check_size(f"run {shown(request.run_id)}'s lineage", request, MAX_RUN_BYTES)
            run = self._run_arguments(request)
            created = self._record_run(run)
            recorded = self.registry.run(run["run_id"])
            self._audit(context, "run.record", run["run_id"], adapter=run["adapter"], base=run["base"].name,
                        config_hash=run["config_hash"], job_id=run["job_id"], created=created)
            answer = _answer(recorded, pb.Run)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.RecordRunResponse(run=answer, created=created)

    def _run_arguments(self, request) -> dict:
        """`Registry.record_run`'s arguments from a request, every value from outside checked (the base against ours)."""
        run_id = check_run_id(request.run_id)
        adapter = validate_name(request.adapter)
        sent = to_python(request)
        for key in ("config", "datasets", "libraries", "hardware", "metrics"):
            if sent[key] is None:
                raise InvalidInput(f"run {run_id!r}: no {key} was sent (send an empty one if there is none)")
        for i, dataset in enumerate(sent["datasets"]):
            if not isinstance(dataset, dict):
                raise InvalidInput(f"run {run_id!r}: datasets[{i}] is {shown(dataset)}, not an object")
        for key in ("config_hash", "base_name", "base_digest", "started_at", "finished_at", "status"):
            _check_label(f"run {run_id!r}: {key}", sent[key])
        if sent["run_dir"] is not None and len(sent["run_dir"]) > MAX_RUN_DIR_CHARS:
            raise TooLarge(f"run {run_id!r}: run_dir is {len(sent['run_dir']):,} characters; at most {MAX_RUN_DIR_CHARS:,}")
        if not math.isfinite(sent["duration_s"]) or sent["duration_s"] < 0:
            raise InvalidInput(f"run {run_id!r}: duration_s {sent['duration_s']!r} must be a number of seconds >= 0")
        if sent["job_id"] is not None:
            check_job_id(sent["job_id"])
        base = self.registry.get_base(sent["base_name"])
        if base.weights_digest != sent["base_digest"]:
            raise BaseMismatch(f"run {run_id!r} trained on base {base.name!r} with weights {shown(sent['base_digest'])}, "
                               f"but this registry's {base.name!r} has weights {base.weights_digest}; register the base "
                               f"the run trained on (under another name) and record the run against it")
        return {**{k: v for k, v in sent.items() if k not in ("base_name", "base_digest")}, "adapter": adapter, "base": base}

    def _record_run(self, run: dict) -> bool:
        """Record `run`; False if the very same run is already recorded (a retried call), Conflict if another one is."""
        existing = self.registry.run(run["run_id"])
        if existing is None:
            try:
                self.registry.record_run(**run)
                return True
            except sqlite3.IntegrityError:  # recorded by another call since the look above
                existing = self.registry.run(run["run_id"])
                if existing is None:
                    raise
        stored = {**{k: v for k, v in run.items() if k not in ("run_id", "base")},
                  "base_name": run["base"].name, "base_digest": run["base"].weights_digest}
        differing = [k for k, v in stored.items() if _as_stored(existing[k]) != _as_stored(v)]
        if differing:
            raise Conflict(f"run {run['run_id']!r} is already recorded, with another {', '.join(differing)}; "
                           f"a run id names one run: record this one under a new id")
        return False

    def RecordEvaluation(self, request, context):
        try:
            ref = request.ref
            _check_size(f"the evaluation of {shown(ref)}", request, MAX_EVALUATION_BYTES)
            parsed = parse_ref(ref)
            if parsed.version is None:
                raise InvalidRef(f"an evaluation names one version as NAME:N, not {shown(ref)}")
            version = self.registry.resolve(parsed)
            if request.manifest_digest != version.manifest_digest:
                raise Conflict(f"{version.ref} has manifest {version.manifest_digest}, not "
                               f"{shown(request.manifest_digest)}: the evaluation is of another version")
            sent = to_python(request)
            _check_label(f"the evaluation of {version.ref}: name", sent["name"])
            _check_label(f"the evaluation of {version.ref}: split", sent["split"], allow_empty=True)
            if sent["metrics"] is None:
                raise InvalidInput(f"the evaluation of {version.ref}: no metrics were sent")
            run_id = self._run_of(sent["run_id"], version.adapter) if sent["run_id"] is not None else None
            self.registry.record_evaluation(version, sent["name"], sent["split"], sent["metrics"], sent["base_metrics"],
                                            run_id=run_id, passed=sent["passed"], failures=sent["failures"])
            conn = self.registry.conn
            evaluation_id = conn.execute("SELECT last_insert_rowid()").fetchone()[0]  # this connection's insert
            [recorded] = [e for e in self.registry.evaluations(version.id) if e["id"] == evaluation_id]
            self._audit(context, "evaluation.record", version.ref, name=sent["name"], split=sent["split"],
                        run_id=run_id, passed=sent["passed"])
            answer = _answer(recorded, pb.Evaluation)
        except LoradockError as exc:
            abort_with(context, exc)
        return answer

    # --- reading ----------------------------------------------------------------------------

    def _read(self, context, fn, message_class):
        try:
            return _answer(fn(), message_class)
        except LoradockError as exc:
            abort_with(context, exc)

    def Resolve(self, request, context):
        return self._read(context, lambda: self.registry.resolve(request.ref), pb.Version)

    def ListAdapters(self, request, context):
        return self._read(context, self.registry.list_adapters, pb.AdapterSummaryList)

    def GetAdapter(self, request, context):
        def get():
            name = validate_name(request.name)
            return {"name": name, "live_versions": self.registry.count_versions(name), "aliases": self.registry.aliases(name)}

        return self._read(context, get, pb.AdapterState)

    def ListVersions(self, request, context):
        reg, limit = self.registry, request.limit or None
        if request.summaries:
            listing = lambda: {"versions": [], "summaries": reg.version_summaries(request.name, request.include_deleted, limit)}  # noqa: E731
        else:
            listing = lambda: {"versions": reg.list_versions(request.name, request.include_deleted, limit), "summaries": []}  # noqa: E731
        return self._read(context, listing, pb.VersionListing)

    def Describe(self, request, context):
        return self._read(context, lambda: self.registry.describe(request.ref), pb.Description)

    def Diff(self, request, context):
        return self._read(context, lambda: self.registry.diff(request.ref_a, request.ref_b), pb.VersionDiff)

    def ListBases(self, request, context):
        return self._read(context, self.registry.list_bases, pb.BaseList)

    def AliasHistory(self, request, context):
        return self._read(context, lambda: self.registry.alias_history(request.name, request.alias or None), pb.AliasEventList)

    def RolloutShow(self, request, context):
        return self._read(context, lambda: self.registry.rollouts.show(request.name), pb.RolloutView)

    def RolloutReport(self, request, context):
        return self._read(context, lambda: self.registry.rollouts.report(request.name, since=request.since or None),
                          pb.RolloutReportResponse)

    def RolloutState(self, request, context):
        def state():
            rollouts = self.registry.rollouts
            return {"change_id": rollouts.change_id(), "revisions": [r.to_dict() for r in rollouts.all_current().values()]}

        return self._read(context, state, pb.RolloutStateResponse)

    def RolloutRecord(self, request, context):
        def record():
            outcomes = [to_record(Outcome, to_python(o)) for o in request.outcomes]
            feedback = [to_record(FeedbackRecord, to_python(f)) for f in request.feedback]
            rollouts = self.registry.rollouts
            rollouts.record(outcomes, feedback)
            guarded = [rollouts.check_guard(name) for name in sorted({o.adapter for o in outcomes})]
            return {"outcomes": len(outcomes), "feedback": len(feedback), "guard": [r.to_dict() for r in guarded if r]}

        return self._read(context, record, pb.RolloutRecordResponse)

    def Audit(self, request, context):
        return self._read(context, lambda: self.registry.audit_entries(request.limit or None), pb.AuditEntryList)

    def Verify(self, request, context):
        return self._read(context, lambda: self.registry.verify(request.ref or None), pb.VerifyReport)

    # --- writing ----------------------------------------------------------------------------

    def SetAlias(self, request, context):
        try:
            old = self.registry.set_alias(request.name, request.alias, request.version, actor=self._actor(context))
            self._audit(context, "alias.set", f"{request.name}@{request.alias}", version=request.version, was=old)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.AliasChangeResponse(old_version=old or 0)

    def RemoveAlias(self, request, context):
        try:
            old = self.registry.remove_alias(request.name, request.alias, actor=self._actor(context))
            self._audit(context, "alias.rm", f"{request.name}@{request.alias}", was=old)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.AliasChangeResponse(old_version=old)

    def RemoveVersion(self, request, context):
        try:
            version = self.registry.remove_version(request.ref, force=request.force, actor=self._actor(context))
            self._audit(context, "rm", version.ref, requested=request.ref, force=request.force)
        except LoradockError as exc:
            abort_with(context, exc)
        return _answer(version, pb.Version)

    def Gc(self, request, context):
        try:
            report = self.registry.gc(dry_run=request.dry_run, grace_s=request.grace_s)
            if not request.dry_run:
                self._audit(context, "gc", "-", removed=len(report.removed), removed_bytes=report.removed_bytes)
        except LoradockError as exc:
            abort_with(context, exc)
        return _answer(report, pb.GcReport)

    def RolloutChange(self, request, context):
        try:
            rollouts, actor = self.registry.rollouts, self._actor(context)
            if request.action == "set":
                guard = to_record(Guard, to_python(request.guard)) if request.HasField("guard") else None
                revision = rollouts.set(request.name, [Arm(a.version, a.weight) for a in request.arms], sticky=request.sticky,
                                        guard=guard, reason=request.reason, actor=actor)
            elif request.action == "promote":
                revision = rollouts.promote(request.name, request.version, reason=request.reason, actor=actor)
            elif request.action == "rollback":
                revision = rollouts.rollback(request.name, reason=request.reason, actor=actor)
            elif request.action == "clear":
                revision = rollouts.clear(request.name, reason=request.reason, actor=actor)
            else:
                raise InvalidInput(f"rollout action {request.action!r}: use set, promote, rollback or clear")
            self._audit(context, f"rollout.{request.action}", request.name, revision=revision.revision,
                        arms=revision.describe_arms(), reason=request.reason)
        except LoradockError as exc:
            abort_with(context, exc)
        return _answer(revision.to_dict(), pb.Revision)

    # --- capture ----------------------------------------------------------------------------

    def CaptureState(self, request, context):
        def state():
            captures = self.registry.captures
            change_id = captures.change_id()  # first: a config set in between is then seen again at the next poll
            return {"change_id": change_id, "configs": captures.all()}

        return self._read(context, state, pb.CaptureStateResponse)

    def CaptureRecord(self, request, context):
        def record():
            sent = [to_record(CapturedRequest, to_python(r)) for r in request.requests]
            return {"stored": self.registry.captures.record([r for r in sent if not self._captured_before(r)])}

        return self._read(context, record, pb.CaptureRecordResponse)

    def _captured_before(self, request: CapturedRequest) -> bool:
        """Whether this very request (adapter, request id and the time it was served) is stored already: a batch
        sent again after a call that failed or timed out once stored is not stored twice."""
        return bool(request.at) and self.registry.conn.execute(
            "SELECT 1 FROM captures WHERE request_id=? AND adapter=? AND at=? LIMIT 1",
            (request.request_id, request.adapter, request.at)).fetchone() is not None

    def CaptureSummary(self, request, context):
        return self._read(context, lambda: self.registry.captures.summary(request.adapter), pb.CaptureSummaryResponse)

    def CaptureRows(self, request, context):
        try:
            rows = self.registry.captures.rows(request.adapter, since=request.since if request.HasField("since") else None,
                                               limit=request.limit or None)
        except LoradockError as exc:
            abort_with(context, exc)
        for row in rows:  # one message each: together they may be far larger than one answer may carry
            yield to_message(row, pb.CapturedRow)

    def CaptureSet(self, request, context):
        try:
            if not request.HasField("config"):
                raise InvalidInput(f"capture set {shown(request.adapter)}: no config was sent")
            config = capture_config(to_python(request.config))
            self.registry.captures.set(request.adapter, config, actor=self._actor(context))
            self._audit(context, "capture.set", request.adapter, sample=config.sample, retain_s=config.retain_s,
                        max_bytes=config.max_bytes, redact=list(config.redact))
        except LoradockError as exc:
            abort_with(context, exc)
        return _answer(config, pb.CaptureConfig)

    def CaptureOff(self, request, context):
        try:
            was_on = self.registry.captures.off(validate_name(request.adapter))
            self._audit(context, "capture.off", request.adapter, was_on=was_on)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.CaptureOffResponse(was_on=was_on)

    def CaptureClear(self, request, context):
        try:
            deleted = self.registry.captures.clear(request.adapter)
            self._audit(context, "capture.clear", request.adapter, deleted=deleted)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.CaptureClearResponse(deleted=deleted)

    def CaptureExpire(self, request, context):
        try:
            removed = self.registry.captures.expire()
            self._audit(context, "capture.expire", "-", removed=removed)
        except LoradockError as exc:
            abort_with(context, exc)
        return pb.CaptureExpireResponse(removed=removed)


def _check_size(what: str, request, limit: int) -> None:
    size = request.ByteSize()
    if size > limit:
        raise TooLarge(f"{what} is {size:,} bytes; at most {limit:,} are accepted (it is shown whole by `reg show`)")


def _check_label(what: str, text: str, allow_empty: bool = False) -> None:
    if not text and not allow_empty:
        raise InvalidInput(f"{what} is empty")
    if len(text) > MAX_LABEL_CHARS:
        raise TooLarge(f"{what} is {len(text):,} characters ({shown(text, 60)}); at most {MAX_LABEL_CHARS}")


def _as_stored(value) -> str:
    """A run's value as the registry's JSON would hold it, to tell the same run sent again from another one."""
    return json.dumps(value, sort_keys=True)


def _claimed_actor(context) -> str:
    """What the client says it is (`LORADOCK_USER`, else user@host): recorded beside the token's name, never trusted."""
    for key, value in context.invocation_metadata() or ():
        if key == "loradock-actor" and isinstance(value, str):
            return value[:200]
    return ""
