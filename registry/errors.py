"""The registry's errors. Each says what was wrong, with the value, and what to do.

The CLI maps them to exit codes in one place (`cli/errors.py`); the gRPC servicer maps
them to status codes in one place. Nothing else catches them to reword them.
"""


class LoradockError(Exception):
    """Base class of every error a loradock user is meant to read."""


SHOWN_CHARS = 200


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters with an ellipsis.

    Every message that echoes a value someone else supplied goes through this, so a 100 kB name or
    config value never comes back whole (in a terminal, a log line or a gRPC status).
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


class InvalidInput(LoradockError):
    """Malformed input that is not a name or a ref: a config key, a dataset line, a parameter value."""


class InvalidName(LoradockError):
    """An adapter, alias or base name that does not match the naming rule."""


class InvalidRef(LoradockError):
    """A reference that is not `NAME`, `NAME:N` or `NAME@ALIAS`."""


class NotFound(LoradockError):
    """Something that was asked for by name does not exist."""


class AdapterNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class AliasNotFound(NotFound):
    pass


class BaseNotFound(NotFound):
    pass


class RolloutNotFound(NotFound):
    pass


class InvalidAdapter(LoradockError):
    """A directory or file that is not an adapter we can store (wrong layout, pickles, corrupt weights)."""


class BaseMismatch(LoradockError):
    """An adapter that does not fit the base model it is said to belong to."""


class IntegrityError(LoradockError):
    """Stored bytes whose sha256 no longer matches what was recorded."""


class Conflict(LoradockError):
    """An operation refused because of the registry's current state (an alias in use, an existing output)."""


class BlobsMissing(LoradockError):
    """A remote push committed before all of its blobs were uploaded (or one vanished); upload them, then commit again."""


class TooLarge(LoradockError):
    """A blob, message or request beyond a configured limit; the message names the value and the limit."""


class DatabaseCorrupt(IntegrityError):
    """registry.db is unreadable, damaged, empty or missing while the blob store holds blobs: restore it from a backup."""


class StorageFull(LoradockError):
    """The disk (or the database) is full, or a file hit the size limit, while writing; free space and retry."""


class NotWritable(LoradockError):
    """A directory or file loradock must write (the home, --out) is read-only or not permitted."""


class Unauthenticated(LoradockError):
    """No token, or a token that no tokens file lists (gRPC UNAUTHENTICATED)."""


class PermissionDenied(LoradockError):
    """A valid token without the role an operation needs (gRPC PERMISSION_DENIED)."""


class Unavailable(LoradockError):
    """A remote registry or server that cannot be reached, or is shutting down (gRPC UNAVAILABLE)."""
