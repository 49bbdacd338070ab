"""`RemoteRegistry`: the registry API over gRPC, for `reg --registry grpc://host:port ...` and remote-backed servers.

It implements `registry.interface.RegistryAPI`, as the local `Registry` does (resolve, push,
pull, ls, show, diff, aliases, rm, gc, verify, rollouts, capture, jobs, training runs and evaluations...) and returns the
same records, so every command prints the same output whichever registry it talks to. A push hashes the directory locally,
asks which blobs the server lacks, uploads only those (resuming an interrupted upload at the byte
the server holds), then commits. A pull verifies every downloaded byte against its sha256.

Answers arrive as typed messages (registry/remote/rpc, from proto/loradock/v1/registry.proto) and become
records through the one converter in `registry.remote.messages`. It imports nothing of `server/` and no torch.
"""

from __future__ import annotations

import hashlib
import os
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from ..adapters import inspect_adapter_dir
from ..bases import Base
from ..blobs import hash_into, sha256_file
from ..capture import CaptureConfig, CapturedRequest
from ..errors import (
    BaseNotFound,
    Conflict,
    IntegrityError,
    InvalidInput,
    LoradockError,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    class_for_status,
    error_class_named,
)
from ..maintenance import DEFAULT_GC_GRACE_S, GcReport, VerifyReport
from ..manifests import write_version_dir
from ..names import Ref, check_run_id, validate_name
from ..records import AdapterSummary, AliasEvent, FileRecord, PushResult, Version
from ..rollout_records import Arm, FeedbackRecord, Guard, Outcome, Revision
from ..store import check_push_text, current_actor, default_home
from . import ERROR_CLASS_KEY
from .jobs import RemoteJobs
from .messages import to_message, to_python, to_record
from .rpc import pb, pb_grpc

logger = logging.getLogger(__name__)

CHUNK_BYTES = 2**20
MAX_MESSAGE_BYTES = 16 * 2**20
UPLOAD_RETRIES = 5
URL_TIMEOUT_S = 60  # a pre-signed download that stalls this long falls back to the registry
# The most captured requests one CaptureRecord carries: under what an inference server that also serves its registry
# accepts (server/app.py's REGISTRY_MESSAGE_BYTES, 5 MiB), so a large batch goes in several calls.
MAX_CAPTURE_BATCH_BYTES = 4 * 2**20


