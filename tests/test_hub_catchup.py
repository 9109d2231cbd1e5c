"""The hub and the one catch-up routine, without a server: a real engine and store,
a data plane's channels, and a member writing into one end of a socket pair.

Events go in through the engine (`record`, `record_logs`); frames come out of
the socket; what is asserted is the bytes a client would read: every event
after its cursor, in order, once, through live delivery, a lag and its
catch-up, and across a topic's end.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from jobserver.auth import KeyRing, Principal
from jobserver.core import events as ev
from jobserver.core.ids import UserId
from jobserver.core.states import Status
from jobserver.core.topics import ALL_JOBS, JobTopic, OwnerTopic, TopicEvent
from jobserver.dataplane.fanout import Member
from jobserver.dataplane.outbox import Counters, Outbox
from jobserver.dataplane.plane import DataPlane
from jobserver.dataplane.wire import encode_sse
from jobserver.dialects import Rendered, SseEvent, Subscribe
from jobserver.dialects.native import NativeRenderer
from jobserver.engine import Engine
from jobserver.hub import Hub
from jobserver.livejob import LiveJob, Submission
from jobserver.store.sqlite import SqliteStore

from .conftest import make_config

ALICE = Principal(UserId("alice"), "user")


class Sink:
    """A connection's side as members see it, on one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.outbox = Outbox(sock, Counters(), wake=self.wake)
        self.readers = trio.Semaphore(4)
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class Client:
    """The other end: reads what arrived and parses the SSE ids."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def read_nowait(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.data += chunk

    async def keep_reading(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            self.read_nowait()

    def ids(self) -> list[int]:
        self.read_nowait()
        return [int(line[4:]) for line in self.data.decode().split("\n")
                if line.startswith("id: ")]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        yield a, b


async def _plane(tmp_path: Path, nursery: trio.Nursery, max_lag_events: int) -> DataPlane:
    store = SqliteStore(tmp_path / "jobserver.db", linger=0)
    await nursery.start(store.run)
    config = make_config(tmp_path / "data", max_lag_events=max_lag_events)
    engine = Engine(config, store, Hub())
    return DataPlane(config=config, engine=engine, keyring=KeyRing.load_or_create(tmp_path))


@pytest.fixture
async def plane(tmp_path: Path, nursery: trio.Nursery) -> DataPlane:
    return await _plane(tmp_path, nursery, 50)


@pytest.fixture
async def roomy_plane(tmp_path: Path, nursery: trio.Nursery) -> DataPlane:
    """A plane whose members never lag here: these tests have no connection
    writer to send a lagged member back to catching up."""
    return await _plane(tmp_path, nursery, 100_000)


async def _job(plane: DataPlane) -> LiveJob:
    job = await plane.engine.submit(ALICE, Submission(template="echo",
                                                      params={"message": "hi"}))
    live = plane.engine.live(job.id)
    assert live is not None
    return live


async def _lines(plane: DataPlane, live: LiveJob, count: int, *, start: int = 0) -> None:
    await plane.engine.record_logs(live, "stdout", 1.0,
                                   [f"line {i}" for i in range(start, start + count)])
    await plane.engine.store.wait_flushed()  # published once committed


async def _finish(plane: DataPlane, live: LiveJob) -> None:
    if live.job.status is Status.QUEUED:
        await plane.engine.record(live, [lambda s: ev.Started(
            job_id=live.job.id, seq=s, ts=1.5, pid=1, command="echo hi")])
    await plane.engine.record(live, [lambda s: ev.Finished(
        job_id=live.job.id, seq=s, ts=2.0, status=Status.SUCCEEDED.value, outcome="succeeded",
        exit_code=0)])
    await plane.engine.store.wait_flushed()


async def _catch_up(plane: DataPlane, member: Member, client: Client) -> None:
    """Run the member's catch-up as its connection would, with the client reading
    (a catch-up waits for its backlog to drain)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.keep_reading)
        nursery.start_soon(member.catch_up, plane.engine)
        while member.needs_catch_up or not (member.live or member.ended or member.detached):
            await member.outbox.flush(stall_timeout=5)  # the writer's part
            await trio.sleep(0.001)
        await member.outbox.flush(stall_timeout=5)
        nursery.cancel_scope.cancel()
    client.read_nowait()


