"""Generated gRPC stubs for loradock.v1.Registry (from proto/loradock/v1/registry.proto, by `make proto`; do not
edit by hand)."""

from . import registry_pb2 as pb
from . import registry_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