def parse_registry_url(url: str) -> tuple[str, bool]:
    """`grpc://host:port` -> ("host:port", tls=False); `grpcs://host:port` -> (..., tls=True)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidInput(f"--registry {url!r}: expected grpc://HOST:PORT (or grpcs://HOST:PORT for TLS)")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise InvalidInput(f"--registry {url!r}: no port (e.g. grpc://{parts.hostname}:50052)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "grpcs"


MAX_CA_BYTES = 1024 * 1024


def _read_ca(path: Path | str) -> bytes:
    """The bytes of a PEM CA bundle, checked here: gRPC would accept anything and fail every call with a vague UNAVAILABLE."""
    import ssl

    try:
        if Path(path).stat().st_size > MAX_CA_BYTES:
            raise InvalidInput(f"--tls-ca {path}: larger than {MAX_CA_BYTES:,} bytes; give a PEM CA certificate file")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"--tls-ca {path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("ascii")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError("no BEGIN CERTIFICATE block")
        ssl.create_default_context(cadata=text)
    except (ValueError, ssl.SSLError) as exc:
        raise InvalidInput(f"--tls-ca {path}: not a PEM CA certificate ({exc}); give the server's CA certificate in PEM "
                           f"form (-----BEGIN CERTIFICATE-----...)") from None
    return data


class RemoteRegistry:
    """`RemoteRegistry("grpc://host:50052", token=...)`: a registry served by `reg serve` elsewhere.

    `home` is a local directory for what a remote-backed server caches (pulled adapters); the
    registry's own state stays on the server.
    """

    is_local = False

    def __init__(self, url: str, token: str | None = None, tls_ca: Path | str | None = None, home: Path | str | None = None,
                 timeout: float = 120.0, chunk_bytes: int = CHUNK_BYTES):
        self.url = url
        self._connect_args = (url, token, tls_ca, home, timeout, chunk_bytes)
        self.target, tls = parse_registry_url(url)
        self.home = Path(home) if home else default_home()
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if tls or tls_ca:
            ca = _read_ca(tls_ca) if tls_ca else None
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=ca), options)
        else:
            self.channel = grpc.insecure_channel(self.target, options)
        self.stub = pb_grpc.RegistryStub(self.channel)
        self.metadata = [("loradock-actor", current_actor())]
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        self.last_push: dict = {}
        self.last_pull: dict = {}

    def close(self) -> None:
        self.channel.close()

    def new_connection(self) -> "RemoteRegistry":
        """Another client of the same registry (a server's background thread gets its own)."""
        return RemoteRegistry(*self._connect_args)

    def __enter__(self) -> "RemoteRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _local_only(self, what: str) -> InvalidInput:
        return InvalidInput(f"{what} works on a local registry only, not on {self.url}: "
                            f"run it on the registry's host (with --home) or drop --registry")

    # --- calls --------------------------------------------------------------------------

    def _error(self, exc: grpc.RpcError) -> LoradockError:
        code, details = exc.code(), exc.details() or ""
        name = dict(exc.trailing_metadata() or ()).get(ERROR_CLASS_KEY)
        cls = (error_class_named(name) if name else None) or class_for_status(code.name)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not name:
            return cls(f"registry {self.url} is unreachable ({code.name}: {details})")
        if cls in (Unauthenticated, PermissionDenied):
            return cls(f"registry {self.url}: {details}")
        return cls(details if cls is not LoradockError else f"registry {self.url}: {code.name}: {details}")

    def _call(self, method: str, request, timeout: float | None = -1.0):
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata,
                                              timeout=self.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _answer(self, method: str, request):
        """The reply to `request` as plain Python (`registry.remote.messages.to_python`)."""
        return to_python(self._call(method, request))

    # --- resolving and listing ----------------------------------------------------------

    def resolve(self, ref: str | Ref) -> Version:
        return to_record(Version, self._answer("Resolve", pb.RefRequest(ref=str(ref))))

    def list_adapters(self) -> list[AdapterSummary]:
        return [to_record(AdapterSummary, d) for d in self._answer("ListAdapters", pb.RegistryListRequest())]

    def list_versions(self, name: str, include_deleted: bool = False, limit: int | None = None) -> list[Version]:
        """Versions of `name`, newest first; one message when they fit in one, else one version per message."""
        request = pb.ListVersionsRequest(name=name, include_deleted=include_deleted, limit=limit or 0)
        try:
            return [to_record(Version, d) for d in self._answer("ListVersions", request)["versions"]]
        except TooLarge:
            if include_deleted:
                raise
        return [self.resolve(f"{name}:{s['number']}") for s in self.version_summaries(name, limit=limit)]

    def version_summaries(self, name: str, include_deleted: bool = False, limit: int | None = None) -> list[dict]:
        request = pb.ListVersionsRequest(name=name, include_deleted=include_deleted, limit=limit or 0, summaries=True)
        return self._answer("ListVersions", request)["summaries"]

    def count_versions(self, name: str) -> int:
        return self._answer("GetAdapter", pb.GetAdapterRequest(name=name))["live_versions"]

    def aliases(self, name: str) -> dict[str, int]:
        return self._answer("GetAdapter", pb.GetAdapterRequest(name=name))["aliases"]

    def describe(self, ref: str) -> dict:
        return self._answer("Describe", pb.RefRequest(ref=ref))

    def diff(self, ref_a: str, ref_b: str) -> dict:
        return self._answer("Diff", pb.DiffRequest(ref_a=ref_a, ref_b=ref_b))

    def list_bases(self) -> list[Base]:
        return [to_record(Base, d) for d in self._answer("ListBases", pb.RegistryListRequest())]

    def get_base(self, name: str) -> Base:
        for base in self.list_bases():
            if base.name == name:
                return base
        raise BaseNotFound(f"no base model named {name!r} in {self.url} (see `reg --registry {self.url} base ls`)")

    def audit_entries(self, limit: int | None = None) -> list[dict]:
        return self._answer("Audit", pb.AuditRequest(limit=limit or 0))

    def add_base(self, path_or_hub_id: str, name: str, source: str | None = None, hub_id: str | None = None) -> tuple[Base, bool]:
        """Refused: a base is registered from a directory (or hub cache) on the registry's host."""
        raise self._local_only("add base")

    def fetch_default_base(self) -> tuple[Base, bool]:
        """Refused: the default base is prepared on the registry's host."""
        raise self._local_only("fetch default base")

    # --- aliases and deleting -----------------------------------------------------------

    def set_alias(self, name: str, alias: str, number: int, actor: str | None = None) -> int | None:
        old = self._call("SetAlias", pb.SetAliasRequest(name=name, alias=alias, version=number)).old_version
        return old or None

    def remove_alias(self, name: str, alias: str, actor: str | None = None) -> int:
        return self._call("RemoveAlias", pb.RemoveAliasRequest(name=name, alias=alias)).old_version

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        request = pb.AliasHistoryRequest(name=name, alias=alias or "")
        return [to_record(AliasEvent, d) for d in self._answer("AliasHistory", request)]

    def remove_version(self, ref: str, force: bool = False, actor: str | None = None) -> Version:
        return to_record(Version, self._answer("RemoveVersion", pb.RemoveVersionRequest(ref=ref, force=force)))

    # --- maintenance --------------------------------------------------------------------

    def gc(self, dry_run: bool = False, grace_s: float | None = None, all_unreferenced: bool = False) -> GcReport:
        if all_unreferenced:
            raise InvalidInput(f"gc --all-unreferenced works on a local registry only, not on {self.url}: run it on the "
                               f"registry's host (with --home)")
        grace = DEFAULT_GC_GRACE_S if grace_s is None else grace_s
        return to_record(GcReport, self._answer("Gc", pb.GcRequest(dry_run=dry_run, grace_s=grace)))

    def verify(self, ref: str | None = None) -> VerifyReport:
        return to_record(VerifyReport, self._answer("Verify", pb.RefRequest(ref=ref or "")))

    @property
    def rollouts(self) -> "RemoteRollouts":
        if not hasattr(self, "_rollouts"):
            self._rollouts = RemoteRollouts(self)
        return self._rollouts

    @property
    def captures(self) -> "RemoteCaptures":
        if not hasattr(self, "_captures"):
            self._captures = RemoteCaptures(self)
        return self._captures

    @property
    def jobs(self) -> RemoteJobs:
        """Fine-tuning jobs over the Jobs service (`registry/remote/jobs.py`)."""
        if not hasattr(self, "_jobs"):
            self._jobs = RemoteJobs(self)
        return self._jobs

    # --- push ---------------------------------------------------------------------------

    def push(
        self, directory: Path | str, name: str, base: str | None = None, message: str = "", alias: str | None = None,
        allow_duplicate: bool = False, run_id: str | None = None, creator: str | None = None, parent: int | None = None,
    ) -> PushResult:
        """Upload what the server lacks (resuming interrupted blobs), then commit the version in one server transaction."""
        validate_name(name)
        if alias is not None:
            validate_name(alias, "alias")
        if run_id is not None:
            check_run_id(run_id)  # the server checks that the run is recorded there, for this adapter
        check_push_text(message, creator or current_actor())
        info = inspect_adapter_dir(directory)  # a bad directory is refused before anything is sent
        files = []
        for rel in info.files:
            path = info.directory / rel
            files.append(FileRecord(rel, path.stat().st_size, sha256_file(path)))
        sent, skipped = self._upload_missing(info.directory, files)
        request = pb.CommitPushRequest(
            name=name, files=[pb.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files], base=base or "",
            message=message, alias=alias or "", allow_duplicate=allow_duplicate, creator=creator or current_actor(),
            run_id=run_id, parent=parent,
        )
        reply = self._call("CommitPush", request)
        self.last_push = {"bytes_sent": sent, "blobs_skipped": skipped}
        return PushResult(to_record(Version, to_python(reply.version)), reply.created, info.warnings + list(reply.warnings))

    def _upload_missing(self, directory: Path, files: list[FileRecord]) -> tuple[int, int]:
        """Upload every blob the server lacks; return (bytes sent, blobs the server already had)."""
        by_digest = {f.sha256: f for f in files}
        sent = 0
        for attempt in range(UPLOAD_RETRIES):
            state = self._call("HasBlobs", pb.HasBlobsRequest(digests=list(by_digest)))
            missing = [b for b in state.blobs if not b.present]
            if attempt == 0:
                skipped = len(by_digest) - len(missing)
            for f in (by_digest[b.digest] for b in missing):
                if f.size > state.max_blob_bytes:
                    raise TooLarge(f"{f.path} is {f.size:,} bytes; {self.url} accepts blobs of at most "
                                   f"{state.max_blob_bytes:,} bytes")
            try:
                for b in missing:
                    f = by_digest[b.digest]
                    sent += self._upload(directory / f.path, f, b.received, min(self.chunk_bytes, state.max_chunk_bytes))
                return sent, skipped
            except _Retry:
                time.sleep(0.2 * (attempt + 1))
        raise Conflict(f"uploads to {self.url} kept colliding with other pushes of the same blobs; push again")

    def _upload(self, path: Path, f: FileRecord, offset: int, chunk: int) -> int:
        def messages():
            with open(path, "rb") as fh:
                fh.seek(offset)
                yield pb.UploadBlobRequest(digest=f.sha256, size=f.size, offset=offset, data=fh.read(chunk))
                while data := fh.read(chunk):
                    yield pb.UploadBlobRequest(data=data)

        try:
            reply = self.stub.UploadBlob(messages(), metadata=self.metadata, timeout=None)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ABORTED:  # another push of the same blob, or a stale resume offset
                raise _Retry() from None
            raise self._error(exc) from None
        return reply.received_bytes

    # --- lineage ------------------------------------------------------------------------

    def record_run(
        self, run_id: str, adapter: str, config: dict, config_hash: str, base: Base, datasets: list[dict], seed: int,
        libraries: dict, hardware: dict, metrics: dict, started_at: str, finished_at: str, duration_s: float,
        run_dir: str | None, status: str = "succeeded", job_id: str | None = None,
    ) -> None:
        """Record a training run made elsewhere (a remote worker); the registry refuses it unless it holds `base`'s weights.

        Recording the same run again is a no-op (a retried call), another run under the same id a `Conflict`."""
        check_run_id(run_id)
        validate_name(adapter)
        request = to_message({
            "run_id": run_id, "adapter": adapter, "config": config, "config_hash": config_hash, "base_name": base.name,
            "base_digest": base.weights_digest, "datasets": datasets, "seed": seed, "libraries": libraries,
            "hardware": hardware, "metrics": metrics, "started_at": started_at, "finished_at": finished_at,
            "duration_s": duration_s, "run_dir": run_dir, "status": status, "job_id": job_id,
        }, pb.RecordRunRequest)
        self._call("RecordRun", request)

    def record_evaluation(
        self, version: Version, name: str, split: str, metrics: dict, base_metrics: dict | None = None,
        run_id: str | None = None, passed: bool | None = None, failures: list[str] | None = None,
    ) -> None:
        """Attach evaluation results to a version of this registry (named by its ref and checked by its manifest digest)."""
        if run_id is not None:
            check_run_id(run_id)
        request = to_message({
            "ref": version.ref, "manifest_digest": version.manifest_digest, "name": name, "split": split,
            "metrics": metrics, "base_metrics": base_metrics, "run_id": run_id, "passed": passed,
            "failures": list(failures or []),
        }, pb.RecordEvaluationRequest)
        self._call("RecordEvaluation", request)

    # --- pull ---------------------------------------------------------------------------

    def pull(self, ref: str | Ref, out: Path | str | None = None, force: bool = False) -> tuple[Version, Path]:
        """Write a version as a plain PEFT directory, verifying every downloaded file's size and sha256.

        A pull cut off halfway keeps what it downloaded (in a hidden directory next to `out`); pulling the
        same version to the same place again asks the server only for the bytes still missing."""
        version = self.resolve(ref)
        self.last_pull = {"bytes_received": 0, "from_object_store": 0}
        urls = self.blob_urls([f.sha256 for f in version.files])

        def download(f: FileRecord, dest: Path) -> None:
            what = f"{version.ref} {f.path}"
            if f.sha256 in urls:
                try:
                    self.download_verified(f.sha256, f.size, dest, what, lambda offset: _url_chunks(urls[f.sha256], offset))
                    self.last_pull["from_object_store"] += 1
                    return
                except OSError as exc:  # the bucket is not reachable from here, or the URL expired: ask the server
                    logger.info("%s: the object store URL failed (%s); downloading through the registry", what, exc)
            self.fetch_blob(f.sha256, f.size, dest, what)

        return version, write_version_dir(version, out, force, download, home=self.home, resumable=True)

    def blob_urls(self, digests: list[str]) -> dict[str, str]:
        """Pre-signed object-store URLs for `digests` (live versions' blobs), or {} when the registry keeps them on
        its own disk or is too old to say."""
        try:
            answer = self.stub.BlobURLs(pb.BlobURLsRequest(digests=sorted(set(digests))), metadata=self.metadata,
                                        timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return {}
            raise self._error(exc) from None
        return {u.digest: u.url for u in answer.urls}

    def fetch_blob(self, digest: str, size: int, dest: Path, what: str) -> None:
        """Download blob `digest` (of `size` bytes, a live version's) to `dest`; see `download_verified`."""
        self.download_verified(digest, size, dest, what, lambda offset: self.stub.DownloadBlob(
            pb.DownloadBlobRequest(digest=digest, offset=offset), metadata=self.metadata, timeout=None))

    def download_verified(self, digest: str, size: int, dest: Path, what: str, chunks) -> None:
        """Write the blob `chunks(offset)` streams to `dest`, on from what `dest` already holds of it; verified by size
        and sha256 (a mismatch removes `dest` and raises IntegrityError naming `what`)."""
        h, have = hashlib.sha256(), _resume_point(dest, size)
        if have:
            hash_into(dest, h)
        try:
            if have < size or size == 0:
                with open(dest, "ab") as fh:
                    for chunk in chunks(have):
                        h.update(chunk.data)
                        fh.write(chunk.data)
                        have += len(chunk.data)
                        self.last_pull["bytes_received"] = self.last_pull.get("bytes_received", 0) + len(chunk.data)
                    fh.flush()
                    os.fsync(fh.fileno())
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        if have != size or h.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise IntegrityError(f"{what}: downloaded {have} bytes hashing to {h.hexdigest()}, expected {size} bytes "
                                 f"with sha256:{digest}")

    def child_environment(self) -> dict[str, str]:
        """The token and CA a child process needs to connect as this client does, as `reg`'s environment variables."""
        _, token, tls_ca, *_ = self._connect_args
        return {**({"LORADOCK_TOKEN": token} if token else {}), **({"LORADOCK_TLS_CA": str(tls_ca)} if tls_ca else {})}


def _resume_point(dest: Path, expected_size: int) -> int:
    """How many bytes of `dest` an interrupted pull left to build on (none if there are more than the file has)."""
    have = dest.stat().st_size if dest.exists() else 0
    if have > expected_size:
        dest.unlink()
        return 0
    return have


class _Retry(Exception):
    pass


class RemoteRollouts:
    """`registry.rollouts` of a remote registry: the calls `reg rollout` makes, and those of the rollout worker of
    an inference server backed by it (its routing state, and recording what it served; the guards run there)."""

    def __init__(self, remote: RemoteRegistry):
        self.remote = remote
        self._current: dict = {}
        self._guarded: dict = {}

    def change_id(self) -> int:
        """Fetches the revisions in force too (one call), which `all_current` then returns."""
        state = self.remote._answer("RolloutState", pb.RolloutStateRequest())
        self._current = {d["adapter"]: to_record(Revision, d) for d in state["revisions"]}
        return state["change_id"]

    def all_current(self) -> dict[str, Revision]:
        return dict(self._current)

    def record(self, outcomes: list[Outcome], feedback: list[FeedbackRecord] = ()) -> None:
        reply = self.remote._answer("RolloutRecord", pb.RolloutRecordRequest(
            outcomes=[to_message(o, pb.Outcome) for o in outcomes],
            feedback=[to_message(f, pb.FeedbackRecord) for f in feedback]))
        self._guarded.update({d["adapter"]: to_record(Revision, d) for d in reply["guard"]})

    def check_guard(self, name: str) -> Revision | None:
        """The revision the registry's guard wrote for `name` while recording the last batch, if any."""
        return self._guarded.pop(name, None)

    def show(self, name: str) -> dict:
        return self.remote._answer("RolloutShow", pb.RolloutRequest(name=name))

    def report(self, name: str, since: int | None = None) -> dict:
        return self.remote._answer("RolloutReport", pb.RolloutRequest(name=name, since=since or 0))

    def _change(self, name: str, action: str, reason: str, **args) -> Revision:
        request = pb.RolloutChangeRequest(name=name, action=action, reason=reason, **args)
        return to_record(Revision, self.remote._answer("RolloutChange", request))

    def set(self, name: str, arms: list[Arm], sticky: bool = False, guard: Guard | None = None, reason: str = "",
            actor: str | None = None) -> Revision:
        return self._change(name, "set", reason, arms=[to_message(a, pb.Arm) for a in arms], sticky=sticky,
                            guard=to_message(guard, pb.Guard) if guard else None)

    def promote(self, name: str, version: int, reason: str = "", actor: str | None = None) -> Revision:
        return self._change(name, "promote", reason, version=version)

    def rollback(self, name: str, reason: str = "", actor: str | None = None) -> Revision:
        return self._change(name, "rollback", reason)

    def clear(self, name: str, reason: str = "", actor: str | None = None) -> Revision:
        return self._change(name, "clear", reason)


class RemoteCaptures:
    """`registry.captures` of a remote registry: what `reg capture set|show|off|clear` calls, and what the rollout
    worker of an inference server backed by it polls (the configs) and writes (what it captured, redacted there and
    again on the registry). Answers are those of the local `registry.capture.Captures`: `CaptureConfig`s and dicts of
    the same keys in the same order."""

    def __init__(self, remote: RemoteRegistry):
        self.remote = remote

    def set(self, adapter: str, config: CaptureConfig, actor: str | None = None) -> CaptureConfig:
        reply = self.remote._answer("CaptureSet", pb.CaptureSetRequest(adapter=adapter,
                                                                       config=to_message(config, pb.CaptureConfig)))
        return capture_config(reply)

    def get(self, adapter: str) -> CaptureConfig | None:
        return self.all().get(adapter)

    def all(self) -> dict[str, CaptureConfig]:
        """Every adapter with capture on, and its config (what a server polls)."""
        configs = self.remote._answer("CaptureState", pb.CaptureStateRequest())["configs"]
        return {adapter: capture_config(config) for adapter, config in configs.items()}

    def change_id(self) -> str:
        return self.remote._answer("CaptureState", pb.CaptureStateRequest())["change_id"]

    def off(self, adapter: str) -> bool:
        return self.remote._call("CaptureOff", pb.CaptureRequest(adapter=adapter)).was_on

    def record(self, requests: list[CapturedRequest]) -> int:
        """Send a server's batch in calls of at most MAX_CAPTURE_BATCH_BYTES; returns the requests stored. A batch
        sent again after a failed call is not stored twice (the registry skips what it already holds)."""
        stored, batch, size = 0, [], 0
        for message in (to_message(r, pb.CapturedRequest) for r in requests):
            if batch and size + message.ByteSize() > MAX_CAPTURE_BATCH_BYTES:
                stored += self.remote._call("CaptureRecord", pb.CaptureRecordRequest(requests=batch)).stored
                batch, size = [], 0
            batch.append(message)
            size += message.ByteSize()
        if batch:
            stored += self.remote._call("CaptureRecord", pb.CaptureRecordRequest(requests=batch)).stored
        return stored

    def expire(self) -> int:
        return self.remote._call("CaptureExpire", pb.CaptureExpireRequest()).removed

    def clear(self, adapter: str) -> int:
        return self.remote._call("CaptureClear", pb.CaptureRequest(adapter=adapter)).deleted

    def rows(self, adapter: str, since: str | None = None, limit: int | None = None) -> list[dict]:
        """Captured requests of `adapter`, oldest first, streamed one per message (together they may be far larger
        than one message may carry)."""
        request = pb.CaptureRowsRequest(adapter=adapter, since=since, limit=limit or 0)
        try:
            return [to_python(row) for row in self.remote.stub.CaptureRows(
                request, metadata=self.remote.metadata, timeout=self.remote.timeout)]
        except grpc.RpcError as exc:
            raise self.remote._error(exc) from None

    def summary(self, adapter: str) -> dict:
        return self.remote._answer("CaptureSummary", pb.CaptureRequest(adapter=adapter))


def capture_config(d: dict) -> CaptureConfig:
    """A CaptureConfig from its message as `to_python` reads it (the patterns a tuple, as a local one's), checked by
    CaptureConfig itself: on the client for an answer, on the registry for what a client sent."""
    return CaptureConfig(d["sample"], d["retain_s"], d["max_bytes"], tuple(d["redact"]))


@dataclass(frozen=True)
class _Chunk:
    data: bytes


def _url_chunks(url: str, offset: int):
    """The bytes a pre-signed GET returns from `offset` on, as `download_verified` takes them (objects with .data)."""
    import urllib.request

    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as answer:
        if offset and answer.status != 206:
            raise OSError(f"the object store ignored the range request (HTTP {answer.status})")
        while data := answer.read(2**20):
            yield _Chunk(data)
