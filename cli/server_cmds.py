"""`reg feedback` and `reg stats`: the Inference service's Feedback and ServerStats calls from the shell.

Registered on `app` when cli.main imports this module (after `Target` exists).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from registry.errors import InvalidInput

from . import errors
from .common import _REMOTE, Json, Target, app
from .output import console, err_console, human_size, print_json, table


@contextmanager
def _client(target: str, timeout: float):
    """A client with the global --token/--tls-ca; a gRPC error becomes one line and `reg generate`'s exit codes."""
    import grpc

    from server.client import LoradockClient

    client = LoradockClient(target, timeout=timeout, token=_REMOTE.get("token"), tls_ca=_REMOTE.get("tls_ca"))
    try:
        yield client
    except grpc.RpcError as exc:
        err_console.print(f"error: {exc.code().name}: {exc.details()}")
        raise typer.Exit(errors.exit_code_for_status(exc.code().name)) from None
    finally:
        client.close()


Timeout = Annotated[float, typer.Option(help="Deadline in seconds.")]


@app.command()
def feedback(
    request_id: Annotated[str, typer.Argument(
        metavar="REQUEST_ID", help="The request's id (`reg generate --json` prints it).")],
    score: Annotated[Optional[float], typer.Option(help="Numeric outcome, e.g. 1 (good) or -1 (bad); finite, within +-1e6.")] = None,
    label: Annotated[str, typer.Option(help="A label such as good or bad (letters, digits, _.:-).")] = "",
    target: Target = "localhost:50051",
    timeout: Timeout = 30.0,
) -> None:
    """Attach an outcome to a recent request; `reg rollout report` compares it per arm."""
    if score is None and not label:
        raise InvalidInput("give --score X (a number) or --label L (e.g. good), or both")
    with _client(target, timeout) as client:
        client.feedback(request_id, score=0.0 if score is None else score, label=label)
    what = " ".join(part for part in (f"score {score:g}" if score is not None else "", f"label {label}" if label else "") if part)
    console.print(f"recorded feedback for {request_id}: {what}")


@app.command()
def stats(target: Target = "localhost:50051", timeout: Timeout = 30.0, json_out: Json = False) -> None:
    """A running server's counters: requests, tokens and latency per served version, adapter cache, batch and queue."""
    from server.client import message_dict

    with _client(target, timeout) as client:
        reply = client.stats()
    if json_out:
        print_json(message_dict(reply))
        return
    cache = reply.cache
    console.print(f"{reply.base} ({reply.quantization}), up {reply.uptime_s:.0f} s: {reply.total_requests} requests, "
                  f"{reply.decode_tokens_per_s:.1f} tokens/s; batch {reply.batch_size}/{reply.max_batch_size}, "
                  f"queue {reply.queue_depth}/{reply.max_queue}")
    console.print(f"adapter cache: {cache.loaded}/{cache.max_adapters} loaded, {human_size(cache.memory_bytes)} of "
                  f"{human_size(cache.max_memory_bytes)}; {cache.hits} hits, {cache.misses} misses, {cache.evictions} evictions; "
                  f"slots {human_size(cache.slot_memory_bytes)}, gathered {human_size(cache.gathered_memory_bytes)}")
    if not reply.adapters:
        console.print("no requests served yet")
        return
    t = table("VERSION", "REQUESTS", "ERRORS", "PROMPT TOK", "COMPL TOK", "P50 MS", "P95 MS", "P99 MS", "TTFT P50")
    for a in reply.adapters:
        t.add_row(a.version, str(a.requests), str(a.errors), str(a.prompt_tokens), str(a.completion_tokens),
                  f"{a.latency.p50_ms:.0f}", f"{a.latency.p95_ms:.0f}", f"{a.latency.p99_ms:.0f}", f"{a.ttft.p50_ms:.0f}")
    console.print(t)
