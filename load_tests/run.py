"""The load generator: drives a running server over gRPC or its OpenAI-compatible HTTP API (load_tests/protocols.py).

Closed loop: `concurrency` clients, each sending its next request as soon as the last one answers.
Open loop: Poisson arrivals at `rate` per second whatever the server does, with at most
`max_in_flight` requests outstanding; an arrival beyond that is counted as `not_sent` (the
generator's own limit, so it never melts), never queued, so the arrival process stays honest.

Every request becomes one `Sample` (status code, client-side latency, time to first token, which
version and rollout arm served it), whichever protocol carried it. A whole run (target and adapters
checked, the preset's phases, the report) is `load_tests.driver.run_load`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidInput, LoradockError
from registry.fields import documented
from server.stats import percentile

from .workload import MIXES, Workload, parse_adapters

OK = "OK"
CLIENT_ERROR = "CLIENT_ERROR"            # an exception that is no protocol error: a generator bug, reported not hidden
INCOMPLETE_STREAM = "INCOMPLETE_STREAM"  # a stream that ended without its final `done` chunk (HTTP: `data: [DONE]`)
REJECTED_CODES = ("RESOURCE_EXHAUSTED", "HTTP_429")  # the server's "queue full, come back later", per protocol
PROTOCOLS = ("grpc", "http")


def is_rejection(code: str) -> bool:
    return code in REJECTED_CODES


class Unreachable(LoradockError):
    """The target server did not answer."""


@dataclass
class LoadOptions:
    target: str = documented("localhost:50051", "Server address host:port (with --protocol http: the HTTP port, "
                                                "HOST:PORT or http(s)://HOST:PORT).")
    protocol: str = documented("grpc", "grpc, or http: the same requests through the OpenAI-compatible API "
                                       "(POST /v1/chat/completions).")
    adapters: str = documented("", "Adapters to mix, comma separated: NAME, NAME:N or NAME@ALIAS, each optionally =WEIGHT "
                             "(default: the preset picks from the server's list).")
    concurrency: int = documented(32, "Closed loop: clients sending back to back.")
    duration: float = documented(60.0, "Seconds to send requests for (requests in flight at the end are waited for).")
    rate: float | None = documented(None, "Open loop: Poisson arrivals per second (instead of a fixed concurrency).")
    stream: bool = documented(False, "Stream (GenerateStream, or SSE over HTTP); time to first token is then measured "
                                     "client-side.")
    keys: int = documented(10_000, "Distinct routing keys drawn per request (0 = send none).")
    max_new_tokens: int = documented(32, "max_new_tokens per request (0 = the server's default).")
    mix: str = documented("random", "How adapters are picked: random (seeded, by weight) or round-robin.")
    max_in_flight: int = documented(256, "Open loop: the most requests outstanding; arrivals beyond it are counted as not sent.")
    timeout: float = documented(120.0, "Deadline per request, seconds.")
    seed: int = documented(0, "Seed for the adapter mix, prompts, keys and arrival times.")
    prompts: Path | None = documented(None, "A JSONL file or a directory of them to take prompts from (default: examples/).")
    out: Path | None = documented(None, "Output directory, or a report .json path (the plot and samples go beside it).")
    home: Path | None = documented(None, "canary: the registry home the server serves from (for `reg rollout`).")
    cache_size: int | None = documented(None, "many-adapters: the server's adapter cache size, if ServerStats does not say.")
    capacity: float | None = documented(None, "overload: the server's capacity in requests/s (default: measured first).")
    calibrate: float = documented(5.0, "overload: seconds of closed-loop load to measure capacity.")
    overload_factor: float = documented(4.0, "overload: arrival rate as a multiple of capacity.")
    canary_steps: str = documented("5,25,50", "canary: the new arm's percentages, the first set at the start, the rest raised live.")

    def validate(self) -> None:
        positive = {"concurrency": self.concurrency, "duration": self.duration, "max_in_flight": self.max_in_flight,
                    "timeout": self.timeout, "calibrate": self.calibrate, "overload_factor": self.overload_factor}
        if self.rate is not None:
            positive["rate"] = self.rate
        if self.capacity is not None:
            positive["capacity"] = self.capacity
        if self.cache_size is not None:
            positive["cache_size"] = self.cache_size
        for name, value in positive.items():
            if not value > 0:
                raise InvalidInput(f"--{name.replace('_', '-')} {value}: must be positive")
        for name in ("keys", "max_new_tokens"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 or more")
        if self.mix not in MIXES:
            raise InvalidInput(f"--mix {self.mix!r}: use one of {', '.join(MIXES)}")
        if self.protocol not in PROTOCOLS:
            raise InvalidInput(f"--protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if self.adapters:
            parse_adapters(self.adapters)
        if self.protocol == "http":
            http_base_url(self.target)
        else:
            parse_target(self.target)


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--target {target!r}: expected HOST:PORT, e.g. localhost:50051")
    return host, int(port)


def http_base_url(target: str) -> str:
    """`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT` (a trailing /v1 is allowed) -> the origin URL."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        scheme, rest = "http", target
    if scheme not in ("http", "https"):
        raise InvalidInput(f"--target {target!r}: over HTTP give HOST:PORT or http(s)://HOST:PORT")
    host, port = parse_target(rest.rstrip("/").removesuffix("/v1"))
    return f"{scheme}://{host}:{port}"


