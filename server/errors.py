"""The server's own errors, with their entries in the error table (class attributes; see registry/errors.py)."""

from registry.errors import InvalidInput, LoradockError


class QueueFull(LoradockError):
    """The request queue (or the adapter cache, with every slot in use) is full; retry later."""

    grpc_status, http_status = "RESOURCE_EXHAUSTED", 429  # exit code: LoradockError's (the error table, registry/errors.py)


class BadRequest(InvalidInput):
    """A request whose fields are malformed or out of range; the message names the field and the allowed range."""


class ServerShuttingDown(LoradockError):
    """The server is draining and takes no new requests."""

    grpc_status, http_status = "UNAVAILABLE", 503
