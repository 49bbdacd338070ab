"""POST /v1/completions and /v1/chat/completions: an OpenAI body -> `InferenceService.submit` -> OpenAI's reply.

Blocking service calls run on the front's handler threads (as many as gRPC's, `ServerOptions.handler_threads`),
never on the event loop. A client that goes away cancels its Generation, so its batch slot frees at the
engine's next step: a non-streamed request watches for the disconnect while it waits; a stream stops (and
cancels) when the client disconnects or stops reading for `--http-timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from registry.errors import LoradockError

from ..options import ServerOptions
from ..service import Generation, InferenceService
from ..service_types import GenerateResult
from .body import parse_body
from .errors import loradock_error_body
from .protocol import ChatRequest, CompletionRequest, generate_request

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold the events back


class CompletionServing:
    def __init__(self, service: InferenceService, options: ServerOptions, pool: Executor, body_limit: int):
        self.service = service
        self.options = options
        self.pool = pool
        self.body_limit = body_limit

    async def create(self, request: Request, chat: bool) -> Response:
        body = await parse_body(request, ChatRequest if chat else CompletionRequest, self.body_limit,
                                self.options.http_timeout_s)
        req = generate_request(body, self.service.base.name, request.headers.get("x-routing-key", ""),
                               self.options.max_new_tokens_limit)
        generation = await asyncio.get_running_loop().run_in_executor(self.pool, self.service.submit, req)
        reply = _Reply(body.model, generation, chat)
        if body.stream:
            return EventStream(_events(reply, stream_deltas(generation, self.pool), body.include_usage()), generation.cancel,
                               self.options.http_timeout_s, {**SSE_HEADERS, **reply.headers()})
        result = await self._result(request, generation)
        if result is None:  # the client went away: nobody reads this
            return Response(status_code=499)
        return JSONResponse(reply.full(result), headers=reply.headers())

    async def _result(self, request: Request, generation: Generation) -> GenerateResult | None:
        """The finished request, or None (and the request cancelled) once the client disconnects."""
        work = asyncio.get_running_loop().run_in_executor(self.pool, generation.result)
        gone = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            gone.cancel()
            return work.result()  # raises what failed the request
        generation.cancel()
        work.add_done_callback(lambda f: f.exception())  # its outcome is recorded by the service; nobody waits
        return None


class _Reply:
    """OpenAI's fields (completion or chat) for one Generation, plus the `loradock` object and headers."""

    def __init__(self, model: str, generation: Generation, chat: bool):
        self.model, self.generation, self.chat = model, generation, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + generation.request_id
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def headers(self) -> dict[str, str]:
        g = self.generation
        headers = {"X-Request-Id": g.request_id}
        if g.version:
            headers["X-Loradock-Version"] = g.version
        if g.variant:
            headers["X-Loradock-Variant"] = g.variant
        return headers

    def loradock(self, result: GenerateResult | None = None) -> dict:
        g = self.generation
        info = {"request_id": g.request_id, "adapter_version": g.version, "variant": g.variant}
        if result is not None:
            info["timing"] = {"queue_ms": result.timing.queue_ms, "ttft_ms": result.timing.ttft_ms,
                              "total_ms": result.timing.total_ms}
        return info

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices, **extra}

    def full(self, result: GenerateResult) -> dict:
        content = {"message": {"role": "assistant", "content": result.text}} if self.chat else {"text": result.text}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": result.finish_reason}
        return self._envelope(self.object, [choice], usage=usage(result), loradock=self.loradock(result))

    def chunk(self, text: str | None, finish_reason: str | None = None, result: GenerateResult | None = None,
              with_usage: bool = False, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice, obj = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}, self.object
        extra = {"usage": None} if with_usage else {}
        return self._envelope(obj, [choice], **extra, loradock=self.loradock(result))

    def usage_chunk(self, result: GenerateResult) -> dict:
        obj = "chat.completion.chunk" if self.chat else self.object
        return self._envelope(obj, [], usage=usage(result), loradock=self.loradock(result))


def usage(result: GenerateResult) -> dict:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def sse_event(data: dict | str) -> bytes:
    """One server-sent event carrying `data` (JSON, or a literal such as [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _events(reply: _Reply, deltas: AsyncIterator[str], include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's stream: chunks as the text is decoded, a last chunk with the finish reason, usage if asked, [DONE].

    An error after the stream began (a deadline, a failure inside the model) is sent as an `error` event."""
    try:
        if reply.chat:
            yield sse_event(reply.chunk(None, with_usage=include_usage, first=True))
        async for delta in deltas:
            yield sse_event(reply.chunk(delta, with_usage=include_usage))
        result = reply.generation.result()  # ready: the deltas ended
        yield sse_event(reply.chunk(None, result.finish_reason, result, with_usage=include_usage))
        if include_usage:
            yield sse_event(reply.usage_chunk(result))
    except Exception as exc:
        if not isinstance(exc, LoradockError):
            logger.exception("request %s failed inside the model", reply.generation.request_id)
        yield sse_event(loradock_error_body(exc)[1])
    yield sse_event("[DONE]")


async def stream_deltas(generation: Generation, pool: Executor) -> AsyncIterator[str]:
    """`generation.deltas()` (a blocking iterator) read on a handler thread, handed to the event loop as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def pump() -> None:
        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server stopped, nobody reads
                generation.cancel()

        try:
            for delta in generation.deltas():
                put((delta, None))
            put((None, None))
        except BaseException as exc:  # re-raised on the loop, in the stream
            put((None, exc))

    pool.submit(pump)
    while True:
        delta, error = await queue.get()
        if error is not None:
            raise error
        if delta is None:
            return
        yield delta


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStream(StreamingResponse):
    """Server-sent events that stop, and call `on_gone`, as soon as the client disconnects or stalls.

    Starlette's own response watches for the disconnect only under some ASGI versions and waits on a client that
    stopped reading for ever; here both end the stream on every version."""

    def __init__(self, events: AsyncIterator[bytes], on_gone: Callable[[], None], send_timeout_s: float,
                 headers: dict[str, str]):
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.on_gone = on_gone
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        completed = False

        async def bounded_send(message) -> None:
            with anyio.fail_after(self.send_timeout_s):
                await send(message)

        async with anyio.create_task_group() as group:
            async def stream() -> None:
                nonlocal completed
                try:
                    await self.stream_response(bounded_send)
                    completed = True
                except TimeoutError:
                    logger.warning("a client stopped reading its stream for %g s; the request was cancelled",
                                   self.send_timeout_s)
                except OSError:
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
        if not completed:
            self.on_gone()

