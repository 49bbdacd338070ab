"""Per adapter-version counters and latency percentiles for `ServerStats` (and the load tests).

Only versions the server resolved get an entry (a request that failed before that counts in the one
`unresolved` bucket), and at most `max_versions` entries are kept: the least recently used is dropped,
so no sequence of requests grows this state (or the ServerStats reply) without bound.
Each entry also counts its requests by (rollout arm, protocol, outcome): the `loradock_requests_total`
series of `/metrics` (`server/metrics.py`) are read from here, so they always agree with ServerStats.
Its requests of the last minute are counted too, in per-second buckets (at most RATE_WINDOW_S of them), for
the portal's "requests per minute"; /metrics leaves rates to Prometheus and exports only the totals.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

WINDOW = 2048  # latest requests kept per version for percentiles
MAX_VERSIONS = 256  # entries kept (LRU); each holds up to 2 x WINDOW latencies
UNRESOLVED = "unresolved"  # requests that failed before an adapter version was resolved
RATE_WINDOW_S = 60  # `requests_last_minute` counts the requests of the last this many whole seconds
PROTOCOLS = ("grpc", "http")  # any other GenerateRequest.protocol counts as "other" (a bounded label set)


def protocol_label(protocol: str) -> str:
    return protocol if protocol in PROTOCOLS else "other"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class VersionStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    ttft_ms: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (variant, protocol, outcome) -> requests
    per_second: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW_S))
    """[second, requests] buckets, oldest first, one per second that had a request: at most RATE_WINDOW_S of them,
    since an older bucket can never count again."""

    @property
    def requests_last_minute(self) -> int:
        """Requests (failed ones too, as `requests` counts them) in the RATE_WINDOW_S seconds up to the last
        `record` or, on a `Stats.snapshot()` copy, up to the snapshot."""
        return sum(n for _, n in self.per_second)

    def _drop_stale_buckets(self, second: int) -> None:
        """Forget the buckets that no longer count at `second` (on the same clock as the buckets)."""
        while self.per_second and self.per_second[0][0] <= second - RATE_WINDOW_S:
            self.per_second.popleft()


class Stats:
    def __init__(self, max_versions: int = MAX_VERSIONS, clock=time.monotonic):
        """`clock`: seconds from any fixed point (monotonic, so a change of the system time moves no request in or
        out of the last minute); a test passes its own to step time without sleeping."""
        self._lock = threading.Lock()
        self.max_versions = max_versions
        self.clock = clock
        self.by_version: OrderedDict[str, VersionStats] = OrderedDict()
        self.total_requests = 0

    def record(self, version: str, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
               total_ms: float | None = None, ttft_ms: float | None = None, *, variant: str = "",
               protocol: str = "grpc", outcome: str = "") -> None:
        """Count one request against `version` (a resolved NAME:N, a merge key, "" for the base, or UNRESOLVED).

        `variant`: the rollout arm that served it ("" for none); `outcome`: how it ended ("ok", "cancelled", or an
        error's status name in lower case; "" = "ok" or "error" as `ok` says)."""
        label = (variant, protocol_label(protocol), outcome or ("ok" if ok else "error"))
        second = int(self.clock())
        with self._lock:
            key = version or "base"
            s = self.by_version.get(key)
            if s is None:
                s = self.by_version[key] = VersionStats()
                while len(self.by_version) > self.max_versions:
                    self.by_version.popitem(last=False)
            else:
                self.by_version.move_to_end(key)
            s.requests += 1
            s.outcomes[label] = s.outcomes.get(label, 0) + 1
            s._drop_stale_buckets(second)
            if s.per_second and s.per_second[-1][0] == second:
                s.per_second[-1][1] += 1
            else:
                s.per_second.append([second, 1])
            self.total_requests += 1
            if not ok:
                s.errors += 1
                return
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens
            if total_ms is not None:
                s.latency_ms.append(total_ms)
            if ttft_ms is not None:
                s.ttft_ms.append(ttft_ms)

    def snapshot(self, latencies: bool = True) -> dict[str, VersionStats]:
        """A copy of every entry, its `requests_last_minute` as of now; `latencies=False` leaves the latency windows
        empty (a cheap read, for /metrics)."""
        second = int(self.clock())
        with self._lock:
            copies = {k: VersionStats(v.requests, v.errors, v.prompt_tokens, v.completion_tokens,
                                      deque(v.latency_ms if latencies else ()), deque(v.ttft_ms if latencies else ()),
                                      dict(v.outcomes), deque((list(b) for b in v.per_second), maxlen=RATE_WINDOW_S))
                      for k, v in self.by_version.items()}
        for copy in copies.values():
            copy._drop_stale_buckets(second)
        return copies