def test_the_hub_numbers_aggregate_topics_once_for_all_their_subscribers() -> None:
    hub = Hub()
    got: dict[str, list[Any]] = {"a": [], "b": [], "all": []}

    class Into:
        def __init__(self, name: str) -> None:
            self.name = name

        def deliver(self, events: Sequence[Any]) -> None:
            got[self.name].extend(events)

    a, b = OwnerTopic(UserId("a")), OwnerTopic(UserId("b"))
    subs = [Into("a"), Into("b"), Into("all")]
    hub.subscribe(a, subs[0])
    hub.subscribe(b, subs[1])
    hub.subscribe(ALL_JOBS, subs[2])
    e1 = ev.Queued(job_id="j1", seq=1, ts=0.0)  # type: ignore[arg-type]
    e2 = ev.Queued(job_id="j2", seq=1, ts=0.0)  # type: ignore[arg-type]
    hub.publish_aggregate(a, [e1])
    hub.publish_aggregate(ALL_JOBS, [e1])
    hub.publish_aggregate(b, [e2])
    hub.publish_aggregate(ALL_JOBS, [e2])
    hub.publish_aggregate(OwnerTopic(UserId("nobody")), [e2])  # nobody listens: not numbered
    assert [t.event for t in got["a"]] == [e1] and [t.event for t in got["b"]] == [e2]
    positions = [t.seq for t in got["all"]]
    assert positions == sorted(positions) and len(set(positions)) == 2
    assert got["b"][0].seq > got["a"][0].seq
    hub.unsubscribe(a, subs[0])
    assert hub.subscriber_count(a) == 0 and hub.statistics().topics == 2


async def test_live_events_in_frames_out(plane: DataPlane,
                                         pair: tuple[socket.socket, socket.socket]) -> None:
    live = await _job(plane)
    sink, client = Sink(pair[0]), Client(pair[1])
    member = plane.join(sink, Subscribe(JobTopic(live.job.id), 1, NativeRenderer()), "sse")
    await _catch_up(plane, member, client)
    assert member.live
    await _lines(plane, live, 3)
    stored = await plane.engine.events_after(live.job.id, 1, limit=10)
    expected = b"".join(encode_sse(NativeRenderer().render(e).messages) for e in stored)
    client.read_nowait()
    assert client.data == expected and client.ids() == [2, 3, 4]
    plane.leave(member)


async def test_a_member_that_lags_catches_up_from_the_store_and_goes_live_again(
        plane: DataPlane, pair: tuple[socket.socket, socket.socket]) -> None:
    live = await _job(plane)
    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sink, client = Sink(pair[0]), Client(pair[1])
    member = plane.join(sink, Subscribe(JobTopic(live.job.id), 1, NativeRenderer()), "sse")
    await _catch_up(plane, member, client)
    for batch in range(20):  # the client reads nothing meanwhile: past max_lag_events
        await _lines(plane, live, 10, start=batch * 10)
    assert not member.live and member.needs_catch_up
    await _catch_up(plane, member, client)
    assert member.live
    await _lines(plane, live, 5, start=200)
    await _finish(plane, live)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.keep_reading)
        await member.outbox.flush(stall_timeout=5)
        nursery.cancel_scope.cancel()
    assert member.ended
    assert client.ids() == list(range(2, live.job.last_seq + 1))  # all, once, in order
    plane.leave(member)


async def test_resuming_across_the_topics_end(plane: DataPlane,
                                              pair: tuple[socket.socket, socket.socket]) -> None:
    live = await _job(plane)
    await _lines(plane, live, 30)
    await _finish(plane, live)
    plane.engine.forget(live.job.id)
    sink, client = Sink(pair[0]), Client(pair[1])
    member = plane.join(sink, Subscribe(JobTopic(live.job.id), 7, NativeRenderer()), "sse")
    await _catch_up(plane, member, client)
    assert member.ended and not member.live
    ids = client.ids()
    assert ids == list(range(8, live.job.last_seq + 1))
    assert "event: finished" in client.data.decode()
    plane.leave(member)


