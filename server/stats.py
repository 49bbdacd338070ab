"""Per adapter-version counters and latency percentiles for `ServerStats` (and the load tests)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

WINDOW = 2048  # latest requests kept per version for percentiles


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


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.by_version: dict[str, VersionStats] = {}
        self.total_requests = 0

    def record(self, version: str, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
               total_ms: float | None = None, ttft_ms: float | None = None) -> None:
        with self._lock:
            s = self.by_version.setdefault(version or "base", VersionStats())
            s.requests += 1
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

    def snapshot(self) -> dict[str, VersionStats]:
        with self._lock:
            return {k: VersionStats(v.requests, v.errors, v.prompt_tokens, v.completion_tokens, deque(v.latency_ms), deque(v.ttft_ms))
                    for k, v in self.by_version.items()}
