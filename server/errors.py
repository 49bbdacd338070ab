"""The server's own errors (the gRPC servicer maps every loradock error to a status code in one place)."""

from registry.errors import InvalidInput, LoradockError


class QueueFull(LoradockError):
    """The request queue (or the adapter cache, with every slot in use) is full; retry later."""


class BadRequest(InvalidInput):
    """A request whose fields are malformed or out of range; the message names the field and the allowed range."""


class ServerShuttingDown(LoradockError):
    """The server is draining and takes no new requests."""
