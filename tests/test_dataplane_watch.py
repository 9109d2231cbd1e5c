"""A raw channel (a session's `Watch`): the events themselves reach the sink, in seq
order, each once: history from the store, then live, and back to the store when
too many wait for the session."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from jobserver.core import events as ev
from jobserver.core.ids import JobId, new_job_id
from jobserver.core.topics import JobTopic
from jobserver.dataplane.encoded import FrameCache
from jobserver.dataplane.fanout import Channel, Member
from jobserver.dataplane.sinks import EVENTS, UNRENDERED
from jobserver.dataplane.wire import encode_nothing
from jobserver.dialects import Subscribe


def progress(job_id: JobId, seq: int) -> ev.Event:
    return ev.Progress(job_id=job_id, seq=seq, ts=float(seq), pct=float(seq))


class Store:
    def __init__(self, events: list[ev.Event]) -> None:
        self.events = events
        self.reads = 0

    async def events_after(self, job_id: JobId, after: int, *, limit: int) -> list[ev.Event]:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        return [e for e in self.events if e.seq > after][:limit]


class Sink:
    """A connection's side: queues what it is given, hands it over when told."""

    def __init__(self) -> None:
        self.queued: list[ev.Event] = []
        self.taken: list[int] = []
        self.readers = trio.Semaphore(1)
        self.outbox = None
        self.lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        pass

    def take_events(self, member: Member, events: Sequence[ev.Event]) -> int:
        self.queued.extend(events)
        return len(self.queued)

    def give(self) -> None:
        self.taken.extend(e.seq for e in self.queued)
        self.queued.clear()
        self.lot.unpark_all()

    async def wait_events_taken(self) -> None:
        if self.queued:
            await self.lot.park()


def raw_channel(job_id: JobId, last_seq: int) -> Channel:
    channel = Channel((JobTopic(job_id), EVENTS, EVENTS), encode_nothing, FrameCache(),
                      release=lambda c: None)
    channel.last_seq = last_seq
    return channel


def member_of(channel: Channel, sink: Sink, after: int, *, max_lag: int = 10) -> Member:
    return Member(sink, channel, Subscribe(channel.topic, after, UNRENDERED),  # type: ignore[arg-type]
                  max_lag=max_lag)


async def test_history_then_live_then_back_to_the_store() -> None:
    job_id = new_job_id()
    store = Store([progress(job_id, s) for s in range(1, 6)])
    channel = raw_channel(job_id, 5)
    sink = Sink()
    member = member_of(channel, sink, 2, max_lag=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.catch_up, store)
        await trio.testing.wait_all_tasks_blocked()
        assert sink.queued and not member.live  # seq 3..5, waiting for the session
        sink.give()
        await trio.testing.wait_all_tasks_blocked()
    assert member.live and sink.taken == [3, 4, 5]
    # Live: the channel hands the same events over, nothing encoded.
    more = [progress(job_id, s) for s in range(6, 8)]
    store.events += more
    channel.deliver(more)
    assert [e.seq for e in sink.queued] == [6, 7] and member.live
    sink.give()
    # Too many waiting for the session: back to catching up, from the cursor.
    burst = [progress(job_id, s) for s in range(8, 12)]
    store.events += burst
    channel.deliver(burst)
    assert not member.live and member.needs_catch_up and member.cursor == 11
    sink.give()
    late = [progress(job_id, 12)]
    store.events += late
    channel.deliver(late)  # not live: not handed over here
    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.catch_up, store)
        await trio.testing.wait_all_tasks_blocked()
        sink.give()
    assert member.live and sink.taken == list(range(3, 13))


async def test_a_member_at_the_channel_s_last_seq_goes_live_without_a_read() -> None:
    job_id = new_job_id()
    store = Store([progress(job_id, 1)])
    channel = raw_channel(job_id, 1)
    sink = Sink()
    member = member_of(channel, sink, 1)
    await member.catch_up(store)
    assert member.live and store.reads == 0 and not sink.queued


def line(job_id: JobId, seq: int) -> ev.Event:
    return ev.Log(job_id=job_id, seq=seq, ts=float(seq), stream="stdout", line="x")


async def test_without_lines_the_session_gets_no_output_lines() -> None:
    job_id = new_job_id()
    history = [progress(job_id, 1), line(job_id, 2), line(job_id, 3), progress(job_id, 4)]
    store = Store(history)
    channel = raw_channel(job_id, 4)
    sink, other = Sink(), Sink()
    member = member_of(channel, sink, 0)
    member.lines = False
    with_lines = member_of(channel, other, 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(member.catch_up, store)
        await trio.testing.wait_all_tasks_blocked()
        sink.give()
        nursery.start_soon(with_lines.catch_up, store)
    assert member.live and with_lines.live and sink.taken == [1, 4]
    channel.deliver([line(job_id, 5), line(job_id, 6)])  # nothing for the session ...
    assert not sink.queued and member.cursor == 6  # ... but its cursor moved past them
    channel.deliver([line(job_id, 7), progress(job_id, 8)])
    sink.give()
    assert sink.taken == [1, 4, 8]
    member.lines = True  # from the next batch on, no read
    channel.deliver([line(job_id, 9)])
    sink.give()
    other.give()
    assert sink.taken == [1, 4, 8, 9] and other.taken == [5, 6, 7, 8, 9]
    assert store.reads == 1
