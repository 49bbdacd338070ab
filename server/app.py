"""Building and running the server: `create_server(options, registry) -> (server, port, service)`.

Tests bind port 0 and talk over a real channel; `reg serve` runs `serve_forever`, which drains
in-flight requests on SIGTERM/SIGINT for `grace_s` and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from registry import Registry
from registry.remote.rpc import pb as registry_pb, pb_grpc as registry_pb_grpc

from .jobs_service import JobHooks, JobsService
from .options import ServerOptions
from .rpc import pb, pb_grpc

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .service import InferenceService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name
REGISTRY_SERVICE_NAME = registry_pb.DESCRIPTOR.services_by_name["Registry"].full_name
REGISTRY_MESSAGE_BYTES = 5 * 2**20  # one Registry upload chunk (at most 4 MiB, server/registry_service.py) and its framing


def load_service(options: ServerOptions, registry: Registry, engine_thread: bool = True) -> InferenceService:
    """The engine and the service over it, both started. The engine is chosen here, and only here (the service
    sees it through `server.engines.Engine`): the native one loads the base once, quantized as asked; the vLLM one
    starts vLLM in its own environment (`server/engines/vllm.py`).

    With a remote registry (`RemoteRegistry`) adapters resolve and pull from it, while the base is
    found (or registered) in the local home, where its weights are.
    """
    from .service import InferenceService

    options.validate()
    base = (registry if registry.is_local else Registry(registry.home)).resolve_base(options.base)
    if options.engine == "vllm":
        from .engines.vllm import load_vllm_engine

        logger.info(f"serving base {base.name} through vLLM ...")
        engine = load_vllm_engine(base, options)
    else:
        from .engines.native import load_native_engine

        logger.info(f"loading base {base.name} ({options.quant}) ...")
        engine = load_native_engine(base, options)
    return InferenceService(registry, base, engine, options, options.quant).start(engine_thread)


def create_server(options: ServerOptions, registry: Registry, service: InferenceService | None = None,
                  job_hooks: JobHooks | None = None, engine_thread: bool = True):
    """A started gRPC server with Inference, health and reflection; returns (server, port, service).

    It also serves the Registry and Jobs services over `registry` when that is a local one (jobs are taken only
    with the trainer's `job_hooks`), and with `options.http_port` the HTTP API over the same services (`server.http`,
    its port `server.http_port`; None without HTTP).
    """
    from .limits import max_request_bytes
    from .servicer import InferenceServicer

    options.validate_listen()
    tokens = _tokens(options)
    check_listen(options)  # a busy port or a bad certificate fails now, not after the model has loaded
    http_socket = _bind_http(options)
    metrics_listener = _bind_metrics(options)
    try:
        service = service or load_service(options, registry, engine_thread)
    except BaseException:
        if http_socket is not None:
            http_socket.close()
        if metrics_listener is not None:
            metrics_listener.stop()
        raise
    serves_registry = registry.is_local
    # The largest request the limits let through (a Registry upload chunk, when that service is served too).
    max_receive = max(max_request_bytes(service.max_prompt_bytes), REGISTRY_MESSAGE_BYTES if serves_registry else 0)
    server = _grpc_server(options, tokens, max_receive)
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(service), server)
    names = [SERVICE_NAME]
    server.jobs_service = None
    if serves_registry:
        _add_registry_service(server, registry.home, options)
        names.append(REGISTRY_SERVICE_NAME)
        names.extend(_add_jobs_service(server, registry.home, job_hooks))
    port = _start(server, options, names)
    server.metrics_listener = metrics_listener.start(service.metrics) if metrics_listener is not None else None
    server.metrics_port = metrics_listener.port if metrics_listener is not None else None
    server.http, server.http_port = None, None
    if http_socket is not None:
        from .http.front import HttpFront

        try:
            server.http = HttpFront(service, options, tokens, http_socket, jobs=server.jobs_service).start()
        except BaseException:
            server.stop(grace=0)
            http_socket.close()
            if metrics_listener is not None:
                metrics_listener.stop()
            raise
        server.http_port = server.http.port
    return server, port, service


def _bind_http(options: ServerOptions):
    """The HTTP API's socket, bound now (a busy --http-port fails before the model loads), or None without HTTP."""
    if options.http_port is None:
        return None
    from .http.front import bind_http

    return bind_http(options)


