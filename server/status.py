"""Loradock errors -> gRPC status codes: the one mapping, used by every servicer (imports no torch).

A status also carries the error's class name in trailing metadata (`loradock-error`), so a remote
registry client (`server/remote.py`) raises the same exception a local registry would, and the
CLI prints the same message with the same exit code.
"""

from __future__ import annotations

import re
import sys

import grpc

from registry.errors import (
    BaseMismatch, BlobsMissing, Conflict, DatabaseCorrupt, IntegrityError, InvalidAdapter, InvalidInput, InvalidName,
    InvalidRef, LoradockError, NotFound, NotWritable, PermissionDenied, StorageFull, TooLarge, Unauthenticated, Unavailable,
)

from .errors import QueueFull, ServerShuttingDown

STATUS_FOR = [  # most specific first
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidRef, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (BaseMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidAdapter, grpc.StatusCode.FAILED_PRECONDITION),
    (DatabaseCorrupt, grpc.StatusCode.DATA_LOSS),
    (IntegrityError, grpc.StatusCode.DATA_LOSS),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotWritable, grpc.StatusCode.FAILED_PRECONDITION),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ServerShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (BlobsMissing, grpc.StatusCode.FAILED_PRECONDITION),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (LoradockError, grpc.StatusCode.INTERNAL),
]


def status_for(error: BaseException) -> grpc.StatusCode:
    lora = sys.modules.get("server.lora")  # only a loaded model can raise AdapterIncompatible
    if lora is not None and isinstance(error, lora.AdapterIncompatible):
        return grpc.StatusCode.FAILED_PRECONDITION
    for cls, code in STATUS_FOR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


ERROR_CLASS_KEY = "loradock-error"  # trailing metadata: the error's class, so a remote client raises the same one


MAX_DETAILS_CHARS = 1000  # values in messages are already cut (registry.errors.shown); this bounds the whole line
# An absolute path (not part of a URL or a relative path): kept to its last component, so a remote client learns
# the file a problem is about but nothing of the server's directories (its home, cache, stage or temp paths).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\",;()\[\]{}<>/]+/)*([^\s'\",;()\[\]{}<>/]+)/?")


def public_message(error: BaseException) -> str:
    """The error as one line fit to send to a remote client: server paths cut to their last component, length bounded."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > MAX_DETAILS_CHARS:
        text = text[:MAX_DETAILS_CHARS] + "… (cut)"
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), text)


def abort_with(context: grpc.ServicerContext, error: BaseException):
    context.set_trailing_metadata(((ERROR_CLASS_KEY, type(error).__name__),))
    context.abort(status_for(error), public_message(error))
