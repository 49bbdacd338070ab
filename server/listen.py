"""Binding a listener's port before anything slow starts: one way for every HTTP listener of a server.

A busy port or a host that does not resolve is one line naming the flag, raised before the model loads; port 0
picks a free one (read it back from the socket). The socket is bound, not listening: its server starts that.
"""

from __future__ import annotations

import errno
import socket

from registry.errors import Conflict

from .errors import BadRequest


def bind_port(host: str, port: int, flag: str) -> socket.socket:
    """A TCP socket bound to `host`:`port` (SO_REUSEADDR); `flag` is the option that chose the port (--http-port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise BadRequest(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise Conflict(f"cannot listen on {host}:{port}: {e.strerror}; stop what uses it or choose another {flag}") \
                from None
        raise
    return sock