class TypesRenderer:
    """An aggregate topic's events as SSE: id = the topic's position."""

    key = "types"

    def render(self, event: Any) -> Rendered:
        assert isinstance(event, TopicEvent)
        return Rendered((SseEvent(data=event.event.TYPE, id=str(event.seq)),))

    def advance(self, event: Any) -> None:
        pass

    def after(self, event: Any) -> TypesRenderer:
        return self


async def test_an_owner_topic_is_live_at_once_and_a_laggard_leaves(
        plane: DataPlane, pair: tuple[socket.socket, socket.socket]) -> None:
    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sink, client = Sink(pair[0]), Client(pair[1])
    member = plane.join(sink, Subscribe(OwnerTopic(ALICE.sub), None, TypesRenderer()), "sse")
    assert member.live and not member.needs_catch_up
    first = await _job(plane)
    await _lines(plane, first, 50)  # output lines are not on the owner's topic
    await _finish(plane, first)
    client.read_nowait()
    assert "data: queued" in client.data.decode() and "data: finished" in client.data.decode()
    assert "data: log" not in client.data.decode()
    ids = client.ids()
    assert ids == sorted(ids) and len(ids) == 3  # queued, started, finished
    for _ in range(200):  # nobody reads: the member falls behind and is dropped
        await _job(plane)
        if member.lagged:
            break
    assert member.lagged and member.detached and sink.woken
    plane.leave(member)


def test_a_catch_up_page_takes_buffered_events_the_store_no_longer_has() -> None:
    """Output a log cap trimmed from the store after it was published: a member
    catching up meanwhile has it in its buffer and still sends it, in order."""
    from jobserver.dataplane.fanout import _with_buffered

    def log(seq: int) -> ev.Log:
        return ev.Log(job_id="j", seq=seq, ts=1.0, stream="stdout",  # type: ignore[arg-type]
                      line=f"line {seq}")

    page = [log(s) for s in (4, 5, 9, 10)]  # 6..8 trimmed
    buffer = [log(s) for s in range(6, 12)]  # published while the member caught up
    merged = _with_buffered(page, buffer, 3)
    assert [e.seq for e in merged] == list(range(4, 11))
    assert _with_buffered([log(4), log(5)], buffer, 3) == [log(4), log(5)]  # no gap


class CountingReader:
    """The engine as a member's store, counting the reads that reach the store."""

    def __init__(self, plane: DataPlane) -> None:
        self.engine = plane.engine
        self.reads = 0

    async def events_after(self, job_id: Any, after: int, *, limit: int) -> list[ev.Event]:
        self.reads += 1
        return await self.engine.events_after(job_id, after, limit=limit)


async def test_joiners_from_the_start_share_the_first_ones_store_read(
        plane: DataPlane) -> None:
    """A young job's story, read from the store once by its first member from seq
    0, is kept by the channel: the members joining from 0 after it get the same
    bytes without a read of their own (a thousand clients arriving at once would
    otherwise each wait for one)."""
    live = await _job(plane)
    await _lines(plane, live, 30)
    reader = CountingReader(plane)
    clients = []
    with contextlib.ExitStack() as sockets:
        await _join_twenty(plane, live, reader, clients, sockets)


async def _join_twenty(plane: DataPlane, live: LiveJob, reader: CountingReader,
                       clients: list[Any], sockets: contextlib.ExitStack) -> None:
    for i in range(20):
        a, b = socket.socketpair()
        sockets.enter_context(a)
        sockets.enter_context(b)
        a.setblocking(False)
        b.setblocking(False)
        sink, client = Sink(a), Client(b)
        member = plane.join(sink, Subscribe(JobTopic(live.job.id), 0, NativeRenderer()), "sse")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.keep_reading)
            nursery.start_soon(member.catch_up, reader)
            while not member.live:
                await member.outbox.flush(stall_timeout=5)
                await trio.sleep(0.001)
            await member.outbox.flush(stall_timeout=5)
            nursery.cancel_scope.cancel()
        client.read_nowait()
        clients.append((member, client, a, b))
        if i == 0:
            assert reader.reads >= 1
            first_reads = reader.reads
    assert reader.reads == first_reads  # the other 19 read nothing
    await _lines(plane, live, 3, start=30)
    for member, client, _, _ in clients:
        client.read_nowait()
        assert client.ids() == list(range(1, live.job.last_seq + 1))
        assert client.data == clients[0][1].data
        plane.leave(member)


