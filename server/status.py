"""Loradock errors -> gRPC status codes: the one mapping, used by every servicer (imports no torch).

A status also carries the error's class name in trailing metadata (`loradock-error`), so a remote
registry client (`server/remote.py`) raises the same exception a local registry would, and the
CLI prints the same message with the same exit code.
"""

from __future__ import annotations

import sys

import grpc

from registry.errors import (
    BaseMismatch, BlobsMissing, Conflict, IntegrityError, InvalidAdapter, InvalidInput, InvalidName, InvalidRef,
    LoradockError, NotFound, PermissionDenied, TooLarge, Unauthenticated, Unavailable,
)

from .errors import QueueFull, ServerShuttingDown

STATUS_FOR = [  # most specific first
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidRef, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (BaseMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidAdapter, grpc.StatusCode.FAILED_PRECONDITION),
    (IntegrityError, grpc.StatusCode.DATA_LOSS),
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


def abort_with(context: grpc.ServicerContext, error: BaseException):
    context.set_trailing_metadata(((ERROR_CLASS_KEY, type(error).__name__),))
    context.abort(status_for(error), " ".join(str(error).split()) or type(error).__name__)
