"""What an executor is given and answers: `Launch`, `ExecutorStatus`, and the `Executor` protocol.

Its own module so that the executor modules (`kubernetes.py`, `ray.py`) import it without importing the package
that picks among them (`trainer.jobs.executors.executor_named`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from registry.jobs import Job


@dataclass
class Launch:
    """One job's worker, as an executor must run it."""

    job: Job
    argv: list[str]  # the worker command, e.g. ["reg", "--registry", URL, "worker", "--job", ID, ...]
    env: dict[str, str]  # environment for it (never a token's value: a secret or variable is named instead)


@dataclass
class ExecutorStatus:
    """What the executor says of a job's worker (the queue's state is the job's own; this is the process's)."""

    state: str  # pending | running | succeeded | failed | unknown
    message: str  # one line, e.g. "pod loradock-ftjob-x-abc: ImagePullBackOff"


class Executor(Protocol):
    name: ClassVar[str]

    def render(self, launch: Launch) -> str:
        """What `reg job submit --dry-run` prints: the object the executor would be given (YAML for kubernetes)."""
        ...

    def launch(self, launch: Launch) -> str:
        """Start the worker; returns the handle (a K8s Job's name, a Ray submission id). Errors are LoradockErrors."""
        ...

    def status(self, handle: str) -> ExecutorStatus: ...

    def stop(self, handle: str) -> None:
        """Stop the worker (a job cancelled before its worker claimed it); a worker already gone is no error."""
        ...
