"""Building and running the server: `create_server(options, registry) -> (server, port, service)`.

Tests bind port 0 and talk over a real channel; `reg serve` runs `serve_forever`, which drains
in-flight requests on SIGTERM/SIGINT for `grace_s` and exits 0.
"""

from __future__ import annotations

import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from registry import Registry

from .options import ServerOptions
from .rpc import pb, pb_grpc
from .service import InferenceService
from .servicer import InferenceServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name


def load_service(options: ServerOptions, registry: Registry, log=print) -> InferenceService:
    """Load the base once (quantized as asked), wrap its linear layers for multi-LoRA, start the engine."""
    from registry.loading import load_base_model
    from trainer.train import resolve_base

    from .lora import MultiLoraModel

    options.validate()
    base = resolve_base(registry, options.base)
    log(f"loading base {base.name} ({options.quant}) ...")
    loaded = load_base_model(base, options.quant)
    lora = MultiLoraModel(loaded.model, max_slots=options.max_adapters, rank=options.lora_rank,
                          gather_cache_bytes=options.gather_cache_mb * 2**20)
    return InferenceService(registry, base, loaded.model, loaded.tokenizer, lora, options, options.quant).start()


def create_server(options: ServerOptions, registry: Registry, service: InferenceService | None = None, log=print):
    """A started gRPC server with Inference, health and reflection; returns (server, port, service)."""
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    service = service or load_service(options, registry, log=log)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="loradock-rpc"),
        options=[("grpc.max_receive_message_length", 16 * 2**20), ("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(service), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise OSError(f"could not listen on {options.host}:{options.port} (in use?)")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    server.health = health_servicer
    return server, port, service


def shutdown(server, service: InferenceService, grace_s: float) -> None:
    """Stop accepting, let in-flight requests finish for up to `grace_s`, then stop."""
    server.health.enter_graceful_shutdown()
    service.engine._accepting = False
    service.stop(drain_s=grace_s)
    server.stop(grace=1.0).wait()


def serve_forever(options: ServerOptions, registry: Registry, log=print) -> int:
    server, port, service = create_server(options, registry, log=log)
    log(f"serving {service.base.name} ({options.quant}) on {options.host}:{port}; SIGTERM drains for {options.grace_s:g} s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log("draining in-flight requests ...")
    shutdown(server, service, options.grace_s)
    log("stopped")
    return 0
