"""The stream contract's promises that the dialects lean on, against a real server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from jobserver.auth import Principal
from jobserver.core.ids import JobId, UserId
from jobserver.core.topics import SYSTEM, JobTopic
from jobserver.dataplane import DataPlane
from jobserver.dialects import LookUp

from .conftest import Harness


class Recorder:
    """A hub subscriber that notes the last seq handed to it."""

    def __init__(self) -> None:
        self.last = 0

    def deliver(self, events: Sequence[Any]) -> None:
        self.last = events[-1].seq


async def test_published_seq_is_exactly_what_the_hub_delivered(harness: Harness) -> None:
    """While batches are written (numbered, not yet published) and published,
    `published_seq` is the last seq delivered: never ahead, never zero."""
    engine = harness.server.engine
    job = await harness.submit("chatty", {"lines": 20000})
    topic = JobTopic(JobId(job["id"]))
    recorder = Recorder()
    engine.hub.subscribe(topic, recorder)
    recorder.last = engine.published_seq(topic)
    checks = 0
    try:
        with trio.fail_after(30):
            while engine.live(topic.job_id) is not None:
                assert engine.published_seq(topic) == recorder.last
                checks += 1
                await trio.lowlevel.checkpoint()
        # The job left the engine as its end was recorded; the rest is published
        # as it commits.
        await engine.store.wait_flushed()
    finally:
        engine.hub.unsubscribe(topic, recorder)
    assert checks > 10 and recorder.last > 1000


async def test_system_status_counts_a_job_whose_queued_event_it_publishes(
        harness: Harness) -> None:
    engine = harness.server.engine
    seen: list[tuple[int, int]] = []

    class System:
        def deliver(self, events: Sequence[Any]) -> None:
            seen.extend((e.queued, e.running) for e in events)

    subscriber = System()
    engine.hub.subscribe(SYSTEM, subscriber)
    try:
        job = await harness.submit("echo", {"message": "x"})
        await harness.wait(job["id"])
    finally:
        engine.hub.unsubscribe(SYSTEM, subscriber)
    # (Health verdicts may be published too, with the same counts.)
    counts = [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c]
    assert counts[-3:] == [(1, 0), (0, 1), (0, 0)], seen


async def test_look_up_gives_the_record_as_published(harness: Harness) -> None:
    """A LookUp's job agrees with what the hub delivered: its last_seq is never
    ahead (a batch being written is not in it), so it is a cursor that misses nothing."""
    server = harness.server
    engine = server.engine
    plane = DataPlane(config=server.config, engine=engine, keyring=server.keyring)
    job = await harness.submit("chatty", {"lines": 20000})
    job_id = JobId(job["id"])
    recorder = Recorder()
    engine.hub.subscribe(JobTopic(job_id), recorder)
    recorder.last = engine.published_seq(JobTopic(job_id))
    principal = Principal(UserId("alice"), "user")
    seen = 0
    try:
        with trio.fail_after(30):
            while engine.live(job_id) is not None:
                found = await plane.fulfil(LookUp(job_id, principal))
                assert found.last_seq == recorder.last
                seen += 1
                await trio.lowlevel.checkpoint()  # a live job's look-up does not yield
    finally:
        engine.hub.unsubscribe(JobTopic(job_id), recorder)
    assert seen > 10
