"""Requests in the last minute per adapter version (`server/stats.py`): the window on a stepped clock (no test
sleeps), then through a real gRPC server on the tiny base, where ServerStats reports it."""

from __future__ import annotations

import pytest
from conftest import TINY_BASE, make_adapter_dir

from registry import Registry
from server.app import create_server, shutdown
from server.client import LoradockClient
from server.options import ServerOptions
from server.stats import RATE_WINDOW_S, Stats

START_S = 10_000.0  # any point on the monotonic clock


class SteppedClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = START_S):
        self.now = now

    def __call__(self) -> float:
        return self.now


def last_minute(stats: Stats, version: str) -> int:
    return stats.snapshot()[version].requests_last_minute


def test_requests_older_than_the_window_do_not_count():
    clock = SteppedClock()
    stats = Stats(clock=clock)
    stats.record("a:1", ok=True)
    clock.now += 70
    stats.record("a:1", ok=False)  # failed requests count, as `requests` counts them
    assert last_minute(stats, "a:1") == 1
    assert stats.snapshot()["a:1"].requests == 2


def test_the_window_ages_out_without_new_requests():
    clock = SteppedClock()
    stats = Stats(clock=clock)
    stats.record("a:1", ok=True)
    clock.now += RATE_WINDOW_S - 1
    assert last_minute(stats, "a:1") == 1
    clock.now += 1
    assert last_minute(stats, "a:1") == 0
    assert stats.snapshot()["a:1"].requests == 1


def test_a_burst_counts_every_request_in_one_bucket():
    clock = SteppedClock()
    stats = Stats(clock=clock)
    for i in range(500):
        clock.now = START_S + i / 1000  # 500 requests within half a second
        stats.record("a:1", ok=True)
    stats.record("b:1", ok=True)
    assert last_minute(stats, "a:1") == 500 and last_minute(stats, "b:1") == 1
    assert len(stats.by_version["a:1"].per_second) == 1


def test_memory_stays_bounded_after_many_seconds():
    clock = SteppedClock()
    stats = Stats(clock=clock)
    for second in range(10 * RATE_WINDOW_S):
        clock.now = START_S + second
        stats.record("a:1", ok=True)
        stats.record("a:1", ok=True)
        assert len(stats.by_version["a:1"].per_second) <= RATE_WINDOW_S
    assert last_minute(stats, "a:1") == 2 * RATE_WINDOW_S
    assert stats.snapshot()["a:1"].requests == 2 * 10 * RATE_WINDOW_S


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir):
    """Adapters `a` and `b` on the tiny base, served over gRPC on port 0 with a stepped stats clock."""
    home, work = tmp_path_factory.mktemp("rate-home"), tmp_path_factory.mktemp("rate-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    for seed, name in enumerate("ab"):
        reg.push(make_adapter_dir(tiny_base_dir, work / name, "lora", seed=40 + seed), name)
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4, max_adapters=2, max_queue=16,
                            default_max_new_tokens=3)
    server, port, service = create_server(options, reg)
    clock = service.stats.clock = SteppedClock()  # so a slow machine cannot age a request out mid-test
    client = LoradockClient(f"127.0.0.1:{port}", timeout=60)
    yield {"client": client, "clock": clock}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def test_server_stats_reports_the_requests_of_the_last_minute(served):
    client, clock = served["client"], served["clock"]
    for _ in range(3):
        client.generate("hello world", adapter="a", max_new_tokens=3)
    client.generate("hello world", adapter="b", max_new_tokens=3)
    adapters = {a.version: a for a in client.stats().adapters}
    assert adapters["a:1"].requests_last_minute == 3 and adapters["a:1"].requests == 3
    assert adapters["b:1"].requests_last_minute == 1
    clock.now += RATE_WINDOW_S
    adapters = {a.version: a for a in client.stats().adapters}
    assert adapters["a:1"].requests_last_minute == 0 and adapters["a:1"].requests == 3
