"""Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}`, with the status the error table gives.

The status is the error class's `http_status` (registry/errors.py: one table for exit codes, gRPC and HTTP); the
message is `public_message` (as the gRPC front sends it), prefixed with the gRPC status name so a 500 says
whether it is DATA_LOSS or INTERNAL; `code` is the error's class name (what gRPC sends as `loradock-error`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from registry.errors import LoradockError, shown

from ..errors import BadRequest
from ..status import public_message

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # 429 (queue full) and 503 (draining): when a client may try again
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}  # OpenAI's `type` for a status (the status itself comes from the table)


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def loradock_error_body(exc: BaseException) -> tuple[int, dict]:
    """The status and OpenAI error body of `exc` (a loradock error, or anything else as a 500)."""
    if isinstance(exc, LoradockError):
        status, grpc_status = exc.http_status, exc.grpc_status
    else:
        status, grpc_status = 500, "INTERNAL"
    message = f"{grpc_status}: {_openai_names(public_message(exc))}"
    return status, error_body(status, message, type(exc).__name__, getattr(exc, "param", None))


# The service names sampling fields as the proto does (`params.max_new_tokens`); an HTTP caller sent OpenAI's names.
_FIELD_NAMES = (("params.max_new_tokens", "max_tokens"), ("params.", ""))


def _openai_names(message: str) -> str:
    for service_name, body_name in _FIELD_NAMES:
        message = message.replace(service_name, body_name)
    return message


def error_response(exc: BaseException) -> JSONResponse:
    status, body = loradock_error_body(exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(exc: ValidationError | RequestValidationError) -> BadRequest:
    """The first problem pydantic found, as one line naming the field and the value sent."""
    problem = exc.errors()[0]
    where = ".".join(str(part) for part in problem["loc"] if part != "body") or "body"
    if problem.get("type") == "extra_forbidden":  # a strict body (a fine-tuning job's) names what it does not take
        error = BadRequest(f"{where}: not supported by this server; leave it out")
        error.param = where
        return error
    value = "" if problem.get("type") == "missing" else f"={shown(problem.get('input'), 64)}"
    error = BadRequest(f"{where}{value}: {problem['msg']}")
    error.param = where
    return error


def install_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error body: loradock errors, bad bodies, unknown routes, anything else."""

    @app.exception_handler(LoradockError)
    async def _loradock(request: Request, exc: LoradockError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(exc.status_code, message, "http_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(exc)
