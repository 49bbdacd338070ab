"""The HTTP front as `reg serve` runs it: uvicorn on its own thread, beside gRPC, over the same InferenceService.

`bind_http(options)` takes the port before the model loads (a busy port fails at once; port 0 picks a free
one, `HttpFront.port` says which), `HttpFront.start()` serves on it, `drain()` turns /health and new
completions to 503 while in-flight requests finish, `stop()` closes it. TLS uses --tls-cert/--tls-key, as gRPC.
A client that sends no complete request head within --http-timeout (on a new or a kept-alive connection) is
dropped (uvicorn alone waits).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


from ..listen import bind_port
from ..jobs_service import JobsService
from ..options import ServerOptions
from ..service import InferenceService
from ..tokens import TokenStore
from .app import HttpState, build_app

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # a backstop: uvicorn starts in milliseconds
MAX_HEADER_BYTES = 64 * 2**10


def bind_http(options: ServerOptions) -> socket.socket:
    """A socket bound to --host:--http-port (not listening yet); a busy port or an unknown host is one line."""
    return bind_port(options.host, options.http_port, "--http-port")


class _H11Protocol(H11Protocol):
    """uvicorn's h11 protocol, dropping a connection whose next request head has not arrived within the timeout.

    uvicorn bounds an idle keep-alive connection but not one that trickles a request head a byte at a time; the
    timer is armed when a connection opens and again when bytes arrive between requests, and it drops the
    connection if no new request (a complete head) began since it was armed.
    """

    header_timeout_s = 30.0
    _head_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()
        super().data_received(data)

    def _arm_head_timer(self) -> None:
        waiting_after = self.cycle  # the request before the one whose head is awaited (None on a new connection)

        def drop_if_no_new_request() -> None:
            self._head_timer = None
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

        self._head_timer = self.loop.call_later(self.header_timeout_s, drop_if_no_new_request)


class AsgiFront:
    """uvicorn on its own thread serving an ASGI `app` on `sock`: TLS and the request-head timeout of the options."""

    def __init__(self, app, options: ServerOptions, sock: socket.socket, limit_concurrency: int):
        self.app = app
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        protocol = type("H11Protocol", (_H11Protocol,), {"header_timeout_s": options.http_timeout_s})
        config = uvicorn.Config(
            self.app, http=protocol, lifespan="off", log_config=None, access_log=False, server_header=False,
            ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key, limit_concurrency=limit_concurrency,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="loradock-http", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self):
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start: {self.error!r}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


class HttpFront(AsgiFront):
    """The HTTP API (and the portal at /ui) over `service`, as `reg serve --http-port` runs it."""

    def __init__(self, service: InferenceService, options: ServerOptions, tokens: TokenStore | None, sock: socket.socket,
                 jobs: JobsService | None = None):
        app = build_app(service, options, tokens, jobs)
        self.state: HttpState = app.state.loradock
        # beyond the queue limit: the service answers 429 first
        super().__init__(app, options, sock, limit_concurrency=options.handler_threads + 64)

    def drain(self) -> None:
        """/health and new completions answer 503 from now on; requests in flight go on."""
        self.state.draining = True

    def stop(self) -> None:
        self.drain()
        super().stop()
        self.state.pool.shutdown(wait=False, cancel_futures=True)
