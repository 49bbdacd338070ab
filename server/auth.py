"""Access control for every RPC: one table says which role each method needs; one interceptor checks it.

A call carries `authorization: Bearer <token>` in its metadata. No token, or one the server does
not know: UNAUTHENTICATED. A known token without the method's role: PERMISSION_DENIED. Health and
reflection stay open (load balancers and grpcurl need them; they reveal no adapters). Tokens are
compared in constant time (`tokens.TokenStore.identify`) and never logged, only their names. The HTTP
API's routes have their table here too (`ROLE_FOR_ROUTE`), checked by the same `check_caller`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc

from registry.errors import PermissionDenied, Unauthenticated

from .tokens import TokenEntry, TokenStore

logger = logging.getLogger(__name__)

# Every method of loradock.v1 -> the role it needs (admin implies every role). A method missing here is refused.
ROLE_FOR_METHOD: dict[str, str] = {
    "/loradock.v1.Inference/Generate": "infer",
    "/loradock.v1.Inference/GenerateStream": "infer",
    "/loradock.v1.Inference/Feedback": "infer",
    "/loradock.v1.Inference/ServerStats": "infer",
    "/loradock.v1.Inference/ListAdapters": "read",
    "/loradock.v1.Inference/LoadAdapter": "admin",
    "/loradock.v1.Inference/UnloadAdapter": "admin",
    "/loradock.v1.Registry/Resolve": "read",
    "/loradock.v1.Registry/DownloadBlob": "read",
    "/loradock.v1.Registry/BlobURLs": "read",
    "/loradock.v1.Registry/ListAdapters": "read",
    "/loradock.v1.Registry/GetAdapter": "read",
    "/loradock.v1.Registry/ListVersions": "read",
    "/loradock.v1.Registry/Describe": "read",
    "/loradock.v1.Registry/Diff": "read",
    "/loradock.v1.Registry/ListBases": "read",
    "/loradock.v1.Registry/AliasHistory": "read",
    "/loradock.v1.Registry/RolloutShow": "read",
    "/loradock.v1.Registry/RolloutReport": "read",
    "/loradock.v1.Registry/HasBlobs": "push",
    "/loradock.v1.Registry/UploadBlob": "push",
    "/loradock.v1.Registry/CommitPush": "push",
    "/loradock.v1.Registry/SetAlias": "push",
    "/loradock.v1.Registry/RemoveAlias": "push",
    "/loradock.v1.Registry/RolloutChange": "push",
    "/loradock.v1.Registry/RolloutState": "read",
    "/loradock.v1.Registry/RolloutRecord": "push",  # an inference server's outcomes: not for every client to write
    "/loradock.v1.Registry/RecordRun": "push",  # a remote worker's training run, published with the version it made
    "/loradock.v1.Registry/RecordEvaluation": "push",
    # Capture, by the rules of rollouts: a server polls the configs (read) and writes what it captured (push); the
    # settings and their deletions change what is kept (push). The captured requests themselves are user text
    # (prompts, responses, corrections): only an admin reads them back, not every pusher or inference server's token.
    "/loradock.v1.Registry/CaptureState": "read",
    "/loradock.v1.Registry/CaptureSummary": "read",
    "/loradock.v1.Registry/CaptureRecord": "push",
    "/loradock.v1.Registry/CaptureSet": "push",
    "/loradock.v1.Registry/CaptureOff": "push",
    "/loradock.v1.Registry/CaptureClear": "push",
    "/loradock.v1.Registry/CaptureExpire": "push",
    "/loradock.v1.Registry/CaptureRows": "admin",
    "/loradock.v1.Registry/RemoveVersion": "admin",
    "/loradock.v1.Registry/Gc": "admin",
    "/loradock.v1.Registry/Verify": "admin",  # re-hashes every blob: not for every reader to trigger
    "/loradock.v1.Registry/Audit": "admin",
    # Fine-tuning jobs: `train` submits, cancels and resumes its own (an admin anyone's: server/jobs_service.py).
    "/loradock.v1.Jobs/SubmitJob": "train",
    "/loradock.v1.Jobs/CancelJob": "train",
    "/loradock.v1.Jobs/ResumeJob": "train",
    "/loradock.v1.Jobs/PushCheckpoint": "train",
    "/loradock.v1.Jobs/ListJobs": "read",
    "/loradock.v1.Jobs/GetJob": "read",
    "/loradock.v1.Jobs/JobEvents": "read",
    "/loradock.v1.Jobs/ListCheckpoints": "read",
    # The queue's worker side, for `reg worker --registry URL` on another machine (which also needs `read` to
    # read its jobs and `push` to push their versions).
    **{f"/loradock.v1.JobWorkers/{name}": "worker" for name in (
        "RegisterWorker", "UnregisterWorker", "ClaimJob", "RenewLease", "JobsToStop", "FinishJob", "AddJobEvent",
        "ReportProgress", "RecordCheckpoint", "SetJobRun", "DownloadJobData")},
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The HTTP API's routes (server/http/) -> the role each needs, by the same rules as the RPCs they mirror (a model
# list serves the clients that run completions, so it needs `infer`, as /metrics does ServerStats' numbers).
ROLE_FOR_ROUTE: dict[str, str] = {
    "POST /v1/completions": "infer",
    "POST /v1/chat/completions": "infer",
    "POST /v1/feedback": "infer",
    "GET /v1/models": "infer",
    "GET /metrics": "infer",
    "POST /v1/load_lora_adapter": "admin",
    "POST /v1/unload_lora_adapter": "admin",
    # OpenAI's files and fine-tuning API, by the rules of the Jobs RPCs.
    "POST /v1/files": "train",
    "GET /v1/files": "read",
    "GET /v1/files/{file_id}": "read",
    "GET /v1/files/{file_id}/content": "read",
    "POST /v1/fine_tuning/jobs": "train",
    "GET /v1/fine_tuning/jobs": "read",
    "GET /v1/fine_tuning/jobs/{job_id}": "read",
    "POST /v1/fine_tuning/jobs/{job_id}/cancel": "train",
    "GET /v1/fine_tuning/jobs/{job_id}/events": "read",
    "GET /v1/fine_tuning/jobs/{job_id}/checkpoints": "read",
}
OPEN_ROUTES = ("GET /health",)  # load balancers probe it; it reveals no adapters


@dataclass(frozen=True)
class Identity:
    """Who made the current call: the token's name, or "" when the server runs without auth."""

    token_name: str
    roles: frozenset[str]
    peer: str


