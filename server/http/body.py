"""Reading a request body as a hostile client may send it: bounded in size and in time, then parsed and validated.

The size is checked against Content-Length before anything is read, and again as chunks arrive (a chunked
body has no length); a client that sends its body too slowly gets DEADLINE_EXCEEDED after `timeout_s`, so it
cannot hold a handler. Every refusal is one line naming the problem.
"""

from __future__ import annotations

import asyncio
import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from registry.errors import DeadlineExceeded, TooLarge

from ..errors import BadRequest
from .errors import validation_error

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length={declared[:32]!r}: not a number of bytes")
        if int(declared) > limit:
            raise TooLarge(f"request body is {int(declared):,} bytes, more than the limit {limit:,} (--http-max-body-kb)")

    async def receive() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"request body is more than the limit {limit:,} bytes (--http-max-body-kb)")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(f"the request body did not arrive within {timeout_s:g} s (--http-timeout)") from None


async def parse_body(request: Request, model: type[Model], limit: int, timeout_s: float) -> Model:
    """The body as `model`: malformed JSON, a non-object, or a bad field is a 400 naming it."""
    raw = await read_body(request, limit, timeout_s)
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None
