"""Prometheus metrics for one server (`GET /metrics`), with prometheus_client, in a registry of its own.

Two kinds of numbers, so that `/metrics` always agrees with `InferenceService.server_stats()`:
- read at scrape time from what ServerStats is built from (`_ServiceCollector`): requests by adapter version,
  rollout arm, protocol and outcome; prompt and completion tokens; cache hits, misses, loads and evictions;
  running and waiting requests, batch size, cache slots and bytes, gathered-A/B bytes;
- observed as events happen: latency, time to first token and queue wait of each finished request
  (`observe_finished`, called from the service's on_finish), and each adapter's load time (a cache listener).

Labels are bounded: versions are those `server/stats.py` keeps (an LRU), arms are a rollout's few, protocol is
grpc/http/other, outcome is ok, cancelled or a gRPC status name in lower case; histograms carry only protocol.
One `CollectorRegistry` per server (never the process-global default), so several servers share a process.

For the Gateway API inference extension's endpoint picker (deploy/gateway/), three gauges in the shape it reads
(vLLM's): the queue (`loradock_waiting_requests`), the batch's fill as its KV-cache utilisation, and the adapters
requests are using as `loradock_lora_requests_info`, whose labels name them as requests do (`AdapterActivity`).
The picker sends no token: `--metrics-port` serves /metrics alone without one (`MetricsListener`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import protocol_label

if TYPE_CHECKING:
    from .cache import AdapterCache
    from .engines import EngineResult
    from .options import ServerOptions
    from .service import InferenceService

logger = logging.getLogger(__name__)

# Seconds. A tiny model on a CPU answers in milliseconds, a 7B base under load in tens of seconds.
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
QUEUE_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
LOAD_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

# What the endpoint picker is told to read (deploy/gateway/endpoint-picker.yaml names each; tests/test_deploy.py checks
# that a real server emits them). The LoRA info's labels are vLLM's, which the picker parses by name.
QUEUED_REQUESTS_METRIC = "loradock_waiting_requests"
KV_CACHE_USAGE_METRIC = "loradock_kv_cache_usage_ratio"
LORA_INFO_METRIC = "loradock_lora_requests_info"
RUNNING_ADAPTERS_LABEL, WAITING_ADAPTERS_LABEL, MAX_ADAPTERS_LABEL = "running_lora_adapters", "waiting_lora_adapters", "max_lora"
MAX_REQUESTED_NAMES = 1024  # adapter names (as requests wrote them) remembered for the LoRA info, least recent dropped
KEYS_PER_NAME = 4  # resolved versions remembered per name: a bare name in a rollout resolves to each of its few arms

METRICS_PATH = "/metrics"
MAX_SCRAPERS = 16  # connections --metrics-port serves at once; one more is closed at once (it asks no token)

T = TypeVar("T")


class ServerMetrics:
    """The metrics of one InferenceService (`service.metrics`); the HTTP front serves `exposition()`."""

    def __init__(self, service: InferenceService):
        self.registry = CollectorRegistry()

        def histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, documentation, ["protocol"], buckets=buckets, registry=self.registry)

        self.latency = histogram("loradock_request_duration_seconds",
                                 "Submitted to finished, per request that did not fail", LATENCY_BUCKETS)
        self.ttft = histogram("loradock_time_to_first_token_seconds",
                              "Submitted to first token, per request that did not fail", TTFT_BUCKETS)
        self.queue_wait = histogram("loradock_queue_wait_seconds",
                                    "Submitted to admitted into the running batch, per request that did not fail",
                                    QUEUE_BUCKETS)
        self.load_time = Histogram("loradock_adapter_load_seconds",
                                   "Reading an adapter (or building a merge) and placing it in a slot",
                                   buckets=LOAD_BUCKETS, registry=self.registry)
        self.adapters = AdapterActivity(service.cache)
        self.registry.register(_ServiceCollector(service, self.adapters))
        service.cache.add_listener(self)

    def observe_finished(self, result: EngineResult, protocol: str) -> None:
        """One request ended in the engine (on its thread): never raises, so bookkeeping cannot fail a request."""
        try:
            if result.error is not None:  # as in ServerStats, a failed request has no latency
                return
            label = protocol_label(protocol)
            self.latency.labels(label).observe(result.total_ms / 1000)
            self.ttft.labels(label).observe(result.ttft_ms / 1000)
            self.queue_wait.labels(label).observe(result.queue_ms / 1000)
        except Exception:
            logger.exception("recording the metrics of request %s failed", result.request_id)

    def adapter_loaded(self, key: str, seconds: float) -> None:
        self.load_time.observe(seconds)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and content type for `GET /metrics`: the Prometheus text format (0.0.4), or OpenMetrics when
        the scraper's `Accept` header asks for it (as Prometheus does), as prometheus_client negotiates it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class AdapterActivity:
    """The adapters this server is busy with, by the names requests gave them (`NAME`, `NAME@ALIAS`, `NAME:N`, an
    OpenAI body's `model`): what the endpoint picker's LoRA-affinity scorer compares with the next request's `model`.

    Running: every name that resolved to a version a request holds now, queued or in the batch (a queued request
    has its adapter in a slot already, so for the picker it is as good as running; and a request for any name of a
    held version is served without a load). Waiting: names whose request waits for its adapter to be placed in a
    slot (pulled and read, or a full cache's slot to free up). Names are remembered once they resolved, at most
    MAX_REQUESTED_NAMES of them, each with the last KEYS_PER_NAME versions it resolved to: after a push or an alias
    move a name may be listed for the version it named before while that one is still held.
    """

    def __init__(self, cache: AdapterCache):
        self._cache = cache
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()  # name -> cache keys it resolved to
        self._waiting: Counter[str] = Counter()

    def acquire(self, name: str, acquire: Callable[[], T]) -> T:
        """The service's `acquire()` -> (version, cache key, slot) for a request that asked for `name`: the name
        waits meanwhile, then is linked to the key it got."""
        with self._lock:
            self._waiting[name] += 1
        try:
            got = acquire()
        finally:
            with self._lock:
                self._waiting[name] -= 1
                if not self._waiting[name]:
                    del self._waiting[name]
        key = got[1]
        with self._lock:
            keys = self._keys.setdefault(name, OrderedDict())
            keys[key] = None
            keys.move_to_end(key)
            self._keys.move_to_end(name)
            if len(keys) > KEYS_PER_NAME:
                keys.popitem(last=False)
            if len(self._keys) > MAX_REQUESTED_NAMES:
                self._keys.popitem(last=False)
        return got

    def running(self) -> list[str]:
        held = {key for key, entry in dict(self._cache.entries).items() if entry.refs}
        with self._lock:
            return sorted(name for name, keys in self._keys.items() if not held.isdisjoint(keys))

    def waiting(self) -> list[str]:
        with self._lock:
            return sorted(self._waiting)


class _ServiceCollector(Collector):
    """Counters and gauges read from the service's stats, cache and engine when Prometheus scrapes."""

    def __init__(self, service: InferenceService, adapters: AdapterActivity):
        self.service = service
        self.adapters = adapters

    def collect(self) -> Iterator[Metric]:
        service = self.service
        yield InfoMetricFamily("loradock_server", "The base this server serves",
                               value={"base": service.base.name, "quantization": service.quantization})
        yield GaugeMetricFamily("loradock_server_start_time_seconds", "When the service started (Unix time)",
                                value=service.started)
        yield from self._requests(service.stats.snapshot(latencies=False))
        yield from self._cache(service.cache)
        engine = service.engine.stats()
        for name, doc, value in [
            ("loradock_running_requests", "Requests in the running batch now", engine.batch_size),
            ("loradock_waiting_requests", "Requests queued to join the running batch", engine.queue_depth),
            ("loradock_batch_size", "Rows in the running batch now (one per request)", engine.batch_size),
            ("loradock_batch_size_max", "The most rows the running batch takes (--max-batch-size)", engine.max_batch_size),
            ("loradock_queue_max", "The most requests that may wait (--max-queue)", engine.max_queue),
            ("loradock_adapter_slot_bytes", "Adapter slot storage, every slot padded as the engine pads it",
             engine.slot_memory_bytes),
            ("loradock_gathered_adapter_bytes", "Per-row adapter A/B copies the engine keeps between decode steps",
             engine.gathered_memory_bytes),
            ("loradock_decode_tokens_per_second", "Decode throughput over the engine's life", engine.decode_tokens_per_s),
            ("loradock_prefix_cache_bytes", "Prompt keys/values kept for prompts that start the same way (--prefix-cache-mb)",
             engine.prefix_cache_bytes),
            (KV_CACHE_USAGE_METRIC, ("KV-cache utilisation from 0 to 1: each batch row keeps a KV cache of its own, so "
                                     "the rows in use over --max-batch-size"), engine.batch_size / engine.max_batch_size),
        ]:
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily("loradock_prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache",
                                  value=engine.prefix_query_tokens)
        yield CounterMetricFamily("loradock_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache, so not "
                                  "prefilled again", value=engine.prefix_hit_tokens)
        yield self._lora_info(service.cache.max_adapters)

    def _lora_info(self, slots: int) -> Metric:
        """One series in vLLM's `lora_requests_info` shape: comma-joined adapter names, the slots, and the time as
        its value (the picker takes the newest series that names any adapter)."""
        info = GaugeMetricFamily(LORA_INFO_METRIC, "Adapters in use by the names requests gave them: held by a queued or "
                                 "running request, and waiting to be placed in a slot; max_lora is --max-adapters",
                                 labels=[RUNNING_ADAPTERS_LABEL, WAITING_ADAPTERS_LABEL, MAX_ADAPTERS_LABEL])
        info.add_metric([",".join(self.adapters.running()), ",".join(self.adapters.waiting()), str(slots)], time.time())
        return info

    @staticmethod
    def _requests(snapshot) -> Iterator[Metric]:
        requests = CounterMetricFamily("loradock_requests", "Requests by adapter version (NAME:N, a merge key, base "
                                       "or unresolved), rollout arm, protocol and outcome",
                                       labels=["version", "variant", "protocol", "outcome"])
        prompt = CounterMetricFamily("loradock_prompt_tokens", "Prompt tokens of requests that did not fail",
                                     labels=["version"])
        completion = CounterMetricFamily("loradock_completion_tokens", "Tokens generated", labels=["version"])
        for version, s in sorted(snapshot.items()):
            for (variant, protocol, outcome), n in sorted(s.outcomes.items()):
                requests.add_metric([version, variant, protocol, outcome], n)
            prompt.add_metric([version], s.prompt_tokens)
            completion.add_metric([version], s.completion_tokens)
        yield from (requests, prompt, completion)

    @staticmethod
    def _cache(cache) -> Iterator[Metric]:
        for name, doc, value in [
            ("loradock_adapter_cache_hits", "Requests whose adapter was already in a slot", cache.hits),
            ("loradock_adapter_cache_misses", "Requests that had to load their adapter", cache.misses),
            ("loradock_adapter_loads", "Adapters (and merges) placed in a slot", cache.loads),
            ("loradock_adapter_load_failures", "Adapter loads that failed", cache.load_failures),
            ("loradock_adapter_evictions", "Adapters taken out of their slot (LRU or unload)", cache.evictions),
        ]:
            yield CounterMetricFamily(name, doc, value=value)
        for name, doc, value in [
            ("loradock_adapter_slots_used", "Adapter slots holding an adapter now", len(cache.entries)),
            ("loradock_adapter_slots", "Adapter slots (--max-adapters)", cache.max_adapters),
            ("loradock_adapter_cache_bytes", "Adapter weights in the cache now", cache.used_bytes),
            ("loradock_adapter_cache_max_bytes", "The adapter memory limit (--adapter-memory-mb)", cache.max_bytes),
        ]:
            yield GaugeMetricFamily(name, doc, value=value)


class MetricsListener:
    """`--metrics-port`: GET /metrics alone, asking no token, for scrapers that cannot send one.

    The endpoint picker of the Gateway API inference extension scrapes each replica's /metrics with no credentials;
    the HTTP API's /metrics keeps asking for an `infer` token, and this port serves nothing else, so opening it
    opens no route that runs or changes anything. Bound when built (a busy port fails before the model loads),
    serving once `start(metrics)` runs; TLS as --tls-cert (the handshake on the connection's own thread); a client
    has --http-timeout to send its request, and at most MAX_SCRAPERS connections are served at once.
    """

    def __init__(self, options: ServerOptions):
        from .listen import bind_port

        tls = None
        if options.tls_cert:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(options.tls_cert, options.tls_key)
        self._server = _ScrapeServer(bind_port(options.host, options.metrics_port, "--metrics-port"), tls,
                                     options.http_timeout_s)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="loradock-metrics", daemon=True)

    def start(self, metrics: ServerMetrics) -> MetricsListener:
        self._server.metrics = metrics
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (connections being served finish on their own threads) and close the port."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class _ScrapeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None, timeout_s: float):
        self.address_family = sock.family
        self.tls = tls
        self.timeout_s = timeout_s
        self.metrics: ServerMetrics | None = None
        self._slots = threading.BoundedSemaphore(MAX_SCRAPERS)
        super().__init__(sock.getsockname()[:2], _MetricsHandler, bind_and_activate=False)
        self.socket.close()  # the one socketserver made; `sock` is already bound (server.listen.bind_port)
        self.socket = sock
        self.server_address = sock.getsockname()
        self.server_name, self.server_port = self.server_address[:2]  # as HTTPServer's bind would, without its DNS lookup
        self.server_activate()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # every slot busy: close it rather than queue a thread
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address) -> None:
        request.settimeout(self.timeout_s)
        if self.tls is not None:
            request = self.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        logger.debug("metrics scrape from %s failed: %r", client_address, sys.exc_info()[1])  # a dropped or bad client


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _ScrapeServer
    server_version = "loradock"
    sys_version = ""

    def do_GET(self) -> None:  # http.server's name for it
        if urlsplit(self.path).path != METRICS_PATH:
            self._reply(404, f"not found: this port serves only GET {METRICS_PATH}\n".encode(), "text/plain; charset=utf-8")
            return
        body, content_type = self.server.metrics.exposition(self.headers.get("Accept", ""))
        self._reply(200, body, content_type)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """Quiet: a scraper calls every 50 ms (the picker's default)."""
