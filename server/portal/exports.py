"""Exports started from the portal's version page: `reg export` run on the registry's host, one at a time.

The work is `registry/export/exporter.py:export`, as the CLI calls it (the same fidelity check on the version's
held-out probes, the same record of every attempt, passed or failed). A merge loads the full-precision base,
so exports run one after another on one thread, off the request: the version page shows the running one and
updates itself until the record appears. Each goes to its own new directory under `$LORADOCK_HOME/exports/`,
and a passed one can be downloaded as a tar stream (read a chunk at a time, never whole into memory).
"""

from __future__ import annotations

import logging
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from registry import Registry
from registry.errors import InvalidInput, LoradockError, NotFound

logger = logging.getLogger(__name__)

FORMATS = ("merged", "peft")
DTYPES = ("auto", "bf16", "fp16", "fp32")
CHUNK_BYTES = 1 << 20  # a download is read and sent this much at a time
MAX_PENDING = 4  # exports waiting behind the running one; more are refused


class ExportsUnavailable(LoradockError):
    """Exports from the portal need the registry's files on this host (a remote registry: use `reg export`)."""

    exit_code, grpc_status, http_status = 1, "UNIMPLEMENTED", 501


class PortalExports:
    """Exports of the local registry at `home`, started by portal users; `find_probes` is the CLI's held-out probes."""

    def __init__(self, home: Path, find_probes: Callable | None):
        self.home = Path(home)
        self.root = (self.home / "exports").resolve()  # as the exporter records its out_path
        self.find_probes = find_probes
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="portal-export")
        self._lock = threading.Lock()
        self._pending: dict[str, dict] = {}  # version ref -> {format, dtype, out, state}
        self._failed: dict[str, str] = {}  # version ref -> why its last export could not even be attempted

    def start(self, ref: str, fmt: str, dtype: str, actor: str | None) -> Path:
        """Queue an export of `ref` (a resolved NAME:N) as `fmt` in `dtype`; returns the directory it will write."""
        if fmt not in FORMATS:
            raise InvalidInput(f"format {fmt!r}: expected {' or '.join(FORMATS)}")
        if dtype not in DTYPES:
            raise InvalidInput(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        out = self.root / f"{ref.replace(':', '-')}-{fmt}-{time.strftime('%Y%m%dT%H%M%S')}"
        with self._lock:
            if ref in self._pending:
                raise InvalidInput(f"an export of {ref} is already {self._pending[ref]['state']}; wait for it to end")
            if len(self._pending) > MAX_PENDING:
                raise InvalidInput(f"{len(self._pending)} exports are waiting; try again when they have ended")
            self._pending[ref] = {"format": fmt, "dtype": dtype, "out": str(out), "state": "queued"}
            self._failed.pop(ref, None)
        self._pool.submit(self._run, ref, fmt, dtype, out, actor)
        return out

    def status(self, ref: str) -> dict | None:
        """The export of `ref` queued or running now ({format, dtype, out, state}), or {error} for the last one that
        could not be attempted; None when neither (its records are the registry's)."""
        with self._lock:
            if ref in self._pending:
                return dict(self._pending[ref])
            return {"error": self._failed[ref]} if ref in self._failed else None

    def _run(self, ref: str, fmt: str, dtype: str, out: Path, actor: str | None) -> None:
        from registry.export.exporter import ExportRequest, export

        with self._lock:
            self._pending[ref]["state"] = "running"
        registry = Registry(self.home)  # this thread's own connection
        try:
            probes = (lambda versions: self.find_probes(registry, versions)) if self.find_probes else None
            export(registry, ExportRequest(sources=[(ref, 1.0)], out=out, fmt=fmt, dtype=dtype, actor=actor), find_probes=probes)
        except LoradockError as exc:  # a failed fidelity check is recorded by the exporter itself
            logger.warning("export of %s failed: %s", ref, exc)
            if not any(x["out_path"] == str(out) for x in registry.describe(ref)["exports"]):
                with self._lock:
                    self._failed[ref] = " ".join(str(exc).split())
        except Exception as exc:  # noqa: BLE001 - reported on the page, and logged in full
            logger.exception("export of %s failed", ref)
            with self._lock:
                self._failed[ref] = f"the export stopped: {type(exc).__name__}: {exc}"
        finally:
            registry.close()
            with self._lock:
                self._pending.pop(ref, None)

    def download(self, described: dict, export_id: int) -> tuple[str, Iterator[bytes]]:
        """(file name, chunks) of a tar of passed export `export_id` of the version `described` (`describe(ref)`),
        if its directory is one this portal wrote."""
        record = next((x for x in described["exports"] if x["id"] == export_id), None)
        if record is None:
            raise NotFound(f"version {described['version']['ref']} has no export {export_id}")
        out = Path(record["out_path"])
        if record["status"] != "passed" or out.parent != self.root or not out.is_dir():
            raise NotFound(f"export {export_id} has no files here to download (it failed, was moved, or was not "
                           f"made by this portal); `reg show` says where it went")
        for f in record["files"]:
            path = out / f["path"]
            if not path.is_file() or path.stat().st_size != f["size"]:
                raise NotFound(f"export {export_id}: {path} is gone or changed since it was exported; export it again")
        return f"{out.name}.tar", _tar_stream(out, [f["path"] for f in record["files"]])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _tar_stream(root: Path, names: list[str]) -> Iterator[bytes]:
    """An uncompressed tar of `root`'s files `names` (each under `root.name/`), a chunk at a time."""
    for name in names:
        path = root / name
        info = tarfile.TarInfo(f"{root.name}/{name}")
        info.size, info.mtime, info.mode = path.stat().st_size, int(path.stat().st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