@dataclass
class Sample:
    phase: str
    adapter: str                 # as requested
    routing_key: str
    started_s: float             # since the run started
    latency_ms: float = 0.0      # client-side, send to final answer (or to the error)
    code: str = OK               # OK, a grpc.StatusCode name, HTTP_<status>, INCOMPLETE_STREAM or CLIENT_ERROR
    ttft_ms: float | None = None  # streaming: client-side first chunk with text; else the server's timing.ttft_ms
    server_ms: float | None = None  # the server's own timing.total_ms, where the protocol reports it
    version: str = ""
    variant: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    detail: str = ""


@dataclass
class Phase:
    name: str
    mode: str                    # closed or open
    started_s: float
    duration_s: float = 0.0      # from the first send to the last answer
    concurrency: int | None = None
    rate: float | None = None
    arrivals: int = 0            # open loop: arrivals drawn (sent + not_sent)
    not_sent: int = 0


@dataclass
class Mark:
    """Something that happened during the run (a rollout change), drawn on the plot."""
    at_s: float
    label: str


class LoadGenerator:
    """Sends requests from a workload and records a Sample for each; phases run one after another."""

    def __init__(self, client, workload: Workload, options: LoadOptions, live: bool = True, console=None):
        self.client = client  # a transport of load_tests/protocols.py
        self.workload = workload
        self.options = options
        self.live = live
        self.console = console
        self.samples: list[Sample] = []
        self.phases: list[Phase] = []
        self.marks: list[Mark] = []
        self.in_flight = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    # --- one request ----------------------------------------------------------------------

    def send(self, phase: str) -> Sample:
        spec = self.workload.next()
        with self._lock:
            self.in_flight += 1
        start = time.perf_counter()
        sample = Sample(phase, spec.adapter, spec.routing_key, start - self._t0)
        try:
            self.client.send(sample, spec, start)  # protocol errors land in sample.code
        except Exception as exc:  # noqa: BLE001 - reported as CLIENT_ERROR, never swallowed silently
            sample.code, sample.detail = CLIENT_ERROR, f"{type(exc).__name__}: {exc}"
        sample.latency_ms = (time.perf_counter() - start) * 1000
        with self._lock:
            self.in_flight -= 1
            self.samples.append(sample)
        return sample

    # --- phases ---------------------------------------------------------------------------

    def closed_loop(self, name: str, concurrency: int, duration: float, events: list[tuple[float, str, Callable]] = ()) -> Phase:
        phase = Phase(name, "closed", self.now(), concurrency=concurrency)
        deadline = time.perf_counter() + duration

        def client_loop():
            while not self.stop.is_set() and time.perf_counter() < deadline:
                self.send(name)

        threads = [threading.Thread(target=client_loop, name=f"load-client-{i}", daemon=True) for i in range(concurrency)]
        self._drive(phase, duration, threads, events)
        return phase

    def open_loop(self, name: str, rate: float, duration: float, max_in_flight: int,
                  events: list[tuple[float, str, Callable]] = ()) -> Phase:
        phase = Phase(name, "open", self.now(), rate=rate)
        rng = random.Random(self.options.seed + 1)
        slots = threading.Semaphore(max_in_flight)
        pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="load-open")

        def one():
            try:
                self.send(name)
            finally:
                slots.release()

        def arrivals():
            start = time.perf_counter()
            at = start
            while not self.stop.is_set():
                at += rng.expovariate(rate)
                if at - start >= duration:
                    break
                delay = at - time.perf_counter()
                if delay > 0 and self.stop.wait(delay):
                    break
                phase.arrivals += 1
                if slots.acquire(blocking=False):
                    pool.submit(one)
                else:
                    phase.not_sent += 1
            pool.shutdown(wait=True)

        self._drive(phase, duration, [threading.Thread(target=arrivals, name="load-arrivals", daemon=True)], events)
        return phase

    def _drive(self, phase: Phase, duration: float, threads: list[threading.Thread], events) -> None:
        """Start the phase's threads; show the live line and fire timed events until they end."""
        self.phases.append(phase)
        pending = sorted(events, key=lambda e: e[0])
        first = len(self.samples)
        started = time.perf_counter()
        for t in threads:
            t.start()

        def tick():
            while pending and time.perf_counter() - started >= pending[0][0]:
                _, label, action = pending.pop(0)
                action()
                self.marks.append(Mark(self.now(), label))

        try:
            if self.live and self.console is not None and self.console.is_terminal:
                from rich.live import Live

                with Live(self._line(phase, first, started, duration), console=self.console, refresh_per_second=4,
                          transient=False) as live:
                    while any(t.is_alive() for t in threads):
                        tick()
                        live.update(self._line(phase, first, started, duration))
                        time.sleep(0.25)
                    live.update(self._line(phase, first, started, duration))
            else:
                while any(t.is_alive() for t in threads):
                    tick()
                    time.sleep(0.05)
                if self.live and self.console is not None:  # not a terminal: one line per phase, at its end
                    self.console.print(self._line(phase, first, started, duration))
        except BaseException:  # Ctrl-C, or an event that failed: stop sending, let what is in flight answer
            self.stop.set()
            for t in threads:
                t.join()
            raise
        phase.duration_s = time.perf_counter() - started

    def _line(self, phase: Phase, first: int, started: float, duration: float):
        from rich.text import Text

        samples = self.samples[first:]
        elapsed = time.perf_counter() - started
        errors = sum(s.code != OK for s in samples)
        recent = [s.latency_ms for s in samples[-1000:] if s.code == OK]
        extra = f"  not sent {phase.not_sent}" if phase.not_sent else ""
        return Text(f"{phase.name} {min(elapsed, duration):5.1f}/{duration:g} s  {len(samples)} req  {errors} err  "
                    f"{len(samples) / max(elapsed, 1e-9):.1f} req/s  p50 {percentile(recent, .5):.0f} ms  "
                    f"in flight {self.in_flight}{extra}")


# --- what a run knows of its server ----------------------------------------------------------


@dataclass
class ServerInfo:
    """What the generator learns from the server before it starts."""
    adapters: list[str]          # names the server can serve (ListAdapters, or GET /v1/models)
    stats: object                # ServerStatsResponse; None over HTTP (its numbers are in /metrics instead)
