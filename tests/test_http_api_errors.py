"""The HTTP API's refusals: each error class's status raises the openai exception it implies; auth; limits; drain;
a client that goes away frees its batch slot. Real servers on port 0, the real openai client, the tiny Llama."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import TINY_BASE
from forward_gate import ForwardGate, wait_until
from test_http_api import call, openai_client, start, stop

from server.auth import OPEN_ROUTES, ROLE_FOR_ROUTE
from server.tokens import ROLES, create_token


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir, other_base_dir):
    parts = start(tmp_path_factory.mktemp("http-errors"), tiny_base_dir, other_base_dir, max_batch_size=2, max_queue=2,
                  http_timeout_s=1.0)
    parts["client"] = openai_client(parts)
    yield parts
    stop(parts)


class HandleSpy:
    """Keeps the engine handles of the requests the server submits, to read how each one ended."""

    def __init__(self, engine, monkeypatch):
        self.handles = []
        submit = engine.submit
        monkeypatch.setattr(engine, "submit", lambda request: self.handles.append(submit(request)) or self.handles[-1])


def test_each_error_raises_the_openai_exception_its_status_implies(served):
    client, reg = served["client"], served["reg"]
    cases = [
        (dict(model="nope"), openai.NotFoundError, "NOT_FOUND"),
        (dict(model="a0:9"), openai.NotFoundError, "no version 9"),
        (dict(model="bad name!"), openai.BadRequestError, "INVALID_ARGUMENT"),
        (dict(model="a0", temperature=9), openai.BadRequestError, "temperature=9"),
        (dict(model="a0", max_tokens=5000), openai.BadRequestError, "max_tokens=5000"),
        (dict(model="a0", presence_penalty=0.5), openai.BadRequestError, "presence_penalty=0.5"),
        (dict(model="a0", frequency_penalty=1), openai.BadRequestError, "frequency_penalty=1"),
        (dict(model="a0", n=2), openai.BadRequestError, "n=2"),
        (dict(model="a0", logprobs=2), openai.BadRequestError, "logprobs=2"),
        (dict(model="a0", extra_body={"max_tokens": "many"}), openai.BadRequestError, "max_tokens='many'"),
        (dict(model="wide"), openai.UnprocessableEntityError, "was trained on base tiny-wide"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text) as caught:
            client.completions.create(prompt="hello", **kwargs)
        assert caught.value.body["type"] and caught.value.body["code"], kwargs
        assert "params." not in caught.value.body["message"], caught.value.body  # OpenAI's field names, not the proto's
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="a0", prompt="x", presence_penalty=0.5)
    assert caught.value.body["param"] == "presence_penalty"
    # corrupt stored weights: DATA_LOSS, said in the message of the 500
    weights = next(f for f in reg.resolve("a3:1").files if f.path == "adapter_model.safetensors")
    blob = reg.blobs.path(weights.sha256)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(openai.InternalServerError, match="DATA_LOSS") as caught:
        client.chat.completions.create(model="a3", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "IntegrityError"


def test_malformed_bodies_and_bodies_over_the_limit_are_refused(served):
    status, _, body = call(served, "POST", "/v1/completions", b'{"model": "a0", "prompt": ')
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
    status, _, body = call(served, "POST", "/v1/completions", b'["a0"]')
    assert status == 400 and "must be a JSON object" in json.loads(body)["error"]["message"]
    status, _, body = call(served, "POST", "/v1/completions", {"prompt": "hi"})
    assert status == 400 and json.loads(body)["error"]["param"] == "model"
    limit = served["server"].http.state.body_limit
    with pytest.raises(openai.APIStatusError, match="more than the limit") as caught:
        served["client"].completions.create(model="a0", prompt="x" * (limit + 1))
    assert caught.value.status_code == 413
    prompt_limit = served["service"].max_prompt_bytes
    with pytest.raises(openai.BadRequestError, match="--max-prompt-bytes"):
        served["client"].completions.create(model="a0", prompt="x" * (prompt_limit + 1))
    status, _, body = call(served, "GET", "/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"


def test_a_request_head_trickled_on_a_kept_alive_connection_is_cut_off(served):
    """--http-timeout (1 s here) bounds a request head however slowly it comes, on a reused connection too."""
    import time

    with socket.create_connection(("127.0.0.1", served["http_port"]), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # one whole request: the connection is kept alive
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for i in range(200):  # a header line every 0.2 s, for up to 40 s: far past the 1 s timeout
            time.sleep(0.2)
            try:
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                sock.setblocking(False)
                try:
                    closed = sock.recv(65536) == b""
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
    assert closed, "the server kept a connection whose request head never ended"


def test_a_client_that_sends_its_body_too_slowly_is_cut_off(served):
    with socket.create_connection(("127.0.0.1", served["http_port"]), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
        reply = b""
        while b"}}" not in reply and (chunk := sock.recv(65536)):  # the server's --http-timeout passes, then it answers
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 504") and "did not arrive within 1 s" in reply


def test_a_full_queue_is_429_with_retry_after(served):
    client, service = served["client"], served["service"]
    results: list = []

    def one(_):
        try:
            client.completions.create(model=TINY_BASE, prompt="hello", max_tokens=30)
            results.append("ok")
        except openai.RateLimitError as exc:
            results.append(exc.response.headers.get("retry-after"))

    with ForwardGate(service.engine.model) as gate, ThreadPoolExecutor(8) as pool:
        # arrivals are staged, so how many are refused does not depend on when the engine loop admits them:
        # one request is held in its prefill, two wait in the queue (it is full), and five are refused before any work
        pending = [pool.submit(one, 0)]
        wait_until(lambda: gate.waiting, what="the first request to reach the model")
        pending += [pool.submit(one, i) for i in (1, 2)]
        wait_until(lambda: service.engine.queue_depth == 2, what="two requests to wait in the queue")
        pending += [pool.submit(one, i) for i in range(3, 8)]
        wait_until(lambda: len(results) == 5, what="five answers while the model is held")
        assert results == ["1"] * 5 and gate.forwards == 0 and service.engine.queue_depth == 2
        gate.open()
        for future in pending:
            future.result()
    assert sorted(results) == ["1"] * 5 + ["ok"] * 3
    wait_until(lambda: service.engine.batch_size == 0 and service.engine.queue_depth == 0, what="the batch to empty")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_client_that_disconnects_frees_its_batch_slot(served, monkeypatch, stream):
    service = served["service"]
    wait_until(lambda: service.engine.batch_size == 0 and service.engine.queue_depth == 0, what="an idle engine")
    spy = HandleSpy(service.engine, monkeypatch)
    with ForwardGate(service.engine.model, allowed=3) as gate:  # prefill and two decode steps, then the model waits
        if stream:
            chunks = served["client"].completions.create(model="a1", prompt="hello", max_tokens=200, stream=True)
            next(iter(chunks))
            wait_until(lambda: gate.waiting, what="the request to be mid-decode")
            chunks.close()
        else:
            impatient = openai_client(served, timeout=0.5)
            with pytest.raises(openai.APITimeoutError):
                impatient.completions.create(model="a1", prompt="hello", max_tokens=200)
        wait_until(lambda: spy.handles and spy.handles[0].cancelled, what="the server to see the client go")
        assert gate.forwards <= 3  # the request could not have finished by itself
    result = spy.handles[0].result(timeout=60)
    assert result.finish_reason == "cancelled" and result.completion_tokens <= 4, result
    wait_until(lambda: service.engine.batch_size == 0 and service.engine.queue_depth == 0, what="the batch to empty")


def test_draining_turns_health_and_new_requests_to_503_while_in_flight_ones_finish(tmp_path, tiny_base_dir):
    from server.app import shutdown

    parts = start(tmp_path, tiny_base_dir)
    client, service = openai_client(parts), parts["service"]
    parts["grpc"].close()
    with ForwardGate(service.engine.model) as gate:
        with ThreadPoolExecutor(2) as pool:
            in_flight = pool.submit(client.completions.create, model="a0", prompt="hello", max_tokens=4)
            wait_until(lambda: gate.waiting, what="the request to reach the model")
            stopping = pool.submit(shutdown, parts["server"], service, 60)
            wait_until(lambda: call(parts, "GET", "/health")[0] == 503, what="the drain to begin")
            with pytest.raises(openai.InternalServerError, match="shutting down") as caught:
                client.completions.create(model="a0", prompt="hello", max_tokens=4)
            assert caught.value.status_code == 503 and caught.value.response.headers["retry-after"] == "1"
            gate.open()
            assert in_flight.result().choices[0].finish_reason in ("stop", "length")
            stopping.result()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    parts["reg"].close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, tiny_base_dir):
    tmp = tmp_path_factory.mktemp("http-auth")
    tokens_file = tmp / "tokens.yaml"
    tokens = {role: create_token(f"only-{role}", role, tokens_file) for role in ROLES}
    parts = start(tmp, tiny_base_dir, auth_tokens=str(tokens_file), default_max_new_tokens=2)
    parts["tokens"] = tokens
    yield parts
    stop(parts)


def test_the_role_table_covers_every_http_route(secured):
    routes = {f"{method} {r.path}" for r in secured["server"].http.app.routes for method in getattr(r, "methods", ())}
    assert routes == set(ROLE_FOR_ROUTE) | set(OPEN_ROUTES)
    assert set(ROLE_FOR_ROUTE.values()) <= set(ROLES)


def test_every_route_with_no_token_a_wrong_token_and_each_role(secured):
    requests = {  # a body per route that succeeds (or fails in one known way) for a caller with the right role
        "POST /v1/completions": ({"model": "a0", "prompt": "hi"}, 200),
        "POST /v1/chat/completions": ({"model": "a0", "messages": [{"role": "user", "content": "hi"}]}, 200),
        "POST /v1/feedback": ({"request_id": "unknown", "score": 1}, 404),
        "GET /v1/models": (None, 200),
        "GET /metrics": (None, 200),
        "POST /v1/load_lora_adapter": ({"lora_name": "a1:1"}, 200),
        "POST /v1/unload_lora_adapter": ({"lora_name": "a1:1"}, 200),
        "POST /v1/files": (None, 400),
        "GET /v1/files": (None, 200),
        "GET /v1/files/{file_id}": (None, 404),
        "GET /v1/files/{file_id}/content": (None, 404),
        "POST /v1/fine_tuning/jobs": ({"model": "tiny-llama", "training_file": "file-x"}, 404),
        "GET /v1/fine_tuning/jobs": (None, 200),
        "GET /v1/fine_tuning/jobs/{job_id}": (None, 400),
        "POST /v1/fine_tuning/jobs/{job_id}/cancel": (None, 400),
        "GET /v1/fine_tuning/jobs/{job_id}/events": (None, 400),
        "GET /v1/fine_tuning/jobs/{job_id}/checkpoints": (None, 400),
        "GET /health": (None, 200),
    }
    assert set(requests) == set(ROLE_FOR_ROUTE) | set(OPEN_ROUTES)
    callers = {"no token": None, "wrong token": "ldk_not-a-real-token", "empty bearer": "", **secured["tokens"]}
    got, want = {}, {}
    for route, (body, allowed) in requests.items():
        role = ROLE_FOR_ROUTE.get(route)
        for caller, token in callers.items():
            if role is None:
                want[route, caller] = allowed
            elif token is None or caller in ("wrong token", "empty bearer"):
                want[route, caller] = 401
            else:
                want[route, caller] = allowed if caller in (role, "admin") else 403
            method, path = route.split(" ")
            got[route, caller] = call(secured, method, path, body, token=token)[0]
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, wrong
    with pytest.raises(openai.AuthenticationError, match="invalid token"):
        openai_client(secured, token="ldk_wrong").models.list()
    with pytest.raises(openai.PermissionDeniedError, match="needs 'admin'"):
        openai_client(secured, token=secured["tokens"]["infer"]).post(
            "/load_lora_adapter", body={"lora_name": "a0"}, cast_to=object)
    assert openai_client(secured, token=secured["tokens"]["infer"]).completions.create(model="a0", prompt="hi").choices


def test_http_needs_the_same_listening_rules_as_grpc(tmp_path, tiny_base_dir):
    from registry import Registry
    from registry.errors import Conflict, InvalidInput
    from server.app import create_server
    from server.options import ServerOptions

    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    with pytest.raises(InvalidInput, match="--insecure-listen-all"):
        create_server(ServerOptions(base=TINY_BASE, quant="none", host="0.0.0.0", port=0, http_port=0), reg)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(Conflict, match="--http-port"):
            create_server(ServerOptions(base=TINY_BASE, quant="none", port=0, http_port=busy.getsockname()[1]), reg)
    with pytest.raises(InvalidInput, match="--http-port 70000"):
        create_server(ServerOptions(base=TINY_BASE, quant="none", port=0, http_port=70000), reg)
    reg.close()



def test_https_with_the_servers_certificate_options(tmp_path, tiny_base_dir):
    """--tls-cert/--tls-key serve HTTPS on the HTTP port too: a client trusting the certificate completes, plain
    HTTP to that port gets no answer."""
    import ssl
    import urllib.request

    from remote_helpers import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    parts = start(tmp_path, tiny_base_dir, tls_cert=str(cert), tls_key=str(key))
    try:
        url = f"https://127.0.0.1:{parts['http_port']}"
        request = urllib.request.Request(url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": "a0", "prompt": "hello", "max_tokens": 2}).encode())
        with urllib.request.urlopen(request, timeout=60, context=ssl.create_default_context(cafile=str(cert))) as reply:
            body = json.loads(reply.read())
        assert reply.status == 200 and body["loradock"]["adapter_version"] == "a0:1" and body["choices"][0]["text"]
        with pytest.raises(OSError):  # plaintext to the TLS port: the handshake fails, no answer
            urllib.request.urlopen(f"http://127.0.0.1:{parts['http_port']}/health", timeout=30)
    finally:
        stop(parts)