class SlowReader(CountingReader):
    """A store whose reads take a while (a busy disk): joiners arrive during one."""

    async def events_after(self, job_id: Any, after: int, *, limit: int) -> list[ev.Event]:
        self.reads += 1
        await trio.sleep(0.05)
        return await self.engine.events_after(job_id, after, limit=limit)


def _sockets(stack: contextlib.ExitStack) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        stack.enter_context(s)
        s.setblocking(False)
    return a, b


async def _until_live(members: Sequence[Member]) -> None:
    while not all(m.live for m in members):
        for member in members:
            await member.outbox.flush(stall_timeout=5)  # the writers' part
        await trio.sleep(0.001)


async def test_joiners_arriving_together_from_the_start_share_one_store_read(
        plane: DataPlane) -> None:
    """Twenty clients of a young job arriving while the first one's read is under
    way wait for it instead of each queueing a read of their own."""
    live = await _job(plane)
    await _lines(plane, live, 30)
    reader = SlowReader(plane)
    with contextlib.ExitStack() as stack, trio.fail_after(10):
        pairs = [_sockets(stack) for _ in range(20)]
        clients = [Client(b) for _, b in pairs]
        members = [plane.join(Sink(a), Subscribe(JobTopic(live.job.id), 0, NativeRenderer()),
                              "sse") for a, _ in pairs]
        async with trio.open_nursery() as nursery:
            for member, client in zip(members, clients, strict=True):
                nursery.start_soon(client.keep_reading)
                nursery.start_soon(member.catch_up, reader)
            await _until_live(members)
            nursery.cancel_scope.cancel()
        assert reader.reads == 1
        await _lines(plane, live, 3, start=30)
        for member, client in zip(members, clients, strict=True):
            await member.outbox.flush(stall_timeout=5)
            assert client.ids() == list(range(1, live.job.last_seq + 1))
            assert client.data == clients[0].data
            plane.leave(member)


async def test_a_member_catching_up_during_a_flood_goes_live_and_misses_nothing(
        roomy_plane: DataPlane) -> None:
    """A member joining while the job prints without a pause joins the live set
    during the flood (it is not fed by its own catch-up, a page and a wait at a
    time, up to the stream's end) and gets every event once, in order."""
    plane = roomy_plane
    live = await _job(plane)
    await _lines(plane, live, 1500)  # more than the channel's Recent: a store read
    topic = JobTopic(live.job.id)
    with contextlib.ExitStack() as stack, trio.fail_after(30):
        (a1, b1), (a2, b2) = _sockets(stack), _sockets(stack)
        first, first_client = plane.join(Sink(a1), Subscribe(topic, 0, NativeRenderer()),
                                         "sse"), Client(b1)
        joiner, client = plane.join(Sink(a2), Subscribe(topic, 0, NativeRenderer()),
                                    "sse"), Client(b2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_client.keep_reading)
            nursery.start_soon(client.keep_reading)
            nursery.start_soon(first.catch_up, plane.engine)
            await _until_live([first])
            nursery.start_soon(joiner.catch_up, plane.engine)
            batch = live_at = 0
            # The flood, 5 lines a write, until the joiner is live and for as
            # long again after (a joiner that never joins fails the deadline).
            while not joiner.live or batch < 2 * live_at + 20:
                await plane.engine.record_logs(live, "stdout", 1.0, [
                    f"flood {batch} {i}" for i in range(5)])
                for member in (first, joiner):
                    await member.outbox.flush(stall_timeout=5)
                if not joiner.live:
                    live_at = batch + 1
                batch += 1
            await plane.engine.store.wait_flushed()
            last = live.job.last_seq
            while max([0, *first_client.ids()]) < last or max([0, *client.ids()]) < last:
                for member in (first, joiner):
                    await member.outbox.flush(stall_timeout=5)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert first.live and joiner.live  # neither fell back to catching up
        assert client.ids() == list(range(1, last + 1))
        assert first_client.ids() == client.ids()
        plane.leave(first)
        plane.leave(joiner)
