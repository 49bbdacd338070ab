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
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .stats import protocol_label

if TYPE_CHECKING:
    from .engines import EngineResult
    from .service import InferenceService

logger = logging.getLogger(__name__)

# Seconds. A tiny model on a CPU answers in milliseconds, a 7B base under load in tens of seconds.
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
QUEUE_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
LOAD_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)


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
        self.registry.register(_ServiceCollector(service))
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


class _ServiceCollector(Collector):
    """Counters and gauges read from the service's stats, cache and engine when Prometheus scrapes."""

    def __init__(self, service: InferenceService):
        self.service = service

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
        ]:
            yield GaugeMetricFamily(name, doc, value=value)

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
