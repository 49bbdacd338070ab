"""The server's Prometheus metrics (`server/metrics.py`): a real server (gRPC and HTTP on port 0), requests from
the real gRPC and openai clients, GET /metrics parsed with prometheus_client's own parser, and every number
checked against ServerStats."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

import grpc
import openai
import pytest
from conftest import TINY_BASE, make_adapter_dir
from forward_gate import ForwardGate, wait_until
from prometheus_client.parser import text_string_to_metric_families

from registry import Registry
from registry.rollouts import Arm
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.engines import EngineResult
from server.metrics import (
    KV_CACHE_USAGE_METRIC,
    LORA_INFO_METRIC,
    MAX_ADAPTERS_LABEL,
    MAX_SCRAPERS,
    QUEUED_REQUESTS_METRIC,
    RUNNING_ADAPTERS_LABEL,
    WAITING_ADAPTERS_LABEL,
)
from server.options import ServerOptions
from server.router import RolloutRouter
from server.tokens import create_token

OPTIONS = dict(base=TINY_BASE, quant="none", port=0, max_batch_size=8, max_adapters=2, max_queue=16,
               default_max_new_tokens=3)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir, other_base_dir):
    """Adapters a0..a2 and `ab` (versions 1, 2) on the tiny base, `wide` on another base; 2 adapter slots."""
    home, work = tmp_path_factory.mktemp("metrics-home"), tmp_path_factory.mktemp("metrics-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.add_base(str(other_base_dir), "tiny-wide")
    for i in range(3):
        reg.push(make_adapter_dir(tiny_base_dir, work / f"a{i}", "lora", seed=20 + i), f"a{i}")
    for seed in (31, 32):
        reg.push(make_adapter_dir(tiny_base_dir, work / f"ab{seed}", "lora", seed=seed), "ab")
    reg.push(make_adapter_dir(other_base_dir, work / "wide", "lora", seed=1), "wide")
    server, port, service = create_server(ServerOptions(**OPTIONS, http_port=0), reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    http = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="no-auth", max_retries=0, timeout=60)
    yield {"reg": reg, "service": service, "client": client, "http": http, "url": f"http://127.0.0.1:{server.http_port}"}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def scrape(service, url: str | None = None) -> list:
    """Every sample of one scrape (GET {url}/metrics, or the service's exposition where it serves no HTTP),
    through prometheus_client's parser, so the text is valid exposition format."""
    if url is None:
        body, content_type = service.metrics.exposition()
    else:
        with urllib.request.urlopen(url + "/metrics", timeout=60) as reply:
            body, content_type = reply.read(), reply.headers["Content-Type"]
    assert content_type.startswith("text/plain; version=0.0.4")
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def test_openmetrics_when_the_scraper_asks_for_it(served):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    body, content_type = served["service"].metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in parse_openmetrics(body.decode())}
    assert {"loradock_requests", "loradock_request_duration_seconds", "loradock_adapter_slots_used"} <= names


