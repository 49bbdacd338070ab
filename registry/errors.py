"""The registry's errors, and the one error table. Each error says what was wrong, with the value, and what to do.

The table: every error class carries its CLI exit code, gRPC status code name and HTTP status as class
attributes (`exit_code`, `grpc_status`, `http_status`), set once where the class is declared and inherited
down the hierarchy; an error class elsewhere (server/, trainer/) declares its own the same way, so this
package imports none of them. Every mapping reads them: `cli/errors.py` (exit codes, documented in
README.md's "Exit codes"), `server/status.py` (gRPC status codes), the remote registry client and the CLI's
inference commands (`class_for_status`, for a status that arrives without the error's class name), and the
HTTP API. The gRPC status is a name (a `grpc.StatusCode` member's), so this module imports no grpc.
Nothing else catches these errors to reword them.
"""

from __future__ import annotations


class LoradockError(Exception):
    """Base class of every error a loradock user is meant to read."""

    exit_code, grpc_status, http_status = 1, "INTERNAL", 500


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

    exit_code, grpc_status, http_status = 2, "INVALID_ARGUMENT", 400


class InvalidName(LoradockError):
    """An adapter, alias or base name that does not match the naming rule."""

    exit_code, grpc_status, http_status = 2, "INVALID_ARGUMENT", 400


class InvalidRef(LoradockError):
    """A reference that is not `NAME`, `NAME:N` or `NAME@ALIAS`."""

    exit_code, grpc_status, http_status = 2, "INVALID_ARGUMENT", 400


class NotFound(LoradockError):
    """Something that was asked for by name does not exist."""

    exit_code, grpc_status, http_status = 3, "NOT_FOUND", 404


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

    exit_code, grpc_status, http_status = 2, "FAILED_PRECONDITION", 422


class BaseMismatch(LoradockError):
    """An adapter that does not fit the base model it is said to belong to."""

    exit_code, grpc_status, http_status = 5, "FAILED_PRECONDITION", 422


class IntegrityError(LoradockError):
    """Stored bytes whose sha256 no longer matches what was recorded."""

    exit_code, grpc_status, http_status = 6, "DATA_LOSS", 500


class Conflict(LoradockError):
    """An operation refused because of the registry's current state (an alias in use, an existing output)."""

    exit_code, grpc_status, http_status = 4, "FAILED_PRECONDITION", 409


class BlobsMissing(LoradockError):
    """A remote push committed before all of its blobs were uploaded (or one vanished); upload them, then commit again."""

    exit_code, grpc_status, http_status = 6, "FAILED_PRECONDITION", 412


class TooLarge(LoradockError):
    """A blob, message or request beyond a configured limit; the message names the value and the limit."""

    exit_code, grpc_status, http_status = 7, "RESOURCE_EXHAUSTED", 413


class DatabaseCorrupt(IntegrityError):
    """registry.db is unreadable, damaged, empty or missing while the blob store holds blobs: restore it from a backup."""

    exit_code, grpc_status, http_status = 14, "DATA_LOSS", 500


class StorageFull(LoradockError):
    """The disk (or the database) is full, or a file hit the size limit, while writing; free space and retry."""

    exit_code, grpc_status, http_status = 12, "RESOURCE_EXHAUSTED", 507


class NotWritable(LoradockError):
    """A directory or file loradock must write (the home, --out) is read-only or not permitted."""

    exit_code, grpc_status, http_status = 13, "FAILED_PRECONDITION", 500


class StorageRefused(LoradockError):
    """The object store (`--blob-store s3://...`) refused the registry: credentials it does not accept, a bucket that
    does not exist, or another refusal. The caller's request was fine; the registry's storage settings are not."""

    exit_code, grpc_status, http_status = 15, "FAILED_PRECONDITION", 502


class Unauthenticated(LoradockError):
    """No token, or a token that no tokens file lists (gRPC UNAUTHENTICATED)."""

    exit_code, grpc_status, http_status = 10, "UNAUTHENTICATED", 401


class PermissionDenied(LoradockError):
    """A valid token without the role an operation needs (gRPC PERMISSION_DENIED)."""

    exit_code, grpc_status, http_status = 11, "PERMISSION_DENIED", 403


class Unavailable(LoradockError):
    """A remote registry or server that cannot be reached, or is shutting down (gRPC UNAVAILABLE)."""

    exit_code, grpc_status, http_status = 9, "UNAVAILABLE", 503


class DeadlineExceeded(LoradockError):
    """A request that did not finish before its deadline; the server cancelled it (gRPC DEADLINE_EXCEEDED)."""

    exit_code, grpc_status, http_status = 8, "DEADLINE_EXCEEDED", 504


def error_classes() -> list[type[LoradockError]]:
    """Every error class in the table: LoradockError and its subclasses in the modules imported so far."""
    found, todo = [], [LoradockError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def error_class_named(name: str) -> type[LoradockError] | None:
    """The error class called `name` (as a status's `loradock-error` metadata names it), if it is in the table."""
    return next((cls for cls in error_classes() if cls.__name__ == name), None)


# What a gRPC status stands for when it arrives without the error's class name: a client-side deadline, a
# server that cannot be reached, the auth interceptor's refusals. A registry and an inference server mean
# different things by two of them (FAILED_PRECONDITION: a conflict with the registry's state / an adapter that
# does not fit the server's base; DEADLINE_EXCEEDED: a registry that does not answer / a request cut off).
REGISTRY_STATUS_CLASS: dict[str, type[LoradockError]] = {
    "NOT_FOUND": NotFound, "INVALID_ARGUMENT": InvalidInput, "FAILED_PRECONDITION": Conflict, "DATA_LOSS": IntegrityError,
    "RESOURCE_EXHAUSTED": TooLarge, "UNAUTHENTICATED": Unauthenticated, "PERMISSION_DENIED": PermissionDenied,
    "UNAVAILABLE": Unavailable, "DEADLINE_EXCEEDED": Unavailable,
}
INFERENCE_STATUS_CLASS: dict[str, type[LoradockError]] = {
    "NOT_FOUND": NotFound, "INVALID_ARGUMENT": InvalidInput, "FAILED_PRECONDITION": BaseMismatch,
    "RESOURCE_EXHAUSTED": TooLarge, "UNAUTHENTICATED": Unauthenticated, "PERMISSION_DENIED": PermissionDenied,
    "UNAVAILABLE": Unavailable, "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def class_for_status(status: str, inference: bool = False) -> type[LoradockError]:
    """The error class a bare gRPC status (by name) stands for, from a registry or (`inference`) an inference server."""
    return (INFERENCE_STATUS_CLASS if inference else REGISTRY_STATUS_CLASS).get(status, LoradockError)
