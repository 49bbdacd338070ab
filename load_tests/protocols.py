"""How the load generator talks to the server: over its gRPC API or over its OpenAI-compatible HTTP API.

Both transports send the same request for a `RequestSpec` (one user message through the chat
template, greedy, `max_new_tokens`, the routing key) and fill the same `Sample` fields, so a run
over one protocol and a run over the other measure the same work. A protocol error is recorded in
`Sample.code` (a gRPC status name, or `HTTP_<status>` / `HTTP_<transport error>`), never raised.

The HTTP transport keeps one persistent connection per generator thread on the standard library's
`http.client`, so no request pays for a new connection after its thread's first, and the client's own cost
stays where the gRPC client's is: measured on this machine (one thread, back-to-back 1-token requests to
the tiny model), client CPU per request was 0.4-0.5 ms for the gRPC client, 0.4-0.6 ms for `http.client`
and 1.1-1.2 ms for `httpx2.Client` (the library under the openai client, which adds its pydantic models). A heavier client would charge the HTTP API for the
generator's own work on a machine the generator shares with the server.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import weakref

import grpc

from registry.names import parse_ref

from .run import INCOMPLETE_STREAM, LoadOptions, Sample, ServerInfo, http_base_url, parse_target
from .workload import RequestSpec

HTTP_CHAT = "/v1/chat/completions"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def open_transport(options: LoadOptions):
    """The transport `options.protocol` names, connected lazily (nothing is sent until `server_info`)."""
    return HttpTransport(options) if options.protocol == "http" else GrpcTransport(options)


class GrpcTransport:
    protocol = "grpc"
    hint = "is `reg serve` running on that address?"

    def __init__(self, options: LoadOptions):
        from server.client import LoradockClient

        self.options = options
        self.client = LoradockClient(options.target, timeout=options.timeout)

    def server_info(self, ready_timeout: float) -> ServerInfo:
        self.client.wait_ready(timeout=ready_timeout)
        stats = self.client.stats()
        return ServerInfo(sorted({a.name for a in self.client.list_adapters()}), stats)

    def failure(self, exc: Exception, ready_timeout: float) -> str:
        return exc.details() if isinstance(exc, grpc.RpcError) else f"no answer within {ready_timeout:g} s"

    def stats(self):
        """ServerStats now, or None when the server does not answer (with why, for the report)."""
        try:
            return self.client.stats(), None
        except grpc.RpcError as exc:
            return None, f"{exc.code().name}: {exc.details()}"

    def send(self, sample: Sample, spec: RequestSpec, start: float) -> None:
        o = self.options
        kwargs = dict(adapter=spec.adapter, messages=[{"role": "user", "content": spec.prompt}],
                      max_new_tokens=o.max_new_tokens, routing_key=spec.routing_key, timeout=o.timeout)
        try:
            if not o.stream:
                c = self.client.generate(**kwargs)
                sample.version, sample.variant, sample.finish_reason = c.adapter_version, c.variant, c.finish_reason
                sample.prompt_tokens, sample.completion_tokens = c.prompt_tokens, c.completion_tokens
                sample.ttft_ms, sample.server_ms = c.ttft_ms, c.total_ms
                return
            final = None
            for chunk in self.client.stream(**kwargs):
                if chunk.done:
                    final = chunk
                elif sample.ttft_ms is None and chunk.text:
                    sample.ttft_ms = (time.perf_counter() - start) * 1000
            if final is None:
                sample.code = INCOMPLETE_STREAM
                return
            sample.version, sample.variant, sample.finish_reason = final.adapter_version, final.variant, final.finish_reason
            sample.prompt_tokens, sample.completion_tokens = final.usage.prompt_tokens, final.usage.completion_tokens
            sample.server_ms = final.timing.total_ms
        except grpc.RpcError as exc:
            sample.code, sample.detail = exc.code().name, exc.details() or ""

    def close(self) -> None:
        self.client.close()


class KeepAlivePool:
    """One persistent HTTP/1.1 connection per calling thread (each generator client is a thread, as each holds
    one gRPC call at a time); a connection the server closed while idle is replaced and the request resent once."""

    def __init__(self, base_url: str, timeout: float):
        scheme, _, hostport = base_url.partition("://")
        self.host, self.port = parse_target(hostport)
        self.https, self.timeout = scheme == "https", timeout
        self._local = threading.local()
        self._all: weakref.WeakSet = weakref.WeakSet()  # a finished thread's connection closes with its thread-local
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=self.timeout)
        with self._lock:
            self._all.add(conn)
        self._local.conn = conn
        return conn

    def request(self, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
        """The response, headers read, body not yet: read it all (or `drop()`) before this thread's next request."""
        data = json.dumps(body).encode() if body is not None else None
        conn = getattr(self._local, "conn", None)
        for attempt in range(2):
            reused = conn is not None
            conn = conn or self._connect()
            try:
                conn.request(method, path, body=data, headers=JSON_HEADERS if data else {})
                return conn.getresponse()
            except ConnectionError:  # BrokenPipe, reset, RemoteDisconnected: an idle connection the server closed
                self.drop()
                if not reused or attempt:
                    raise
                conn = None
        raise AssertionError("unreachable")

    def drop(self) -> None:
        """Close this thread's connection (after a broken or half-read response)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in list(self._all):
                conn.close()
            self._all.clear()


class HttpTransport:
    protocol = "http"
    hint = "is `reg serve --http-port PORT` serving its HTTP API on that address?"

    def __init__(self, options: LoadOptions):
        self.options = options
        self.pool = KeepAlivePool(http_base_url(options.target), options.timeout)

    def _get_json(self, path: str) -> tuple[int, dict | str]:
        reply = self.pool.request("GET", path)
        text = reply.read().decode(errors="replace")
        try:
            return reply.status, json.loads(text)
        except ValueError:
            return reply.status, text

    def server_info(self, ready_timeout: float) -> ServerInfo:
        self.pool.timeout = ready_timeout
        try:
            status, data = self._get_json("/v1/models")
        finally:
            self.pool.drop()  # the next connection gets the per-request timeout
            self.pool.timeout = self.options.timeout
        if status != 200 or not isinstance(data, dict):
            raise ConnectionError(f"GET /v1/models answered {status}: {_error_message(data)}")
        names = set()
        for model in data.get("data", []):
            if model.get("parent"):  # adapters name their base as parent (as vLLM's do); the base itself has none
                try:
                    names.add(parse_ref(model["id"]).name)
                except Exception:  # noqa: BLE001 - an id that is no adapter ref (a path adapter) is not ours to mix
                    continue
        return ServerInfo(sorted(names), None)

    def failure(self, exc: Exception, ready_timeout: float) -> str:
        return f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} within {ready_timeout:g} s"

    def stats(self):
        """The HTTP API has no ServerStats (its numbers are in /metrics): (None, why) if /health does not answer 200."""
        try:
            status, _ = self._get_json("/health")
        except (OSError, http.client.HTTPException) as exc:
            self.pool.drop()
            return None, f"GET /health: {type(exc).__name__}: {exc}"
        return None, (None if status == 200 else f"GET /health answered {status}")

    def body(self, spec: RequestSpec) -> dict:
        body = {"model": spec.adapter, "messages": [{"role": "user", "content": spec.prompt}], "temperature": 0.0}
        if self.options.max_new_tokens:
            body["max_tokens"] = self.options.max_new_tokens
        if spec.routing_key:
            body["user"] = spec.routing_key
        if self.options.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    def send(self, sample: Sample, spec: RequestSpec, start: float) -> None:
        try:
            reply = self.pool.request("POST", HTTP_CHAT, self.body(spec))
            if reply.status != 200:
                sample.code, sample.detail = f"HTTP_{reply.status}", _error_message(reply.read().decode(errors="replace"))
                return
            _served_by(sample, reply)
            if not self.options.stream:
                data = json.loads(reply.read())
                _finish(sample, data)
                _timing(sample, data, server_ttft=True)
            elif self._read_events(sample, reply, start):
                reply.read()  # the end of the chunked body, so the connection is ready for the next request
            else:
                sample.code = INCOMPLETE_STREAM
                self.pool.drop()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.pool.drop()
            sample.code, sample.detail = f"HTTP_{type(exc).__name__}", str(exc)

    def _read_events(self, sample: Sample, reply, start: float) -> bool:
        """Read the SSE stream into `sample`; True when it ended with `data: [DONE]`."""
        while line := reply.readline():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            chunk = json.loads(payload)
            if "error" in chunk:
                error = chunk["error"] or {}
                sample.code = f"HTTP_STREAM_{error.get('code') or error.get('type') or 'error'}".upper()
                sample.detail = str(error.get("message", ""))
                continue  # [DONE] follows
            for choice in chunk.get("choices") or []:
                if sample.ttft_ms is None and (choice.get("delta") or {}).get("content"):
                    sample.ttft_ms = (time.perf_counter() - start) * 1000
            _finish(sample, chunk)
            _timing(sample, chunk, server_ttft=False)
        return False

    def close(self) -> None:
        self.pool.close()


def _served_by(sample: Sample, reply: http.client.HTTPResponse) -> None:
    sample.version = reply.getheader("x-loradock-version", "")
    sample.variant = reply.getheader("x-loradock-variant", "")


def _finish(sample: Sample, data: dict) -> None:
    """finish_reason and usage from a response or a stream chunk (fields a chunk lacks are left as they are)."""
    for choice in data.get("choices") or []:
        if choice.get("finish_reason"):
            sample.finish_reason = choice["finish_reason"]
    usage = data.get("usage")
    if usage:
        sample.prompt_tokens, sample.completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


def _timing(sample: Sample, data: dict, server_ttft: bool) -> None:
    """The server's own timing, where the body's `loradock` object carries it (as the gRPC Timing does)."""
    extra = data.get("loradock") or {}
    timing = extra.get("timing") or extra
    if timing.get("total_ms") is not None:
        sample.server_ms = float(timing["total_ms"])
    if server_ttft and timing.get("ttft_ms") is not None:
        sample.ttft_ms = float(timing["ttft_ms"])
    if not sample.version and extra.get("adapter_version"):
        sample.version, sample.variant = str(extra["adapter_version"]), str(extra.get("variant") or "")


def _error_message(body: str | dict) -> str:
    """The message of an OpenAI-shaped error body, else the body's first 300 characters."""
    try:
        return str((json.loads(body) if isinstance(body, str) else body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(body)[:300]
