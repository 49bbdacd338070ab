"""Loradock errors -> gRPC statuses, as the error table (registry/errors.py) says: used by every servicer (no torch).

A status also carries the error's class name in trailing metadata (`loradock-error`), so a remote
registry client (`registry/remote/client.py`) raises the same exception a local registry would, and the
CLI prints the same message with the same exit code.
"""

from __future__ import annotations

import re

import grpc

from registry.errors import LoradockError
from registry.remote import ERROR_CLASS_KEY


def status_for(error: BaseException) -> grpc.StatusCode:
    """The error table's gRPC status for `error` (registry/errors.py); INTERNAL for anything outside it."""
    return grpc.StatusCode[error.grpc_status] if isinstance(error, LoradockError) else grpc.StatusCode.INTERNAL


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
