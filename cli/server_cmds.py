"""`reg serve` and the commands that talk to a running server: `reg generate`, `reg feedback`, `reg stats`.

The server itself is `server/app.py`; the client commands call it through `server.client.LoradockClient`.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Annotated, Optional

import typer

from registry import Registry
from registry.errors import InvalidInput
from server.options import ServerOptions

from . import errors
from .common import _REMOTE, Home, Json, Target, _registry, app, with_options_of
from .output import console, err_console, human_size, print_json, table


@contextmanager
def _client(target: str, timeout: float):
    """A client with the global --token/--tls-ca; a gRPC error becomes one line and an inference exit code."""
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
@with_options_of(ServerOptions)
def serve(
    registry_only: Annotated[bool, typer.Option("--registry-only", help="Serve only the Registry service of --home (no model is loaded).")] = False,
    registry_url: Annotated[Optional[str], typer.Option("--registry", show_default=False, help="Resolve and pull adapters from this remote registry (grpc://HOST:PORT) instead of --home; the base stays local.")] = None,
    home: Home = None,
    **settings,
) -> None:
    """Serve completions over gRPC from one base model, with adapters per request from the registry.

    The server also serves the Registry service (remote push/pull) of its home; --registry-only serves only that.
    """
    from server.app import serve_forever, serve_registry_forever

    options = ServerOptions(**settings)
    if registry_url:
        _REMOTE["url"] = registry_url
    if registry_only:
        if _REMOTE.get("url"):
            raise typer.BadParameter("--registry-only serves the registry of --home; it cannot serve a remote one")
        raise typer.Exit(serve_registry_forever(options, Registry(home).home, job_hooks=_job_hooks()))
    raise typer.Exit(serve_forever(options, _registry(home), job_hooks=_job_hooks()))


@app.command()
def portal(
    host: Annotated[str, typer.Option(help="Address to listen on (without --auth-tokens: localhost only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (0: any free one; the log line names it).")] = 8080,
    auth_tokens: Annotated[Optional[str], typer.Option(help="Tokens file: who may sign in, with which roles.")] = None,
    tls_cert: Annotated[Optional[str], typer.Option(help="PEM certificate chain to serve HTTPS with (needs --tls-key).")] = None,
    tls_key: Annotated[Optional[str], typer.Option(help="PEM private key for --tls-cert.")] = None,
    insecure_listen_all: Annotated[bool, typer.Option(help="Allow a non-localhost --host without --auth-tokens.")] = False,
    home: Home = None,
) -> None:
    """Serve the web portal alone (a machine with no model): the registry of --home, or the remote one --registry
    names (read and changed with --token). Open http://HOST:PORT/ui."""
    from server.app import serve_portal_forever

    options = ServerOptions(host=host, http_port=port, auth_tokens=auth_tokens, tls_cert=tls_cert, tls_key=tls_key,
                            insecure_listen_all=insecure_listen_all)
    raise typer.Exit(serve_portal_forever(options, _registry(home), job_hooks=_job_hooks()))


