"""Which arm of a rollout serves a request for a bare adapter name.

With a routing key (and a sticky rollout) the arm comes from a stable hash of (name, key) into 10 000
buckets; without one, from a random bucket. Arms own consecutive bucket ranges in version order, so
the newest arm holds the top of the range and grows downwards: raising its weight (taking the share
from the arm below it, the old version in a two-arm split) only moves keys from that arm to it, and no
key flips back and forth as a canary grows 1 -> 5 -> 25 -> 50 -> 100 %.
The router holds the revisions in force in memory; a background thread swaps in new ones
(`RolloutWorker`), so picking an arm never touches the database.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from registry.rollout_records import arm_label
from registry.rollouts import WEIGHT_TOTAL, Arm, Revision

BUCKETS = 10_000


@dataclass(frozen=True)
class Choice:
    """The arm a request was routed to."""

    adapter: str
    revision: int
    version: int
    arm: str            # A, B, ... (the response's `variant`)
    key_hash: str | None


def key_hash(name: str, key: str) -> str:
    return hashlib.sha256(f"{name}\x00{key}".encode()).hexdigest()


def bucket_of(digest: str) -> int:
    return int(digest[:16], 16) % BUCKETS


def arm_for_bucket(arms: list[Arm], bucket: int) -> tuple[str, Arm]:
    """The (label, arm) owning `bucket`; `arms` are sorted by version and their weights sum to 100."""
    upper = 0
    for index, arm in enumerate(arms):
        upper += arm.weight * BUCKETS // WEIGHT_TOTAL
        if bucket < upper:
            return arm_label(index), arm
    return arm_label(len(arms) - 1), arms[-1]


class RolloutRouter:
    def __init__(self, rng: random.Random | None = None):
        self._revisions: dict[str, Revision] = {}
        self._rng = rng or random.Random()

    def load(self, revisions: dict[str, Revision]) -> None:
        """Route by these revisions from now on (one assignment, so a request sees the old or the new set whole)."""
        self._revisions = dict(revisions)

    def current(self, name: str) -> Revision | None:
        return self._revisions.get(name)

    def pick_arm(self, name: str, routing_key: str = "") -> Choice | None:
        """The arm for a request for the bare `name`, or None when `name` has no rollout."""
        revision = self._revisions.get(name)
        if revision is None:
            return None
        digest = key_hash(name, routing_key) if routing_key else None
        sticky = digest is not None and revision.sticky
        bucket = bucket_of(digest) if sticky else self._rng.randrange(BUCKETS)
        label, arm = arm_for_bucket(revision.arms, bucket)
        return Choice(name, revision.revision, arm.version, label, digest)