_current = threading.local()


def current_identity() -> Identity:
    """The identity of the call the current handler thread serves (set by the interceptor)."""
    return getattr(_current, "identity", None) or Identity("", frozenset(), "")


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the role of every call against `ROLE_FOR_METHOD`; with `tokens=None` (auth off) it lets every call through."""

    def __init__(self, tokens: TokenStore | None):
        self.tokens = tokens
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # method -> its handler with the check, built once

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if self.tokens is None or handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = _wrap(handler, lambda context: self._authorize(method, context))
        return wrapped

    def _authorize(self, method: str, context) -> Identity:
        try:
            entry = check_caller(self.tokens, bearer_token(context.invocation_metadata()), ROLE_FOR_METHOD.get(method),
                                 method, method.rsplit("/", 1)[-1], context.peer(),
                                 "pass --token or set LORADOCK_TOKEN (sent as `authorization: Bearer <token>`)")
        except (Unauthenticated, PermissionDenied) as exc:
            context.abort(grpc.StatusCode[exc.grpc_status], str(exc))
        return Identity(entry.name, entry.roles, context.peer())


def check_caller(tokens: TokenStore, token: str | None, role: str | None, what: str, short: str, peer: str,
                 how_to_send: str) -> TokenEntry:
    """The token's entry if it may call `what` (which needs `role`); else Unauthenticated or PermissionDenied, logged.

    `token`: None when none was sent, "" when the header was malformed; `short`: `what` as a message names it."""
    def deny(error: Exception, who: str):
        logger.warning(f"denied {what} ({error.grpc_status}) for token {who} from {peer}")
        raise error

    if not token:
        deny(Unauthenticated(f"no token: {how_to_send}" if token is None
                             else "malformed authorization: expected `Bearer <token>`"), "-")
    entry: TokenEntry | None = tokens.identify(token)
    if entry is None:
        deny(Unauthenticated("invalid token: the server's tokens file lists no token with this hash"), "unknown")
    if role is None:
        deny(PermissionDenied(f"no role is defined for {what}"), entry.name)
    if not entry.allows(role):
        deny(PermissionDenied(f"token {entry.name!r} has role(s) {', '.join(sorted(entry.roles))}; {short} needs {role!r}"),
             entry.name)
    return entry


def _wrap(handler: grpc.RpcMethodHandler, authorize) -> grpc.RpcMethodHandler:
    """The same handler, authorizing (and recording the caller) on the handler thread before it runs."""
    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        def call(request, context):
            _current.identity = authorize(context)
            return inner(request, context)

        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return factory(call, **kwargs)
    inner = handler.unary_stream or handler.stream_stream

    def stream(request, context):
        _current.identity = authorize(context)
        yield from inner(request, context)

    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return factory(stream, **kwargs)
