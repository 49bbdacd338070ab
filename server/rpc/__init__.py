"""Generated gRPC stubs for loradock.v1.Inference (from proto/loradock/v1/inference.proto, by `make proto`; do not
edit by hand). The Registry service's stubs are in `registry.remote.rpc`."""

from . import inference_pb2 as pb
from . import inference_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
