"""The rollout and capture side of a server, kept off the request path by one background thread.

Requests only append to in-memory buffers. Every `interval_s` the thread writes the buffered outcomes,
feedback and captured requests, runs the guard of each rollout that got new outcomes, and reloads the
router when any rollout changed (a cheap `MAX(id)` poll), and the capture configs when one changed, so
`reg rollout set` and `reg capture set` reach a running server within a second or two, without a restart.
It uses its own registry connection.
"""

from __future__ import annotations

import logging
import threading
import time

from registry import Registry
from registry.db import utcnow
from registry.capture import CaptureConfig, CapturedRequest, Redactor
from registry.rollouts import FeedbackRecord, Outcome

from .router import Choice, RolloutRouter

logger = logging.getLogger(__name__)

MAX_BUFFERED = 200_000  # outcomes (and feedback) held while the database is unwritable; the oldest go first


class RolloutWorker:
    def __init__(self, registry: Registry, router: RolloutRouter, interval_s: float = 0.5):
        self.registry = registry
        self.router = router
        self.interval_s = interval_s
        self._buffer_lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._feedback: list[FeedbackRecord] = []
        self._captured: list[CapturedRequest] = []
        self.capture: dict[str, tuple[CaptureConfig, Redactor]] = {}  # adapter -> its capture config (read-only here)
        self._capture_change: str | None = None
        self.dropped = 0  # records given up because the database stayed unwritable
        self._db_lock = threading.Lock()  # one connection: flush, guards and reloads take turns
        self._change_id: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loradock-rollouts", daemon=True)

    def start(self) -> "RolloutWorker":
        self.reload()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write what is still buffered."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.flush()
        self.registry.close()

    # --- called on the request path: append only -----------------------------------------

    def record_outcome(self, choice: Choice, request_id: str, status: str, result=None) -> None:
        """A routed request finished (`result`: the engine's Result) or failed before it ran (no result)."""
        outcome = Outcome(
            choice.adapter, choice.revision, choice.version, choice.arm, request_id, choice.key_hash, status,
            result.total_ms if result else None, result.ttft_ms if result else None,
            result.prompt_tokens if result else 0, result.completion_tokens if result else 0, utcnow(),
        )
        with self._buffer_lock:
            self._outcomes.append(outcome)

    def record_feedback(self, record: FeedbackRecord) -> None:
        with self._buffer_lock:
            self._feedback.append(record)

    def record_capture(self, request: CapturedRequest) -> None:
        """A sampled request of an adapter with capture on (its texts already redacted by the caller)."""
        with self._buffer_lock:
            self._captured.append(request)

    # --- the thread ----------------------------------------------------------------------

    def flush(self) -> set[str]:
        """Write everything buffered in one transaction; return the adapters that got outcomes."""
        with self._buffer_lock:
            outcomes, self._outcomes = self._outcomes, []
            feedback, self._feedback = self._feedback, []
            captured, self._captured = self._captured, []
        if not outcomes and not feedback and not captured:
            return set()
        with self._db_lock:
            try:
                if captured:  # before the feedback, so a correction finds its captured request
                    self.registry.captures.record(captured)
                    captured = []
                self.registry.rollouts.record(outcomes, feedback)
            except BaseException:
                with self._buffer_lock:  # keep them for the next turn, up to MAX_BUFFERED of each
                    self._outcomes[:0], self._feedback[:0], self._captured[:0] = outcomes, feedback, captured
                    self.dropped += _trim(self._outcomes) + _trim(self._feedback) + _trim(self._captured)
                raise
        return {o.adapter for o in outcomes}

    def check_guards(self, adapters: set[str]) -> None:
        with self._db_lock:
            for name in sorted(adapters):
                revision = self.registry.rollouts.check_guard(name)
                if revision is not None:
                    logger.info(f"rollout {name}: revision {revision.revision}: {revision.reason}")

    def reload(self) -> bool:
        """Load the revisions in force into the router if any rollout changed, and the capture configs if one
        changed; True if the router was reloaded."""
        with self._db_lock:
            self._reload_capture()
            change_id = self.registry.rollouts.change_id()
            if change_id == self._change_id:
                return False
            self.router.load(self.registry.rollouts.all_current())
            self._change_id = change_id
            return True

    def _reload_capture(self) -> None:
        captures = self.registry.captures  # local or remote (`RemoteCaptures`): the same calls
        change = captures.change_id()
        if change != self._capture_change:
            self.capture = {name: (config, config.redactor()) for name, config in captures.all().items()}
            self._capture_change = change

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.check_guards(self.flush())
                self.reload()
            except Exception as exc:  # a locked or unreachable database must not stop serving; try again next turn
                dropped = f" ({self.dropped:,} oldest records dropped so far)" if self.dropped else ""
                logger.warning(f"rollout bookkeeping failed, retrying: {type(exc).__name__}: {exc}{dropped}")
                time.sleep(self.interval_s)


def _trim(records: list) -> int:
    """Drop the oldest records beyond MAX_BUFFERED; return how many went."""
    excess = max(0, len(records) - MAX_BUFFERED)
    del records[:excess]
    return excess
