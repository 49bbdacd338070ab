"""Content-addressed, immutable file storage: `blobs/sha256/<2 hex>/<digest>`.

A blob is written to a temp file in the store, fsynced, then renamed into place, so a
reader never sees a partial blob and a retried write of the same bytes is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError, InvalidAdapter, InvalidInput, NotFound
from .failures import from_os_error
from .paths import check_replaceable

# Bytes per read/hash/write step: small enough that a buffer is still in the CPU cache when it is
# hashed and written, large enough that the per-chunk Python overhead is noise.
CHUNK = 1024 * 1024
# Buffers in flight between the reading thread and the hashing thread.
_BUFFERS = 8
# With fewer bytes than this the copy runs on one thread (starting one costs more than it saves).
_THREAD_MIN_BYTES = 4 * CHUNK
# Start writeback of a temp file after every this many bytes, so the final fsync has little left.
_WRITEBACK_EVERY = 8 * CHUNK


def sha256_file(path: Path) -> str:
    return hash_into(path, hashlib.sha256()).hexdigest()


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, refused (InvalidAdapter) unless it is a regular file.

    O_NONBLOCK keeps a FIFO from blocking the open; the type is checked on the open descriptor, so a file
    swapped for a device or a pipe after it was inspected is still never read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InvalidAdapter(f"{path} is {special_file_kind(mode)}, not a regular file; only regular files are stored")
    os.set_blocking(fd, True)
    return fd


def special_file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "a special file"


def hash_into(path: Path, h):
    """Feed every byte of `path` to the hash object `h` (a resumed transfer hashes what it already has); returns `h`."""
    fd = open_regular(path)
    try:
        _pump(fd, None, h, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return h


@contextmanager
def _removed_on_failure(path: Path, doing: str, where: Path):
    """Remove the half-written `path` if the block fails; an OSError becomes our named error for `doing` in `where`."""
    try:
        yield
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise (from_os_error(exc, doing, where) or exc) from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (a directory's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync_file_range = None  # resolved on first use: libc's sync_file_range, or False where there is none


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing `nbytes` at `offset` of `fd` to disk, without waiting.

    Dirty pages otherwise sit in the page cache until the final fsync, which then writes them all
    while nothing else runs; started early, the writeback overlaps the hashing. Linux only; a no-op
    elsewhere or on any error (the fsync that follows is what makes the data durable).
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _sync_file_range = fn
        except (ImportError, OSError, AttributeError):
            pass
    if _sync_file_range:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _pump(fd_in: int, fd_out: int | None, h, size_hint: int, writeback: bool = False) -> int:
    """Copy `fd_in` to `fd_out` (if given) until EOF, feeding every byte written to `h`; return the byte count.

    Each chunk is read once into a buffer that is both hashed and written, so the hash is
    exactly that of the bytes written, whatever happens to the source meanwhile. For large
    inputs the hashing runs on a second thread (hashlib releases the GIL), overlapping the
    reads and writes; a buffer is refilled only after it was both written and hashed.
    """
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd_in, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
    total = 0
    synced = 0
    if size_hint < _THREAD_MIN_BYTES:
        buf = bytearray(min(CHUNK, max(size_hint + 1, 1 << 16)))  # small files: no 1 MiB buffer to zero
        view = memoryview(buf)
        while n := os.readv(fd_in, [buf]):
            h.update(view[:n])
            if fd_out is not None:
                _write_all(fd_out, view[:n])
            total += n
        return total

    free: queue.SimpleQueue = queue.SimpleQueue()
    work: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(_BUFFERS):
        free.put(bytearray(CHUNK))
    failure: list[BaseException] = []

    def hasher() -> None:
        # Always hands each buffer back, even after a failure, so the reader can never block forever.
        while (item := work.get()) is not None:
            buf, n = item
            if not failure:
                try:
                    h.update(memoryview(buf)[:n])
                except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                    failure.append(exc)
            free.put(buf)

    thread = threading.Thread(target=hasher, name="sha256", daemon=True)
    thread.start()
    try:
        while not failure:
            buf = free.get()
            n = os.readv(fd_in, [buf])
            if not n:
                break
            work.put((buf, n))
            if fd_out is not None:
                _write_all(fd_out, memoryview(buf)[:n])
            total += n
            if writeback and total - synced >= _WRITEBACK_EVERY:
                _start_writeback(fd_out, synced, total - synced)
                synced = total
    finally:
        work.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return total


def replace_dir(staging: Path, out: Path, home: Path) -> None:
    """Rename a finished `staging` directory to `out`. An existing `out` is moved aside first and removed after,
    so a crash at any point leaves either the old directory or the new one, never neither.

    `out` must not be, lie inside or contain the registry `home` (`registry.paths.check_replaceable`)."""
    if os.path.lexists(out):
        check_replaceable(out, home)
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(aside)
        staging.rename(out)
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    else:
        staging.rename(out)


def check_digest(digest: str) -> str:
    """A blob digest as the store names it: 64 lower-case hex digits (it becomes a file name)."""
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidInput(f"invalid blob digest {digest!r}: expected 64 lower-case hex digits (a sha256)")
    return digest


@dataclass(frozen=True)
class StoredBlob:
    """One blob as a store lists it: what gc and verify need, wherever the bytes live."""

    digest: str
    size: int
    mtime: float  # when it was last written (Unix time): gc's grace period counts from here


class BlobStore:
    """The blob store interface, and its local implementation: files under `root/sha256/`.

    Every other store (`registry/s3_blobs.py`) keeps the same `root/tmp/` on local disk for what is being
    written (an ingest's copy, a remote client's upload being received) and overrides the methods that touch
    stored objects: has, size, place, copy_out, read_chunks, local_files, iter_blobs, remove. Nothing outside the
    stores reaches for a stored object's file, so the registry, gc, verify and the servers work on any of them.
    """

    location: str  # what messages name: the objects directory, or s3://bucket/prefix

    def __init__(self, root: Path):
        self.root = root
        self.objects = root / "sha256"
        self.tmp = root / "tmp"
        self.location = str(self.objects)
        self._make_dirs()

    def _make_dirs(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """The file of a stored blob (local store only: other stores have no such file)."""
        return self.objects / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes, or None when it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def ingest(self, src: Path) -> tuple[str, int]:
        """Copy `src` into the store, hashing as it goes; return (sha256, size)."""
        tmp_path, digest, size = self._copy_to_temp(src)
        self.place(tmp_path, digest)
        return digest, size

    def _copy_to_temp(self, src: Path) -> tuple[Path, str, int]:
        """A fsynced copy of `src` in `tmp/` that nobody else writes, and the sha256 and size of exactly its bytes."""
        h = hashlib.sha256()
        tmp_path = self.tmp / f"ingest-{os.getpid()}-{time.monotonic_ns()}"
        with _removed_on_failure(tmp_path, f"storing {src.name} in the blob store", self.root):
            fd_in = open_regular(src)
            try:
                fd_out = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    size = _pump(fd_in, fd_out, h, os.fstat(fd_in).st_size, writeback=True)
                    os.fsync(fd_out)
                finally:
                    os.close(fd_out)
            finally:
                os.close(fd_in)
        return tmp_path, h.hexdigest(), size

    def place(self, tmp_path: Path, digest: str) -> None:
        """Move a fully written, fsynced temp file whose sha256 is `digest` into the store."""
        final = self.path(digest)
        # Replace even when the blob exists: that repairs a corrupt copy, and the fresh mtime
        # keeps gc's grace period protecting the blob until this push commits.
        if not final.parent.exists():
            final.parent.mkdir(exist_ok=True)
            fsync_path(self.objects)
        os.chmod(tmp_path, 0o444)
        os.replace(tmp_path, final)
        fsync_path(final.parent)

    # --- uploads from a remote client (server/registry_service.py) ---------------------------

    def upload_path(self, digest: str) -> Path:
        """Where the bytes of an upload in progress (or interrupted, to be resumed) accumulate.

        It lives in `tmp/`, so `reg gc` removes an upload abandoned for longer than its grace period.
        """
        return self.tmp / f"upload-{check_digest(digest)}"

    def received(self, digest: str) -> int:
        try:
            return self.upload_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    # --- reading ---------------------------------------------------------------------------

    def missing(self, digest: str, label: str) -> IntegrityError:
        return IntegrityError(f"{label}: blob sha256:{digest} is missing from the blob store {self.location} "
                              f"(run `reg verify`)")

    def copy_out(self, digest: str, dest: Path, label: str) -> int:
        """Write blob `digest` to `dest`, verifying the hash of the bytes written.

        `label` names the file in the error. On a mismatch `dest` is removed.
        """
        src = self.path(digest)
        if not src.exists():
            raise self.missing(digest, label)
        h = hashlib.sha256()
        with _removed_on_failure(dest, f"writing {label}", dest.parent):
            fd_in = os.open(src, os.O_RDONLY)
            try:
                fd_out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                try:
                    size = _pump(fd_in, fd_out, h, os.fstat(fd_in).st_size)
                finally:
                    os.close(fd_out)
            finally:
                os.close(fd_in)
        check_copied(h.hexdigest(), digest, dest, label)
        return size

    def read_chunks(self, digest: str, offset: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
        """The stored bytes of `digest` from `offset`, `chunk` bytes at a time (unverified: the reader checks).

        Raises NotFound before the first chunk when the blob is not stored.
        """
        try:
            fh = open(self.path(check_digest(digest)), "rb")
        except FileNotFoundError:
            raise NotFound(f"no stored blob sha256:{digest}") from None
        return _chunks_of(fh, offset, chunk)

    def read_bytes(self, digest: str, label: str) -> bytes:
        """A small blob's verified bytes (an uploaded file, a curated dataset); `label` names it in errors."""
        try:
            data = b"".join(self.read_chunks(digest))
        except NotFound:
            raise self.missing(digest, label) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(f"{label}: stored bytes do not match sha256:{digest} (got {actual}); the blob is corrupt")
        return data

    @contextmanager
    def local_files(self, digests: dict[str, str], label: str) -> Iterator[dict[str, Path]]:
        """Local files holding the blobs `digests` maps names to, for readers that need a path (header parsers, mmap).

        Here they are the stored files themselves; a remote store downloads verified copies for the block.
        """
        missing = [name for name, digest in digests.items() if not self.has(digest)]
        if missing:
            raise self.missing(digests[missing[0]], f"{label} {missing[0]}")
        yield {name: self.path(digest) for name, digest in digests.items()}

    # --- listing and removing (gc, verify) -------------------------------------------------

    def iter_blobs(self) -> Iterator[StoredBlob]:
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    try:
                        st = blob.stat()
                    except FileNotFoundError:  # removed meanwhile
                        continue
                    yield StoredBlob(blob.name, st.st_size, st.st_mtime)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def iter_temp_files(self) -> Iterator[Path]:
        yield from sorted(self.tmp.iterdir())

    def abort_stale_uploads(self, cutoff: float, dry_run: bool = False) -> int:
        """Give up writes begun before `cutoff` that never finished and live outside `tmp/` (none here); their count."""
        return 0

    def presigned_url(self, digest: str, expires_s: int) -> str | None:
        """A short-lived URL a client can GET the blob from directly, or None when this store has none (local files)."""
        return None


def check_copied(actual: str, digest: str, dest: Path, label: str) -> None:
    """After a copy of blob `digest` to `dest`: remove `dest` and raise unless its bytes hashed to `digest`."""
    if actual != digest:
        dest.unlink(missing_ok=True)
        raise IntegrityError(f"{label}: stored bytes do not match sha256:{digest} (got {actual}); the blob is corrupt")


def _chunks_of(fh, offset: int, chunk: int) -> Iterator[bytes]:
    with fh:
        fh.seek(max(0, offset))
        while data := fh.read(chunk):
            yield data
