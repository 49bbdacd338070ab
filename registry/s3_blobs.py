"""Blobs in S3-compatible object storage: `--blob-store s3://bucket/prefix` (or `$LORADOCK_BLOB_STORE`).

Objects are keyed by sha256 exactly as on disk (`PREFIX/sha256/<2 hex>/<digest>`), so a bucket is a blob
store that any registry pointed at it reads the same way. The endpoint, region and credentials come from
wherever boto3 reads them (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `~/.aws/config`, an instance
role...); loradock adds no settings of its own for them.

What is being written stays on local disk first (`tmp/` beside the database, as for the local store): an
ingested file is copied and hashed there, and a remote client's upload is received and verified there, and
only then does `place` send it. S3 checks each upload against our digest: a single PUT carries the object's
SHA-256 (`ChecksumSHA256`), a multipart upload carries each part's, so bytes damaged on the way are refused
by S3 itself. An object that already exists is not sent again. Every read is hashed by the reader
(`copy_out`, `read_bytes`, `local_files`, `reg verify`), so an object changed in the bucket is caught on pull.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .blobs import CHUNK, BlobStore, StoredBlob, _removed_on_failure, check_copied, check_digest
from .errors import InvalidInput, LoradockError, NotFound, StorageRefused, Unavailable, shown

logger = logging.getLogger(__name__)

SCHEME = "s3://"
# One PUT up to this size (`$LORADOCK_S3_MULTIPART_MB` changes it); larger blobs go as a multipart upload of parts a
# quarter of it, at least S3's 5 MiB minimum (S3 allows 10 000 parts: 16 MiB parts cover 156 GiB).
MULTIPART_MB_ENV = "LORADOCK_S3_MULTIPART_MB"
DEFAULT_MULTIPART_MB = 64
MIN_PART_BYTES = 5 * 2**20
UPLOAD_THREADS = 4  # a multipart upload's parts sent at once
# Errors S3 answers when it will not accept who we are (as opposed to what we asked).
CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                     "InvalidClientTokenId", "AuthorizationHeaderMalformed", "403"}
NOT_FOUND_ERRORS = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; the prefix has no leading or trailing slash."""
    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise InvalidInput(f"blob store {shown(url)}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket or len(bucket) > 63 or not all(c.isalnum() or c in "-." for c in bucket) or bucket != bucket.lower():
        raise InvalidInput(f"blob store {shown(url)}: {shown(bucket)} is not an S3 bucket name "
                           f"(3-63 lower-case letters, digits, '-' and '.')")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise InvalidInput(f"blob store {shown(url)}: the prefix {shown(prefix)} has an empty, '.' or '..' part")
    return bucket, prefix


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class S3BlobStore(BlobStore):
    def __init__(self, url: str, root: Path):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = parse_s3_url(url)
        self.location = f"{SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        self.root = root
        self.tmp = root / "tmp"
        self.objects = root / "sha256"  # never written: the objects live in the bucket
        self._make_dirs()
        custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60,
            # a custom endpoint (MinIO, Ceph, moto) is addressed by path: its buckets have no DNS names of their own
            s3={"addressing_style": "path" if custom_endpoint else "auto"},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self.client = boto3.session.Session().client("s3", config=config)
        self.endpoint = self.client.meta.endpoint_url
        multipart_mb = os.environ.get(MULTIPART_MB_ENV, str(DEFAULT_MULTIPART_MB))
        try:
            self.multipart_bytes = int(float(multipart_mb) * 2**20)
        except ValueError:
            raise InvalidInput(f"{MULTIPART_MB_ENV}={shown(multipart_mb)}: expected a number of MiB") from None
        self.part_bytes = max(MIN_PART_BYTES, self.multipart_bytes // 4)

    def _make_dirs(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)

    def key(self, digest: str) -> str:
        digest = check_digest(digest)
        return f"{self.prefix}/sha256/{digest[:2]}/{digest}" if self.prefix else f"sha256/{digest[:2]}/{digest}"

    @property
    def _listing_prefix(self) -> str:
        return f"{self.prefix}/sha256/" if self.prefix else "sha256/"

    def _error(self, exc: Exception, doing: str) -> LoradockError:
        """The one-line error for a failed S3 call (`doing`: what it was for)."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StorageRefused(f"{doing}: no AWS credentials for {self.location} (set AWS_ACCESS_KEY_ID and "
                                  f"AWS_SECRET_ACCESS_KEY, a profile, or an instance role)")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), error.get("Message") or ""
            if code in CREDENTIAL_ERRORS:
                return StorageRefused(f"{doing}: {self.location} refused the registry's credentials "
                                      f"({code}{': ' + message if message else ''}); check AWS_ACCESS_KEY_ID, "
                                      f"AWS_SECRET_ACCESS_KEY and the bucket policy")
            if code == "NoSuchBucket":
                return StorageRefused(f"{doing}: bucket {self.bucket!r} does not exist at {self.endpoint}; create it, "
                                      f"or fix --blob-store")
            return StorageRefused(f"{doing}: {self.location} answered {code or 'an error'}"
                                  f"{': ' + message if message else ''}")
        reason = "cannot reach" if isinstance(exc, EndpointConnectionError) else "no answer from"
        return Unavailable(f"{doing}: {reason} the object store at {self.endpoint} ({exc})")

    def _call(self, doing: str, method: str, **params):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, doing) from None

    def _head(self, digest: str) -> dict | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in NOT_FOUND_ERRORS:
                return None
            raise self._error(exc, f"looking up blob sha256:{digest}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"looking up blob sha256:{digest}") from None

    def check_access(self) -> None:
        """Fail now, with the one-line reason, when the bucket cannot be listed (wrong credentials, no bucket)."""
        self._call("opening the blob store", "list_objects_v2", Prefix=self._listing_prefix, MaxKeys=1)

    # --- the interface ---------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int | None:
        head = self._head(digest)
        return None if head is None else int(head["ContentLength"])

    def place(self, tmp_path: Path, digest: str) -> None:
        """Send a fully written temp file whose sha256 is `digest` (unless the object exists), then remove it."""
        size = tmp_path.stat().st_size
        if self.size(digest) != size:
            if size <= self.multipart_bytes:
                with open(tmp_path, "rb") as fh:
                    self._call(f"storing blob sha256:{digest}", "put_object", Key=self.key(digest), Body=fh,
                               ContentLength=size, ChecksumSHA256=_b64(digest))
            else:
                self._put_multipart(tmp_path, digest, size)
        tmp_path.unlink(missing_ok=True)

    def _put_multipart(self, tmp_path: Path, digest: str, size: int) -> None:
        key, doing = self.key(digest), f"storing blob sha256:{digest} ({size:,} bytes, multipart)"
        upload = self._call(doing, "create_multipart_upload", Key=key, ChecksumAlgorithm="SHA256")
        upload_id = upload["UploadId"]

        def send(number: int) -> dict:  # one part, read and checksummed on the sending thread
            with open(tmp_path, "rb") as fh:
                fh.seek((number - 1) * self.part_bytes)
                data = fh.read(self.part_bytes)
            part_sum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            answer = self._call(doing, "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                                ChecksumSHA256=part_sum)
            return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": part_sum}

        try:
            # UPLOAD_THREADS parts in flight (as boto3's own transfers do), so at most that many parts in memory;
            # the first failure cancels the parts not yet started
            pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="loradock-s3-part")
            try:
                parts = list(pool.map(send, range(1, -(-size // self.part_bytes) + 1)))
            finally:
                pool.shutdown(cancel_futures=True)
            self._call(doing, "complete_multipart_upload", Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - gc aborts what is left (abort_stale_uploads)
                logger.warning("could not abort the multipart upload of sha256:%s; `reg gc` will", digest)
            raise

    def _body(self, digest: str, offset: int = 0):
        from botocore.exceptions import BotoCoreError, ClientError

        params = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(digest), **params)["Body"]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in NOT_FOUND_ERRORS:
                raise NotFound(f"no stored blob sha256:{digest}") from None
            if code == "InvalidRange":  # an offset at or past the end: nothing left to send
                return None
            raise self._error(exc, f"reading blob sha256:{digest}") from None
        except BotoCoreError as exc:
            raise self._error(exc, f"reading blob sha256:{digest}") from None

    def read_chunks(self, digest: str, offset: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
        body = self._body(digest, offset)  # raises NotFound now, before the first chunk
        return self._iter_body(body, digest, chunk)

    def _iter_body(self, body, digest: str, chunk: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        if body is None:
            return
        try:
            with body:
                yield from body.iter_chunks(chunk)
        except BotoCoreError as exc:
            raise self._error(exc, f"reading blob sha256:{digest}") from None

    def copy_out(self, digest: str, dest: Path, label: str) -> int:
        try:
            chunks = self.read_chunks(digest)
        except NotFound:
            raise self.missing(digest, label) from None
        h, size = hashlib.sha256(), 0
        with _removed_on_failure(dest, f"writing {label}", dest.parent):
            with open(dest, "wb") as fh:
                for data in chunks:
                    h.update(data)
                    fh.write(data)
                    size += len(data)
        check_copied(h.hexdigest(), digest, dest, label)
        return size

    @contextmanager
    def local_files(self, digests: dict[str, str], label: str) -> Iterator[dict[str, Path]]:
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"
        paths = {name: self.tmp / f"read-{stamp}-{i}" for i, name in enumerate(digests)}
        try:
            for name, digest in digests.items():
                self.copy_out(digest, paths[name], f"{label} {name}")
            yield paths
        finally:
            for path in paths.values():
                path.unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[StoredBlob]:
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._listing_prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    digest = obj["Key"].rsplit("/", 1)[-1]
                    try:
                        check_digest(digest)
                    except InvalidInput:
                        continue  # not one of ours: a blob store prefix holds only sha256-named objects
                    yield StoredBlob(digest, int(obj["Size"]), obj["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, f"listing {self.location}") from None

    def remove(self, digest: str) -> None:
        self._call(f"removing blob sha256:{digest}", "delete_object", Key=self.key(digest))

    def abort_stale_uploads(self, cutoff: float, dry_run: bool = False) -> int:
        """Abort multipart uploads begun before `cutoff` (Unix time) that never completed (a push killed midway)."""
        answer = self._call(f"listing the unfinished uploads in {self.location}", "list_multipart_uploads",
                            Prefix=self._listing_prefix)
        stale = [u for u in answer.get("Uploads", []) if u["Initiated"].timestamp() <= cutoff]
        if not dry_run:
            for upload in stale:
                self._call("aborting an unfinished upload", "abort_multipart_upload", Key=upload["Key"],
                           UploadId=upload["UploadId"])
        return len(stale)

    def presigned_url(self, digest: str, expires_s: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(digest)}, ExpiresIn=int(expires_s))