def _job_hooks():
    """The trainer's job checks, lent to the server so that it takes fine-tuning jobs (it imports no trainer)."""
    from server.jobs_service import JobHooks
    from trainer.config import form_fields
    from trainer.heldout import held_out_probes
    from trainer.jobs.submit import check_dataset, plan_submission, preview_dataset, submit

    return JobHooks(submit=submit, check_dataset=check_dataset, config_fields=form_fields, preview_dataset=preview_dataset,
                    plan=plan_submission, export_probes=held_out_probes)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as a user chat message unless --raw).")],
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="NAME, NAME:N or NAME@ALIAS (default: the bare base).")] = "",
    target: Target = "localhost:50051",
    stream: Annotated[bool, typer.Option(help="Print text as it is decoded.")] = False,
    key: Annotated[str, typer.Option(help="Routing key for sticky rollouts (e.g. a user id).")] = "",
    raw: Annotated[bool, typer.Option(help="Send the prompt as raw text, without the chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate (0 = server default).")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (0 = off).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely tokens (0 = off).")] = 0,
    seed: Annotated[int, typer.Option(help="Sampling seed (0 = unseeded).")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    merge: Annotated[Optional[list[str]], typer.Option(help="Serve a weighted merge instead: REF=WEIGHT (repeatable).")] = None,
    merge_method: Annotated[str, typer.Option(help="Merge method: cat, linear, svd, ties...")] = "",
    merge_density: Annotated[float, typer.Option(help="ties, dare_*, magnitude_prune: fraction of values kept, 0 < d <= 1.")] = 0.0,
    merge_majority_sign_method: Annotated[str, typer.Option(help="ties, dare_ties: total or frequency (default total).")] = "",
    timeout: Timeout = 120.0,
    json_out: Json = False,
) -> None:
    """Ask a running server for a completion; prints the text and which version served it."""
    merges = []
    for item in merge or []:
        ref, _, weight = item.rpartition("=")
        try:
            merges.append((ref, float(weight)))
        except ValueError:
            raise typer.BadParameter(f"--merge {item!r}: expected REF=WEIGHT") from None
    kwargs = dict(adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                  stop=stop or [], routing_key=key, merge=merges, merge_method=merge_method,
                  merge_density=merge_density, merge_majority_sign_method=merge_majority_sign_method)
    if raw:
        kwargs["prompt"] = prompt
    else:
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    with _client(target, timeout) as client:
        if stream and not json_out:
            final = None
            for chunk in client.stream(**kwargs):
                if chunk.done:
                    final = chunk
                else:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            sys.stdout.write("\n")
            served = final.adapter_version or "base"
            err_console.print(f"[{served}{' / ' + final.variant if final.variant else ''}] {final.finish_reason}, "
                              f"{final.usage.completion_tokens} tokens, {final.timing.total_ms:.0f} ms")
            return
        result = client.generate(**kwargs)
    if json_out:
        print_json(result.__dict__)
        return
    console.print(result.text)
    served = result.adapter_version or "base"
    err_console.print(f"[{served}{' / ' + result.variant if result.variant else ''}] {result.finish_reason}, "
                      f"{result.completion_tokens} tokens, {result.total_ms:.0f} ms")


@app.command()
def feedback(
    request_id: Annotated[str, typer.Argument(
        metavar="REQUEST_ID", help="The request's id (`reg generate --json` prints it).")],
    score: Annotated[Optional[float], typer.Option(help="Numeric outcome, e.g. 1 (good) or -1 (bad); finite, within +-1e6.")] = None,
    label: Annotated[str, typer.Option(help="A label such as good or bad (letters, digits, _.:-).")] = "",
    correction: Annotated[str, typer.Option(
        help="The response it should have given: kept (redacted) for curation while the adapter's capture is on.")] = "",
    target: Target = "localhost:50051",
    timeout: Timeout = 30.0,
) -> None:
    """Attach an outcome to a recent request; `reg rollout report` compares it per arm."""
    if score is None and not label:
        raise InvalidInput("give --score X (a number) or --label L (e.g. good), or both")
    with _client(target, timeout) as client:
        client.feedback(request_id, score=0.0 if score is None else score, label=label, correction=correction)
    what = " ".join(part for part in (f"score {score:g}" if score is not None else "", f"label {label}" if label else "") if part)
    console.print(f"recorded feedback for {request_id}: {what}")


@app.command()
def stats(target: Target = "localhost:50051", timeout: Timeout = 30.0, json_out: Json = False) -> None:
    """A running server's counters: requests (all, and in the last minute), tokens and latency per served version,
    adapter cache, batch and queue."""
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
    t = table("VERSION", "REQUESTS", "REQ/MIN", "ERRORS", "PROMPT TOK", "COMPL TOK", "P50 MS", "P95 MS", "P99 MS",
              "TTFT P50")
    for a in reply.adapters:
        t.add_row(a.version, str(a.requests), str(a.requests_last_minute), str(a.errors), str(a.prompt_tokens),
                  str(a.completion_tokens), f"{a.latency.p50_ms:.0f}", f"{a.latency.p95_ms:.0f}", f"{a.latency.p99_ms:.0f}",
                  f"{a.ttft.p50_ms:.0f}")
    console.print(t)
