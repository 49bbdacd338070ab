"""Failures of the machine under the registry, as named errors: a full disk, a read-only home, a damaged database.

The registry's SQLite connection (`registry/db.py`) and its file writers (`registry/blobs.py`, pulls) hand
the exceptions they meet to these two functions, so every such failure reaches the user as one line that
says what happened, where, and what to do, with its own exit code and gRPC status.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from .errors import DatabaseCorrupt, LoradockError, NotWritable, StorageFull

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}

# SQLite's primary result codes (https://sqlite.org/rescode.html), the low byte of an extended code.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT = 3, 8, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26


def from_os_error(exc: OSError, action: str, path: Path | str) -> LoradockError | None:
    """The named error for an OSError met while `action` (e.g. "storing a blob") at `path`; None if it is none of ours."""
    if exc.errno in _FULL:
        what = "the file size limit was reached" if exc.errno == errno.EFBIG else "no space left on the device"
        return StorageFull(f"{action} at {path}: {what} ({exc.strerror}); nothing was recorded: free space and retry")
    if exc.errno in _READ_ONLY:
        return NotWritable(f"{action} at {path}: {exc.strerror}; make it writable or choose another directory "
                           f"(--home for the registry, --out for a pull)")
    return None


def from_sqlite_error(exc: sqlite3.Error, db_path: Path | str) -> LoradockError | None:
    """The named error for a SQLite failure on the registry database; None for the ones that are not about storage."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary is None and isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        primary = _SQLITE_CORRUPT
    path = Path(db_path)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return DatabaseCorrupt(f"the registry database {path} is damaged ({exc}); restore registry.db from a backup "
                               f"(the blobs beside it are content-addressed and unaffected)")
    if primary == _SQLITE_FULL:
        return StorageFull(f"the registry database {path} could not grow ({exc}); nothing was recorded: "
                           f"free space on its disk and retry")
    if primary in (_SQLITE_READONLY, _SQLITE_PERM):
        return NotWritable(f"the registry database {path} is read-only ({exc}); SQLite needs write access to the "
                           f"home directory {path.parent} even to read: fix its permissions or use another --home")
    if primary == _SQLITE_CANTOPEN:
        if path.is_dir():
            return DatabaseCorrupt(f"the registry database {path} is a directory, not a SQLite file; "
                                   f"move it aside and restore registry.db from a backup")
        if path.parent.is_dir() and not os.access(path.parent, os.W_OK):
            return NotWritable(f"the registry home {path.parent} is read-only, and SQLite needs write access to it even "
                               f"to read registry.db (its -wal and -shm files): make it writable or use another --home")
        return NotWritable(f"cannot open the registry database {path} ({exc}); the home directory {path.parent} must "
                           f"exist and be writable: fix its permissions or use another --home")
    return None