def _bind_metrics(options: ServerOptions):
    """The --metrics-port listener, bound now and not serving yet (`server.metrics.MetricsListener`), or None."""
    if options.metrics_port is None:
        return None
    from .metrics import MetricsListener

    return MetricsListener(options)


def create_registry_server(options: ServerOptions, home, on_chunk=None, on_sent=None, job_hooks: JobHooks | None = None):
    """A started gRPC server with the Registry and Jobs services (no model loaded); returns (server, port, servicer).

    `on_chunk(digest, bytes_stored)` is called after every uploaded chunk is written, `on_sent(digest, bytes_sent)`
    after every downloaded chunk (tests pause transfers with them).
    """
    options.validate_listen()
    tokens = _tokens(options)
    check_listen(options)
    server = _grpc_server(options, tokens)
    servicer = _add_registry_service(server, home, options, on_chunk=on_chunk, on_sent=on_sent)
    port = _start(server, options, [REGISTRY_SERVICE_NAME, *_add_jobs_service(server, home, job_hooks)])
    return server, port, servicer


def _add_registry_service(server: grpc.Server, home, options: ServerOptions, **hooks):
    """Serve the Registry service of `home` on `server` (kept as `server.registry_servicer`)."""
    from .registry_service import RegistryServicer

    server.registry_servicer = RegistryServicer(home, options.max_blob_bytes, **hooks)
    registry_pb_grpc.add_RegistryServicer_to_server(server.registry_servicer, server)
    return server.registry_servicer


def _add_jobs_service(server: grpc.Server, home, job_hooks: JobHooks | None) -> list[str]:
    """Serve the Jobs and JobWorkers services of `home` on `server` (its `JobsService` kept as `server.jobs_service`);
    returns their names."""
    from .jobs_servicer import add_jobs_service

    server.jobs_service = JobsService(home, job_hooks)
    return add_jobs_service(server, server.jobs_service)


def _tokens(options: ServerOptions):
    """The tokens the server accepts (None: auth off, which is only allowed on localhost)."""
    import ipaddress

    from .errors import BadRequest
    from .tokens import TokenStore

    tokens = TokenStore.from_options(options.auth_tokens)
    host = options.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if tokens is None and not loopback and not options.insecure_listen_all:
        raise BadRequest(
            f"--host {options.host}: without auth the server listens on localhost only; give --auth-tokens FILE "
            f"(or LORADOCK_ADMIN_TOKEN), or --insecure-listen-all to let anyone who reaches the port do anything"
        )
    return tokens


def check_listen(options: ServerOptions) -> None:
    """Refuse, in one line, a port another process listens on and TLS files that are not PEM (before any slow work)."""
    import errno
    import socket
    import ssl

    from registry.errors import Conflict

    from .errors import BadRequest

    address = f"{options.host}:{options.port}"
    try:
        infos = socket.getaddrinfo(options.host.strip("[]"), options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BadRequest(f"--host {options.host}: cannot resolve it ({e.strerror})") from None
    for family, kind, proto, _, sockaddr in infos if options.port else []:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: only a listener is a conflict
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise Conflict(f"cannot listen on {address}: {e.strerror}; stop what uses it or choose another --port") from None
    if options.tls_cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(options.tls_cert, options.tls_key, password=b"")
        except (ssl.SSLError, OSError, ValueError) as e:
            raise BadRequest(f"--tls-cert {options.tls_cert} / --tls-key {options.tls_key}: not a PEM certificate chain "
                             f"and its unencrypted private key ({getattr(e, 'reason', None) or e})") from None


def _grpc_server(options: ServerOptions, tokens, max_receive: int = 16 * 2**20) -> grpc.Server:
    from .auth import AuthInterceptor

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.handler_threads, thread_name_prefix="loradock-rpc"),
        maximum_concurrent_rpcs=options.handler_threads,  # beyond: RESOURCE_EXHAUSTED at once, never an unbounded wait
        interceptors=[AuthInterceptor(tokens)],
        options=[("grpc.max_receive_message_length", max_receive), ("grpc.max_send_message_length", 16 * 2**20),
                 ("grpc.so_reuseport", 0)],
    )
    server.tokens = tokens  # None: auth is off
    return server


