"""Generated gRPC stubs for loradock.v1 (from proto/, by `make proto`; do not edit by hand)."""

from . import loradock_pb2 as pb
from . import loradock_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