def total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def by_label(samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        if s.name == name:
            out[s.labels[label]] = out.get(s.labels[label], 0) + s.value
    return out


def ask(client, adapter: str = "", key: str = ""):
    return client.generate("hello world", adapter=adapter, routing_key=key, max_new_tokens=3)


def test_counters_histograms_and_gauges_agree_with_server_stats(served):
    client, service, http, url = served["client"], served["service"], served["http"], served["url"]
    before = scrape(service, url)
    for adapter, times in (("a0", 3), ("a1", 2), ("", 1), ("a2", 2), ("a0", 1)):  # 2 slots: a2, then a0, evict
        for _ in range(times):
            ask(client, adapter)
    for adapter in ("nope", "wide"):  # unknown (never resolved), and an adapter for another base
        with pytest.raises(grpc.RpcError):
            ask(client, adapter)
    http.completions.create(model="a1", prompt="hello world", max_tokens=3)
    chunks = list(http.completions.create(model="a1", prompt="hello world", max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        http.completions.create(model="nope", prompt="hello world", max_tokens=3)

    samples, stats = scrape(service, url), service.server_stats()
    new = lambda name, **labels: total(samples, name, **labels) - total(before, name, **labels)  # noqa: E731
    assert new("loradock_requests_total", protocol="grpc", outcome="ok", version="a0:1") == 4
    assert new("loradock_requests_total", protocol="http", outcome="ok", version="a1:1") == 2
    assert new("loradock_requests_total", protocol="grpc", outcome="ok", version="base") == 1
    assert new("loradock_requests_total", protocol="grpc", version="unresolved", outcome="not_found") == 1
    assert new("loradock_requests_total", protocol="http", version="unresolved", outcome="not_found") == 1
    assert new("loradock_requests_total", version="wide:1", outcome="failed_precondition") == 1
    assert new("loradock_requests_total") == 14
    assert new("loradock_requests_total", protocol="http") == 3
    assert by_label(samples, "loradock_requests_total", "version") == {a.version: a.requests for a in stats.adapters}
    errors = {a.version: a.errors for a in stats.adapters}
    failed = {s.labels["version"]: 0.0 for s in samples if s.name == "loradock_requests_total"}
    for s in samples:
        if s.name == "loradock_requests_total" and s.labels["outcome"] not in ("ok", "cancelled"):
            failed[s.labels["version"]] += s.value
    assert failed == errors
    assert by_label(samples, "loradock_prompt_tokens_total", "version") == {a.version: a.prompt_tokens for a in stats.adapters}
    assert by_label(samples, "loradock_completion_tokens_total", "version") == {
        a.version: a.completion_tokens for a in stats.adapters}
    assert total(samples, "loradock_completion_tokens_total", version="a0:1") >= 4  # tokens were really counted

    succeeded = sum(a.requests - a.errors for a in stats.adapters)
    for histogram in ("loradock_request_duration_seconds", "loradock_time_to_first_token_seconds",
                      "loradock_queue_wait_seconds"):
        assert total(samples, f"{histogram}_count") == succeeded, histogram
        assert total(samples, f"{histogram}_bucket", le="+Inf") == succeeded, histogram
        assert new(f"{histogram}_count", protocol="http") == 2, histogram
    assert total(samples, "loradock_request_duration_seconds_sum") > 0

    cache = stats.cache
    assert total(samples, "loradock_adapter_cache_hits_total") == cache.hits
    assert total(samples, "loradock_adapter_cache_misses_total") == cache.misses
    assert total(samples, "loradock_adapter_evictions_total") == cache.evictions
    assert new("loradock_adapter_evictions_total") >= 2  # a0, a1, a2, a0 again and a1 again through 2 slots
    assert total(samples, "loradock_adapter_loads_total") == cache.misses == service.cache.loads
    assert total(samples, "loradock_adapter_load_seconds_count") == service.cache.loads
    assert total(samples, "loradock_adapter_load_failures_total") == 0
    assert total(samples, "loradock_adapter_slots_used") == cache.loaded == 2
    assert total(samples, "loradock_adapter_slots") == cache.max_adapters == 2
    assert total(samples, "loradock_adapter_cache_bytes") == cache.memory_bytes > 0
    assert total(samples, "loradock_adapter_cache_max_bytes") == cache.max_memory_bytes
    assert total(samples, "loradock_adapter_slot_bytes") == cache.slot_memory_bytes > 0
    assert total(samples, "loradock_gathered_adapter_bytes") == cache.gathered_memory_bytes
    for gauge, value in (("loradock_running_requests", 0), ("loradock_waiting_requests", 0), ("loradock_batch_size", 0),
                         ("loradock_batch_size_max", stats.max_batch_size), ("loradock_queue_max", stats.max_queue)):
        assert total(samples, gauge) == value, gauge
    info = next(s for s in samples if s.name == "loradock_server_info")
    assert info.labels == {"base": stats.base, "quantization": stats.quantization} and info.value == 1


def test_the_prefix_cache_counts_the_prompt_tokens_it_found(served):
    client, service, url = served["client"], served["service"], served["url"]
    prompt = "a prompt asked twice, word for word, whose second prefill is one token"
    before = scrape(service, url)
    first = client.generate(prompt, max_new_tokens=2)
    second = client.generate(prompt, max_new_tokens=2)
    samples = scrape(service, url)
    new = lambda name: total(samples, name) - total(before, name)  # noqa: E731
    tokens = first.prompt_tokens
    assert second.text == first.text and tokens > 2
    assert new("loradock_prefix_cache_query_tokens_total") == 2 * tokens
    assert new("loradock_prefix_cache_hit_tokens_total") == tokens - 1  # all of the repeat but its last token
    assert total(samples, "loradock_prefix_cache_bytes") > 0


def test_running_and_waiting_gauges_while_requests_are_held(tmp_path, tiny_base_dir):
    """One batch row: with the model held after one prefill, one request runs and two wait (gauges and ServerStats)."""
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    server, port, service = create_server(ServerOptions(**{**OPTIONS, "max_batch_size": 1}), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=120) as client, ForwardGate(service.engine.model, allowed=1) as gate:
            threads = [threading.Thread(target=ask, args=(client,)) for _ in range(3)]
            for t in threads:
                t.start()
            wait_until(lambda: gate.waiting and (service.engine.batch_size, service.engine.queue_depth) == (1, 2),
                       what="one request past its prefill and held, two waiting")
            samples, stats = scrape(service), service.server_stats()
            assert (stats.batch_size, stats.queue_depth) == (1, 2)
            assert total(samples, "loradock_running_requests") == total(samples, "loradock_batch_size") == 1
            assert total(samples, "loradock_waiting_requests") == 2
            assert total(samples, "loradock_gathered_adapter_bytes") == stats.cache.gathered_memory_bytes
            gate.open()
            for t in threads:
                t.join(timeout=120)
        samples = scrape(service)
        assert total(samples, "loradock_requests_total", version="base", outcome="ok") == 3
        assert total(samples, "loradock_running_requests") == total(samples, "loradock_waiting_requests") == 0
    finally:
        shutdown(server, service, 0)
        reg.close()


def test_requests_count_by_rollout_arm(served):
    """Routing keys over gRPC (`routing_key`) and HTTP (`user`): each request counts under the arm it was routed to."""
    reg, service, client, url = served["reg"], served["service"], served["client"], served["url"]
    revision = reg.rollouts.set("ab", [Arm(1, 50), Arm(2, 50)], sticky=True)
    wait_until(lambda: (c := service.router.current("ab")) is not None and c.revision == revision.revision,
               what="the server to route ab by the new revision")
    router = RolloutRouter()
    router.load(reg.rollouts.all_current())
    keys = [f"user-{i}" for i in range(16)]
    want: dict[tuple[str, str, str], int] = {}
    for i, key in enumerate(keys):
        choice = router.pick_arm("ab", key)
        label = (f"ab:{choice.version}", choice.arm, "http" if i % 2 else "grpc")
        want[label] = want.get(label, 0) + 1
    assert {arm for _, arm, _ in want} == {"A", "B"}  # both arms are exercised
    before = scrape(service, url)
    for i, key in enumerate(keys):
        if i % 2:
            served["http"].completions.create(model="ab", prompt="hello world", max_tokens=3, user=key)
        else:
            ask(client, "ab", key)
    ask(client, "ab:1")  # an exact ref bypasses the rollout: no arm
    samples = scrape(service, url)
    for (version, arm, protocol), n in want.items():
        labels = dict(version=version, variant=arm, protocol=protocol)
        got = total(samples, "loradock_requests_total", **labels) - total(before, "loradock_requests_total", **labels)
        assert got == n, labels
    assert total(samples, "loradock_requests_total", version="ab:1", variant="") == 1


def test_each_server_has_its_own_registry(served, tmp_path, tiny_base_dir):
    """A second server in the same process registers the same metric names without clashing, and counts its own."""
    reg = Registry(tmp_path / "home")
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    first = total(scrape(served["service"]), "loradock_requests_total")
    server, port, service = create_server(ServerOptions(**OPTIONS), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=60) as client:
            ask(client)
        assert total(scrape(service), "loradock_requests_total") == 1
        assert total(scrape(served["service"]), "loradock_requests_total") == first  # untouched by the second one
    finally:
        shutdown(server, service, 0)
        reg.close()


def test_bookkeeping_failures_are_logged_not_raised(served, caplog):
    """A result metrics cannot read, and a cache listener that raises: logged, and the request path goes on."""
    service = served["service"]
    broken = EngineResult("req-x", "", "stop", 1, 1, queue_ms=None, ttft_ms=None, total_ms=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="server.metrics"):
        service.metrics.observe_finished(broken, "grpc")
    assert "req-x" in caplog.text

    class Raising:
        def adapter_loaded(self, key: str, seconds: float) -> None:
            raise RuntimeError("listener broke")

    listener = Raising()
    service.cache.add_listener(listener)
    try:
        with caplog.at_level(logging.ERROR, logger="server.cache"):
            service.unload_adapter("a2:1")
            assert ask(served["client"], "a2").adapter_version == "a2:1"  # loaded, served despite the listener
        assert "listener broke" in caplog.text
    finally:
        service.cache.remove_listener(listener)


# --- what the Gateway API inference extension's endpoint picker reads (deploy/gateway/) ----------------------------


def lora_info(samples) -> dict:
    """The one `loradock_lora_requests_info` series, as the picker reads it: adapter lists, the slots, its value."""
    [series] = [s for s in samples if s.name == LORA_INFO_METRIC]
    labels = series.labels

    def split(value: str) -> list[str]:  # as the picker splits them
        return value.split(",") if value else []

    return {"running": split(labels[RUNNING_ADAPTERS_LABEL]), "waiting": split(labels[WAITING_ADAPTERS_LABEL]),
            "max": int(labels[MAX_ADAPTERS_LABEL]), "value": series.value}


def test_lora_info_names_adapters_in_use_as_requests_asked_for_them(served, tiny_base_dir):
    """One batch row, two adapter slots, the model held: `a0` runs, `ab:2` waits in the queue with its slot taken,
    and `a1` waits for a slot to free up. The picker sees the first two running (both are in a slot, so a request
    for either is served without a load), `a1` waiting, --max-adapters as max_lora, and the batch full."""
    reg = Registry(served["reg"].home)
    server, port, service = create_server(ServerOptions(**{**OPTIONS, "max_batch_size": 1}), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=120) as client:
            for adapter in ("a0", "ab:2"):  # in their slots first: a load waits for the held forward pass's lock
                ask(client, adapter)
        idle = lora_info(scrape(service))
        assert (idle["running"], idle["waiting"], idle["max"]) == ([], [], OPTIONS["max_adapters"])
        with LoradockClient(f"127.0.0.1:{port}", timeout=120) as client, ForwardGate(service.engine.model, allowed=1) as gate:
            threads = [threading.Thread(target=ask, args=(client, adapter)) for adapter in ("a0", "ab:2", "a1")]
            for t in threads:
                t.start()
                if t is threads[0]:
                    wait_until(lambda: gate.waiting, what="a0 past its prefill and held")
            wait_until(lambda: service.engine.queue_depth == 1 and lora_info(scrape(service))["waiting"] == ["a1"],
                       what="ab:2 queued and a1 waiting for a slot")
            before = time.time()
            samples = scrape(service)
            info = lora_info(samples)
            assert (info["running"], info["waiting"], info["max"]) == (["a0", "ab:2"], ["a1"], OPTIONS["max_adapters"])
            assert info["value"] >= before - 1  # the time of the scrape: the picker takes the newest series
            assert total(samples, KV_CACHE_USAGE_METRIC) == 1.0  # the one row is in use
            assert total(samples, QUEUED_REQUESTS_METRIC) == 1
            gate.open()
            for t in threads:
                t.join(timeout=120)
        samples = scrape(service)
        assert (lora_info(samples)["running"], lora_info(samples)["waiting"]) == ([], [])
        assert total(samples, KV_CACHE_USAGE_METRIC) == 0.0
        assert total(samples, "loradock_requests_total", outcome="ok") == 5
    finally:
        shutdown(server, service, 0)
        reg.close()


def test_a_bare_name_and_an_alias_are_named_as_sent(served, tiny_base_dir):
    """The picker matches the request's `model` text, so a held version is listed under every name that resolved to
    it: `a0` and `a0@live` as sent, and `a0:1`, the exact ref that loaded it (a request for any of them is served
    without a load). Once no request holds it, none is listed."""
    reg = Registry(served["reg"].home)
    reg.set_alias("a0", "live", 1)
    server, port, service = create_server(ServerOptions(**{**OPTIONS, "max_batch_size": 2}), reg)
    try:
        with LoradockClient(f"127.0.0.1:{port}", timeout=120) as client:
            ask(client, "a0:1")  # in its slot first: a load waits for the held forward pass's lock
            assert lora_info(scrape(service))["running"] == []
            with ForwardGate(service.engine.model) as gate:
                threads = [threading.Thread(target=ask, args=(client, adapter)) for adapter in ("a0", "a0@live")]
                for t in threads:
                    t.start()
                wait_until(lambda: lora_info(scrape(service))["running"] == ["a0", "a0:1", "a0@live"],
                           what="both requests holding a0:1")
                assert gate.waiting and lora_info(scrape(service))["waiting"] == []
            for t in threads:
                t.join(timeout=120)
        assert lora_info(scrape(service))["running"] == []
    finally:
        shutdown(server, service, 0)
        reg.remove_alias("a0", "live")
        reg.close()


@pytest.fixture(scope="module")
def guarded(served, tmp_path_factory):
    """A server with tokens over the `served` registry: the HTTP API on one port, /metrics alone on another."""
    tmp = tmp_path_factory.mktemp("metrics-port")
    tokens_file = tmp / "tokens.yaml"
    token = create_token("app", "infer", tokens_file)
    reg = Registry(served["reg"].home)
    server, port, service = create_server(
        ServerOptions(**OPTIONS, http_port=0, metrics_port=0, auth_tokens=str(tokens_file)), reg)
    yield {"server": server, "service": service, "port": port, "token": token,
           "metrics": f"http://127.0.0.1:{server.metrics_port}", "http": f"http://127.0.0.1:{server.http_port}"}
    shutdown(server, service, 0)
    reg.close()


def http_status(url: str, method: str = "GET", token: str | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_metrics_port_serves_metrics_alone_and_asks_no_token(guarded):
    with LoradockClient(f"127.0.0.1:{guarded['port']}", timeout=60, token=guarded["token"]) as client:
        ask(client, "a0")
    open_scrape = scrape(guarded["service"], guarded["metrics"])  # no token sent
    assert total(open_scrape, "loradock_requests_total", version="a0:1", outcome="ok") >= 1
    assert {QUEUED_REQUESTS_METRIC, KV_CACHE_USAGE_METRIC, LORA_INFO_METRIC} <= {s.name for s in open_scrape}
    assert http_status(guarded["http"] + "/metrics") == 401  # the API port's /metrics still wants its token
    assert http_status(guarded["http"] + "/metrics", token=guarded["token"]) == 200
    for path in ("/v1/models", "/health", "/metrics/../v1/models", "/"):
        assert http_status(guarded["metrics"] + path) == 404, path
    assert http_status(guarded["metrics"] + "/v1/completions", method="POST") == 501
    assert http_status(guarded["metrics"] + "/metrics?name[]=loradock_waiting_requests") == 200


def test_the_metrics_port_closes_connections_beyond_its_limit(guarded):
    """MAX_SCRAPERS idle connections hold every slot: one more is closed at once; once they go, scrapes work again."""
    address = ("127.0.0.1", guarded["server"].metrics_port)
    idle = [socket.create_connection(address, timeout=60) for _ in range(MAX_SCRAPERS)]
    try:
        wait_until(lambda: guarded["server"].metrics_listener._server._slots._value == 0,
                   what="every connection slot taken by an idle connection")
        with socket.create_connection(address, timeout=60) as extra:
            extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert extra.recv(1) == b""  # closed without an answer
    finally:
        for connection in idle:
            connection.close()
    # Each slot comes back when its handler thread sees its connection close; until then a scrape is refused too.
    wait_until(lambda: guarded["server"].metrics_listener._server._slots._value == MAX_SCRAPERS,
               what="every connection slot free once the idle connections closed")
    assert http_status(guarded["metrics"] + "/metrics") == 200


def test_the_metrics_port_speaks_tls_with_the_servers_certificate(served, tmp_path):
    from remote_helpers import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    reg = Registry(served["reg"].home)
    server, _, service = create_server(ServerOptions(**OPTIONS, metrics_port=0, tls_cert=str(cert), tls_key=str(key)), reg)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://localhost:{server.metrics_port}/metrics", context=context, timeout=60) as r:
            assert r.status == 200 and b"loradock_lora_requests_info" in r.read()
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://localhost:{server.metrics_port}/metrics", timeout=60)
    finally:
        shutdown(server, service, 0)
        reg.close()


@pytest.mark.parametrize("ports,message", [
    ({"port": 50051, "metrics_port": 50051}, "--metrics-port 50051: the same as --port"),
    ({"port": 0, "http_port": 8000, "metrics_port": 8000}, "--metrics-port 8000: the same as --http-port"),
    ({"port": 0, "metrics_port": 70000}, "--metrics-port 70000: must be between 0 and 65535"),
])
def test_a_metrics_port_that_clashes_is_refused_in_one_line(ports, message):
    from server.errors import BadRequest

    with pytest.raises(BadRequest, match=re.escape(message)):
        ServerOptions(**ports).validate_listen()


def test_a_busy_metrics_port_fails_before_the_model_loads(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        from registry.errors import Conflict

        with pytest.raises(Conflict, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}.*--metrics-port"):
            create_server(ServerOptions(**{**OPTIONS, "base": "no-such-base"}, metrics_port=taken.getsockname()[1]),
                          served["reg"])
