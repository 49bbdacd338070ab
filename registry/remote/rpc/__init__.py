"""Generated gRPC stubs for loradock.v1.Registry and loradock.v1.Jobs (from proto/loradock/v1/registry.proto and
jobs.proto, by `make proto`; do not edit by hand)."""

from . import jobs_pb2 as jobs_pb
from . import jobs_pb2_grpc as jobs_pb_grpc
from . import registry_pb2 as pb
from . import registry_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc", "jobs_pb", "jobs_pb_grpc"]
