"""The server's Prometheus metrics (`server/metrics.py`): a real server (gRPC and HTTP on port 0), requests from
the real gRPC and openai clients, GET /metrics parsed with prometheus_client's own parser, and every number
checked against ServerStats."""

from __future__ import annotations

import logging
import threading
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
from server.options import ServerOptions
from server.router import RolloutRouter

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
