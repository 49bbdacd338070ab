"""Per adapter-version counters and latency percentiles for `ServerStats` (and the load tests).

Only versions the server resolved get an entry (a request that failed before that counts in the one
`unresolved` bucket), and at most `max_versions` entries are kept: the least recently used is dropped,
so no sequence of requests grows this state (or the ServerStats reply) without bound.
Each entry also counts its requests by (rollout arm, protocol, outcome): the `loradock_requests_total`
series of `/metrics` (`server/metrics.py`) are read from here, so they always agree with ServerStats.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

WINDOW = 2048  # latest requests kept per version for percentiles
MAX_VERSIONS = 256  # entries kept (LRU); each holds up to 2 x WINDOW latencies
UNRESOLVED = "unresolved"  # requests that failed before an adapter version was resolved
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


class Stats:
    def __init__(self, max_versions: int = MAX_VERSIONS):
        self._lock = threading.Lock()
        self.max_versions = max_versions
        self.by_version: OrderedDict[str, VersionStats] = OrderedDict()
        self.total_requests = 0

    def record(self, version: str, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
               total_ms: float | None = None, ttft_ms: float | None = None, *, variant: str = "",
               protocol: str = "grpc", outcome: str = "") -> None:
        """Count one request against `version` (a resolved NAME:N, a merge key, "" for the base, or UNRESOLVED).

        `variant`: the rollout arm that served it ("" for none); `outcome`: how it ended ("ok", "cancelled", or an
        error's status name in lower case; "" = "ok" or "error" as `ok` says)."""
        label = (variant, protocol_label(protocol), outcome or ("ok" if ok else "error"))
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
        """A copy of every entry; `latencies=False` leaves the latency windows empty (a cheap read, for /metrics)."""
        with self._lock:
            return {k: VersionStats(v.requests, v.errors, v.prompt_tokens, v.completion_tokens,
                                    deque(v.latency_ms if latencies else ()), deque(v.ttft_ms if latencies else ()),
                                    dict(v.outcomes))
                    for k, v in self.by_version.items()}
