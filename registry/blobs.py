"""Content-addressed, immutable file storage: `blobs/sha256/<2 hex>/<digest>`.

A blob is written to a temp file in the store, fsynced, then renamed into place, so a
reader never sees a partial blob and a retried write of the same bytes is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import IntegrityError

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.objects = root / "sha256"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def ingest(self, src: Path) -> tuple[str, int]:
        """Copy `src` into the store, hashing as it goes; return (sha256, size)."""
        h = hashlib.sha256()
        size = 0
        tmp_path = self.tmp / f"ingest-{os.getpid()}-{time.monotonic_ns()}"
        try:
            with open(src, "rb") as fin, open(tmp_path, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            digest = h.hexdigest()
            final = self.path(digest)
            # Replace even when the blob exists: that repairs a corrupt copy, and the fresh mtime
            # keeps gc's grace period protecting the blob until this push commits.
            if not final.parent.exists():
                final.parent.mkdir(exist_ok=True)
                _fsync_dir(self.objects)
            os.chmod(tmp_path, 0o444)
            os.replace(tmp_path, final)
            _fsync_dir(final.parent)
            return digest, size
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise

    def copy_out(self, digest: str, dest: Path, label: str) -> int:
        """Write blob `digest` to `dest`, verifying the hash of the bytes written.

        `label` names the file in the error. On a mismatch `dest` is removed.
        """
        src = self.path(digest)
        if not src.exists():
            raise IntegrityError(f"{label}: blob sha256:{digest} is missing from the store (run `reg verify`)")
        h = hashlib.sha256()
        size = 0
        try:
            with open(src, "rb") as fin, open(dest, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    h.update(chunk)
                    fout.write(chunk)
                    size += len(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if h.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise IntegrityError(f"{label}: stored bytes do not match sha256:{digest} (got {h.hexdigest()}); the blob is corrupt")
        return size

    def iter_digests(self) -> Iterator[tuple[str, Path]]:
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    yield blob.name, blob

    def iter_temp_files(self) -> Iterator[Path]:
        yield from sorted(self.tmp.iterdir())
