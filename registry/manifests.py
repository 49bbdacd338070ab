"""A version's file list: its digest, the one rule every list obeys, and writing a version out as a directory.

A file list arrives from three places: a client pushing to a remote registry, the local database, and a
remote registry's answer to a pull. All three pass `check_file_list` (plain top-level names, each once,
well-formed digests and sizes) before any byte is written; a pull also checks that the list hashes to the
version's manifest digest, so a tampered list is an `IntegrityError` naming what is wrong, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .blobs import replace_dir
from .errors import Conflict, IntegrityError, LoradockError, TooLarge, shown
from .failures import from_os_error
from .paths import check_file_name, check_replaceable, confined
from .records import FileRecord, Version

MAX_FILES = 256
_HEX = set("0123456789abcdef")


def manifest_digest(files: list[FileRecord]) -> str:
    """The version's identity: sha256 over its sorted (path, size, sha256) list."""
    canonical = json.dumps([[f.path, f.size, f.sha256] for f in sorted(files, key=lambda f: f.path)], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX


def check_file_list(files: list[FileRecord], error: type[LoradockError], where: str) -> None:
    """Raise `error` (TooLarge for too many files) unless `files` is a list a version can hold."""
    if not files:
        raise error(f"{where}: a version needs at least its adapter_config.json and adapter_model.safetensors; got no files")
    if len(files) > MAX_FILES:
        raise TooLarge(f"{where}: {len(files)} files in one version; at most {MAX_FILES} are accepted")
    seen = set()
    for f in files:
        check_file_name(f.path, error, where)
        if f.path in seen:
            raise error(f"{where}: file {shown(f.path)} is listed twice")
        seen.add(f.path)
        if not _is_digest(f.sha256):
            raise error(f"{where}: file {shown(f.path)} has an invalid sha256 {shown(f.sha256)} "
                        f"(expected 64 lower-case hex digits)")
        if isinstance(f.size, bool) or not isinstance(f.size, int) or f.size < 0:
            raise error(f"{where}: file {shown(f.path)} has an invalid size {shown(f.size)}")


def check_manifest(version: Version) -> None:
    """A version about to be written out: a valid file list that hashes to its recorded manifest digest."""
    where = f"the manifest of {version.ref}"
    check_file_list(version.files, IntegrityError, where)
    actual = manifest_digest(version.files)
    if actual != version.manifest_digest:
        raise IntegrityError(f"{where}: its file list hashes to {actual}, not the recorded {shown(version.manifest_digest)}; "
                             f"the record was altered, so nothing was written (run `reg verify`)")


def write_version_dir(version: Version, out: Path | str | None, force: bool, write_file: Callable[[FileRecord, Path], None],
                      home: Path, resumable: bool = False) -> Path:
    """Materialise `version` at `out` with `write_file(file_record, dest)`, which must verify what it writes.

    The manifest is checked first (`check_manifest`), and an existing `out` must not be, lie inside or contain
    the registry `home`. Files go to a hidden partial directory renamed into place at the end; `--force`
    swaps an existing directory only once the new one is complete. Nothing partial is left on failure,
    unless `resumable`: then the partial directory is named after the version's manifest and kept, and the
    next pull of the same version to the same place hands `write_file` the files (or the first bytes of a
    file) it has.
    """
    check_manifest(version)
    out = Path(out) if out else Path.cwd() / f"{version.adapter}-v{version.number}"
    if os.path.lexists(out):
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
            raise Conflict(f"{out} exists and is not empty; choose another --out or pass --force")
        check_replaceable(out, home)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if resumable:
            partial = out.with_name(f".{out.name}.partial-{version.manifest_digest.removeprefix('sha256:')[:16]}")
        else:
            partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(exist_ok=True)
    except OSError as exc:
        raise (from_os_error(exc, f"creating the output directory for {version.ref}", out) or exc) from None
    try:
        for f in version.files:
            write_file(f, confined(partial, f.path))
        replace_dir(partial, out, home)  # --force swaps, so a crash never loses both the old and the new directory
    except BaseException as exc:
        if not resumable:
            shutil.rmtree(partial, ignore_errors=True)
        named = from_os_error(exc, f"writing {version.ref}", out) if isinstance(exc, OSError) else None
        if named is not None:
            raise named from None
        raise
    return out
