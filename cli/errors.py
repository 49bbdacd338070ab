"""The one place where loradock errors become CLI messages and exit codes."""

from __future__ import annotations

import sys

from registry.errors import (
    BaseMismatch, BlobsMissing, Conflict, DatabaseCorrupt, IntegrityError, InvalidAdapter, InvalidInput, InvalidName,
    InvalidRef, LoradockError, NotFound, NotWritable, PermissionDenied, StorageFull, TooLarge, Unauthenticated, Unavailable,
)

# Documented in README.md ("Exit codes"); scripts may rely on them.
EXIT_CODES: list[tuple[type[LoradockError], int]] = [
    (InvalidName, 2), (InvalidRef, 2), (InvalidAdapter, 2), (InvalidInput, 2),
    (NotFound, 3),
    (Conflict, 4),
    (BaseMismatch, 5),
    (DatabaseCorrupt, 14),
    (IntegrityError, 6), (BlobsMissing, 6),
    (TooLarge, 7),
    (Unavailable, 9),
    (Unauthenticated, 10),
    (PermissionDenied, 11),
    (StorageFull, 12),
    (NotWritable, 13),
    (LoradockError, 1),
]


MAX_MESSAGE_CHARS = 2000


def exit_code_for(error: LoradockError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def report(error: LoradockError) -> int:
    """Print `error: <message>` as one line on stderr; return the exit code for it."""
    message = " ".join(str(error).split())
    if len(message) > MAX_MESSAGE_CHARS:  # values are cut where they are echoed (registry.errors.shown); this bounds the line
        message = message[:MAX_MESSAGE_CHARS] + "… (cut)"
    sys.stderr.write(f"error: {message}\n")
    return exit_code_for(error)
