"""The registry over gRPC: the client (`client.RemoteRegistry`), the wire messages (`rpc/`, generated from
proto/loradock/v1/registry.proto) and the one converter between them and the registry's records (`messages`).

The servicer that serves a local registry (`server/registry_service.py`) imports these; nothing here imports
`server`. Importing this package imports neither grpc nor protobuf, so `reg ls` on a local registry stays quick.
"""

ERROR_CLASS_KEY = "loradock-error"  # trailing metadata: the error's class, so a remote client raises the same one