def _start(server: grpc.Server, options: ServerOptions, names: list[str]) -> int:
    """Health (kept as `server.health`), reflection, the port (TLS with --tls-cert/--tls-key), start; returns the port."""
    health_servicer = health.HealthServicer()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{options.host}:{options.port}"
    if options.tls_cert:
        from pathlib import Path

        credentials = grpc.ssl_server_credentials([(Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        from registry.errors import Conflict

        raise Conflict(f"cannot listen on {address} (in use?); stop what uses it or choose another --port")
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.health = health_servicer
    return port


def shutdown(server, service: InferenceService, grace_s: float) -> None:
    """Stop accepting (gRPC health NOT_SERVING, HTTP /health 503), let in-flight requests finish for up to
    `grace_s`, then stop both fronts."""
    server.health.enter_graceful_shutdown()
    http = getattr(server, "http", None)
    if http is not None:
        http.drain()
    service.stop_accepting()
    service.stop(drain_s=grace_s)
    if http is not None:
        http.stop()
    if getattr(server, "metrics_listener", None) is not None:  # scraped through the drain, stopped after it
        server.metrics_listener.stop()
    server.stop(grace=1.0).wait()


def serve_registry_forever(options: ServerOptions, home, job_hooks: JobHooks | None = None) -> int:
    """`reg serve --registry-only`: the Registry and Jobs services alone, until SIGTERM/SIGINT."""
    server, port, _ = create_registry_server(options, home, job_hooks=job_hooks)
    auth = "tokens required" if server.tokens is not None else "no auth (localhost only)"
    logger.info(f"serving registry {home} on {options.host}:{port} ({'TLS' if options.tls_cert else 'plaintext'}, {auth})")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.health.enter_graceful_shutdown()
    server.stop(grace=options.grace_s).wait()
    logger.info("stopped")
    return 0


def serve_portal_forever(options: ServerOptions, registry, job_hooks: JobHooks | None = None) -> int:
    """`reg portal`: the web portal alone on --host:--http-port, over `registry` (local, or a `RemoteRegistry`).

    Signing in, roles and CSRF are the portal's own (the tokens of --auth-tokens); a remote registry is read and
    changed with the token `reg` was given. Job actions and the New-job form need a local registry (its queue)."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from .http.front import AsgiFront, bind_http
    from .portal.app import PREFIX, build_portal

    tokens = _tokens(options)
    jobs = JobsService(registry.home, job_hooks) if registry.is_local else None
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount(PREFIX, build_portal(registry, tokens, jobs, secure_cookies=bool(options.tls_cert)))
    app.add_api_route("/", lambda: RedirectResponse(f"{PREFIX}/adapters", status_code=303), include_in_schema=False)
    front = AsgiFront(app, options, bind_http(options), limit_concurrency=options.handler_threads + 64).start()
    scheme = "https" if options.tls_cert else "http"
    source = registry.home if registry.is_local else registry.url
    logger.info(f"portal on {scheme}://{options.host}:{front.port}{PREFIX} over the registry {source}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    front.stop()
    return 0


def serve_forever(options: ServerOptions, registry: Registry, job_hooks: JobHooks | None = None) -> int:
    """`reg serve`: until SIGTERM/SIGINT, then a drain. The engine's loop runs on this, the main, thread (its
    forwards are fastest there: `Engine.run`), the drain on another."""
    server, port, service = create_server(options, registry, job_hooks=job_hooks, engine_thread=False)
    http = f", HTTP (OpenAI API) on {options.host}:{server.http_port}" if server.http_port is not None else ""
    if server.metrics_port is not None:
        http += f", /metrics without a token on {options.host}:{server.metrics_port}"
    logger.info(f"serving {service.base.name} ({options.quant}) on {options.host}:{port} (gRPC){http}; "
                f"SIGTERM drains for {options.grace_s:g} s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # handlers run on the main thread, between the engine's steps

    def drain() -> None:
        stop.wait()
        logger.info("draining in-flight requests ...")
        shutdown(server, service, options.grace_s)  # stops the engine: run() below returns

    drainer = threading.Thread(target=drain, name="loradock-drain", daemon=True)
    drainer.start()
    try:
        service.engine.run()
    except BaseException:
        logger.exception("the engine stopped on an error; shutting down")
        stop.set()
        drainer.join(timeout=options.grace_s + 30)
        return 1
    drainer.join()
    logger.info("stopped")
    return 0
