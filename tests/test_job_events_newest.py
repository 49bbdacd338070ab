"""A job's newest events in one read (`registry.jobs.newest_events`), locally and over gRPC alike.

OpenAI's list of a job's events (newest first, paged with a cursor) and the portal's job page want what happened
last; they read it from the newest end instead of paging forward through the whole log. The job here is a real
submission (the trainer's checks, the tiny base) whose log is then extended through the queue's own `add_event`,
and the remote registry is a real server on a free port serving the same home.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY_BASE
from remote_helpers import start_registry

from registry.errors import InvalidInput, NotFound
from registry.jobs import SubmitRequest
from registry.jobs.queue import MAX_EVENTS_PAGE
from registry.remote.client import RemoteRegistry
from registry.remote.rpc import jobs_pb

ADDED_EVENTS = MAX_EVENTS_PAGE + 7  # a log longer than a page, so the cap is reached
UNKNOWN_JOB = "ftjob-000000000000000000000000"


def queued_job(registry, directory) -> tuple[str, int]:
    """A job submitted through the trainer's real checks, its log extended by ADDED_EVENTS; (its id, its events)."""
    from trainer.jobs.submit import submit

    directory.mkdir()
    (directory / "data.jsonl").write_text('{"instruction": "1+1", "output": "2"}\n' * 20)
    config = {"base_model": TINY_BASE, "adapter": "lora", "lora_r": 4, "lora_alpha": 8,
              "datasets": [{"path": "data.jsonl", "type": "alpaca"}], "val_set_size": 4, "sequence_len": 32,
              "micro_batch_size": 2, "max_steps": 1, "push": {"name": "newest-events"}}
    (directory / "job.yaml").write_text(yaml.safe_dump(config))
    job_id = submit(registry, SubmitRequest(config_path=str(directory / "job.yaml"))).id
    submitted = len(registry.jobs.events(job_id))  # "validating files" ... "queued", and any warnings between
    for n in range(ADDED_EVENTS):
        registry.jobs.add_event(job_id, "info", "message", f"line {n}", {"n": n})
    return job_id, submitted + ADDED_EVENTS


@pytest.fixture
def both(registry, tmp_path):
    """(job id, its number of events, local jobs, remote jobs): one job, read from its registry and through a server
    of the same home."""
    job_id, total = queued_job(registry, tmp_path / "submission")
    server, url, _ = start_registry(registry.home)
    remote = RemoteRegistry(url, home=tmp_path / "remote-cache")
    yield job_id, total, registry.jobs, remote.jobs
    remote.close()
    server.stop(0)


def seqs(events) -> list[int]:
    return [e.seq for e in events]


def test_local_and_remote_read_the_same_newest_events_oldest_first(both):
    job_id, total, local, remote = both
    newest = local.newest_events(job_id, 5)
    assert seqs(newest) == list(range(total - 4, total + 1))
    assert newest[-1].message == f"line {ADDED_EVENTS - 1}" and newest[-1].data == {"n": ADDED_EVENTS - 1}
    assert remote.newest_events(job_id, 5) == newest
    assert newest == local.events(job_id, after=total - 5), "the same records the forward read returns"


def test_before_is_a_cursor_into_older_events(both):
    job_id, total, local, remote = both
    for jobs in (local, remote):
        assert seqs(jobs.newest_events(job_id, 3, before=10)) == [7, 8, 9]
        assert seqs(jobs.newest_events(job_id, 3, before=3)) == [1, 2], "fewer remain than asked for"
        assert jobs.newest_events(job_id, 3, before=1) == []
        assert seqs(jobs.newest_events(job_id, 2, before=total + 50)) == [total - 1, total]
    assert seqs(local.newest_events(job_id, 1, before=10**30)) == [total], "a cursor past every event"
    assert local.newest_events(job_id, 4, before=50) == remote.newest_events(job_id, 4, before=50)


def test_one_read_returns_at_most_a_page(both):
    job_id, total, local, remote = both
    for jobs in (local, remote):
        page = jobs.newest_events(job_id, MAX_EVENTS_PAGE + 100)
        assert seqs(page) == list(range(total - MAX_EVENTS_PAGE + 1, total + 1))
        with pytest.raises(InvalidInput, match="limit 0: ask for at least 1 event"):
            jobs.newest_events(job_id, 0)


def test_an_unknown_job_is_not_found_locally_and_remotely(both):
    _, _, local, remote = both
    for jobs in (local, remote):
        with pytest.raises(NotFound, match=UNKNOWN_JOB):
            jobs.newest_events(UNKNOWN_JOB, 5)


def test_the_server_refuses_newest_mixed_with_after_or_follow(both):
    """A hand-made request (not one RemoteJobs sends) that asks for the newest page and a forward read at once."""
    job_id, _, _, remote = both
    for mixed in ({"after": 3}, {"follow": True}):
        request = jobs_pb.JobEventsRequest(job_id=job_id, newest=True, limit=5, **mixed)
        with pytest.raises(InvalidInput, match="without after or follow"):
            list(remote._stream(request, remote.remote.timeout))
