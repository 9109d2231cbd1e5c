"""Direct-write fan-out: many subscribers, slow ones, stalled ones, memory."""

from __future__ import annotations

import gc
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from jobserver.core.ids import new_job_id
from jobserver.core.topics import JobTopic
from jobserver.dataplane.encoded import FrameCache
from jobserver.dataplane.fanout import REPLAY_PAGE, Channel, Member
from jobserver.dataplane.outbox import MAX_BACKLOG_BYTES, Counters, Outbox
from jobserver.dataplane.wire import encode_ws
from jobserver.dialects import Subscribe
from jobserver.dialects.logs import LogsRenderer

from .conftest import Harness
from .test_dataplane_helpers import (
    RawWebSocket,
    gated_job,
    logs_path,
    rss_bytes,
    running_server,
    submit_command,
)

# The pong deadline of the stall tests. The fast subscriber beside the stalled
# one answers every ping, but from this process's one event loop, which the
# server's pumping of the flood keeps busy: half a second was not always
# enough on a loaded machine (it was dropped with 1011). And the stalled one
# is pinged whenever its socket is not full yet: unanswered, that ping drops it
# at the deadline, before any stall, unless the flood has filled the kernel's
# buffers by then (some 2 MB here; at the 6,000 lines/s of a loaded machine
# that took 3 s, and 4 s was not always enough). Its stall drop comes at ping
# interval + this, after its socket filled.
STALL_PONG = 10.0

# Waits for go1, prints `count` lines, waits for go2, prints three more.
TWO_BURSTS = (
    "import os, sys, time\n"
    "def wait(p):\n"
    "    while not os.path.exists(p): time.sleep(0.005)\n"
    "wait(sys.argv[1])\n"
    "w = sys.stdout.write\n"
    "for i in range(int(sys.argv[3])): w('line %d %s\\n' % (i, 'y' * 100))\n"
    "sys.stdout.flush()\n"
    "wait(sys.argv[2])\n"
    "for i in range(3): print('tail', i)\n"
)


async def stream_stats(h: Harness) -> dict[str, float]:
    """The data plane's statistics, as /metrics shows them."""
    r = await h.client.get("/metrics")
    assert r.status_code == 200
    return _stream_figures(r.text)


def own_stats(h: Harness) -> dict[str, float]:
    """The same statistics read in this process, without a request (which leaves
    garbage of its own behind)."""
    metrics = h.server.engine.metrics
    assert metrics is not None
    return _stream_figures(metrics.render().decode())


def _stream_figures(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("jobserver_stream_"):
            name, value = line.split()
            out[name.removeprefix("jobserver_stream_")] = float(value)
    return out


async def wait_stats(h: Harness, timeout: float = 10.0, **wanted: float) -> dict[str, float]:
    stats: dict[str, float] = {}
    with trio.move_on_after(timeout):
        while True:
            stats = await stream_stats(h)
            if all(stats[k] == v for k, v in wanted.items()):
                return stats
            await trio.sleep(0.02)
    raise AssertionError(f"stream statistics never reached {wanted}: {stats}")


def log_lines(messages: list[dict[str, Any]]) -> list[str]:
    return [m["payload"]["message"] for m in messages if m["type"] == "log"]


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir) as harness:
        yield harness


async def test_200_subscribers_get_the_identical_sequence(h: Harness) -> None:
    go = h.data_dir / "go"
    job = await gated_job(h, go, 300)
    clients = []
    for _ in range(200):
        ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin))
        [first] = [json.loads(m) async for m in ws.messages(limit=1)]
        assert first["type"] == "system"
        clients.append(ws)
    stats = await stream_stats(h)
    assert stats["connections"] == 200 and stats["subscribers"] == 200
    assert stats["channels"] == 1  # one rendering and encoding for all of them
    received: list[list[dict[str, Any]]] = [[] for _ in clients]

    async def read(i: int) -> None:
        received[i] = await clients[i].collect()

    go.touch()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(len(clients)):
                nursery.start_soon(read, i)
    for ws in clients:
        assert ws.close_code == 1000
        await ws.aclose()
    assert log_lines(received[0]) == [f"line {i} " for i in range(300)]
    assert received[0][-1]["payload"]["status"] == "SUCCEEDED"
    assert all(r == received[0] for r in received)
    await wait_stats(h, connections=0, subscribers=0, channels=0)


async def test_subscribers_joining_at_once_and_mid_stream_miss_nothing(h: Harness) -> None:
    """Many connect together (one places the channel, the rest wait for it), then
    more join while lines flow (from the channel's recent events): every one gets
    every line after its start, in order, once."""
    go = h.data_dir / "go-join"
    job = await submit_command(h, ["python3", "-c", (
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
        "for i in range(400):\n    print('line', i, flush=True)\n    time.sleep(0.002)\n"),
        str(go)])
    await h.wait(job["id"], "RUNNING")
    received: list[list[dict[str, Any]]] = []

    async def subscribe(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
        ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin))
        try:
            got = [json.loads(m) async for m in ws.messages(limit=1)]
            task_status.started()
            got += await ws.collect()
            assert ws.close_code == 1000
            received.append(got)
        finally:
            await ws.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(subscribe)
            await wait_stats(h, subscribers=60, live=60)
            go.touch()
            for _ in range(40):
                await nursery.start(subscribe)
                await trio.sleep(0.01)
    assert len(received) == 100
    for got in received:
        lines = [int(m["payload"]["message"].split()[1]) for m in got if m["type"] == "log"]
        assert not lines or lines == list(range(lines[0], 400))
        assert got[-1]["payload"]["status"] == "SUCCEEDED"
    assert sum(1 for got in received if len(log_lines(got)) == 400) >= 60


async def test_a_member_that_leaves_while_waiting_for_the_placing_stays_gone() -> None:
    """A member waiting for another to place a new channel's renderer whose
    connection closes meanwhile ends its catch-up; it is not promoted."""
    job_id = new_job_id()
    released: list[Channel] = []
    channel = Channel((JobTopic(job_id), "logs", "ws"), encode_ws, FrameCache(),
                      release=released.append)
    channel.last_seq = 3
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)

        class Sink:
            outbox = Outbox(a, Counters(), wake=lambda: None)
            readers = trio.Semaphore(1)

            def wake(self) -> None:
                pass

        renderer = LogsRenderer(job_id, "job", with_seq=False, running=True)
        member = Member(Sink(), channel, Subscribe(JobTopic(job_id), 3, renderer), max_lag=100)
        channel.placing = trio.Event()  # another member is reading the store
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(member.catch_up, None))  # type: ignore[arg-type]
            await trio.testing.wait_all_tasks_blocked()
            assert member in channel.pending
            member.detach()  # its connection closed
            channel.renderer = renderer  # the other member went live
            channel.placing.set()
        assert not member.live and member.detached
        assert released == [channel] and not channel.live and not channel.pending


async def read_until_flowing(ws: RawWebSocket, got: list[dict[str, Any]]) -> None:
    """Read (answering pings) up to the first log line, then stop reading."""
    while not log_lines(got):
        texts = [t async for t in ws.messages(limit=1)]
        if not texts:
            return
        got.append(json.loads(texts[0]))
    await ws.send_answers()


async def _burst(h: Harness, name: str, count: int, *, stall: bool
                 ) -> tuple[int, int, tuple[RawWebSocket, list[dict[str, Any]]] | None, str]:
    """One gated job of `count` padded lines read by a fast subscriber (and, when
    `stall`, one that stops reading at the first line: it, and what it read):
    the process's RSS peak and the data plane's largest backlog while it ran.

    The stalled one answers pings until the flood reaches it: idle before that,
    it would be pinged, and dropped at the pong deadline whether or not its
    socket had filled by then (on a busy machine the job can be slower than
    that deadline), with no stall to see.
    """
    go = h.data_dir / name
    job = await gated_job(h, go, count, "x" * 100)
    port = h.server.port
    fast = await RawWebSocket.connect(port, logs_path(job["id"], h.admin, "&since=0"))
    stalled = None
    early: list[dict[str, Any]] = []
    if stall:
        stalled = await RawWebSocket.connect(port, logs_path(job["id"], h.admin, "&since=0"))
    peak = rss_bytes()
    backlog = 0
    lines = 0

    async def sample() -> None:
        nonlocal peak, backlog
        while True:
            peak = max(peak, rss_bytes())
            backlog = max(backlog, int((await stream_stats(h))["backlog_bytes"]))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        if stalled is not None:
            nursery.start_soon(read_until_flowing, stalled, early)
        go.touch()
        expected = 0
        async for text in fast.messages():
            message = json.loads(text)
            if message["type"] == "log":
                assert message["payload"]["message"] == f"line {expected} {'x' * 100}"
                expected += 1
        lines = expected
        if stall:  # its full socket holds a backlog for the stall timeout: see it
            with trio.move_on_after(10):
                while not backlog:
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert fast.close_code == 1000 and lines == count
    await fast.aclose()
    return peak, backlog, None if stalled is None else (stalled, early), job["id"]


async def test_stalled_subscriber_costs_nothing_and_resumes_with_since(data_dir: Path) -> None:
    count = 200_000
    async with running_server(data_dir, max_lag_events=1000, ws_ping_interval=0.5,
                              ws_ping_timeout=STALL_PONG) as h:
        # The same job without the stalled subscriber, the process's own high water:
        # twice, and read once more from the store, so that the store's page caches
        # (the writer's is 32 MiB, more than one job's output) fill here, not below.
        first_peak, _, _, warm_job = await _burst(h, "warm", count, stall=False)
        late = await RawWebSocket.connect(h.server.port, logs_path(warm_job, h.admin, "&since=0"))
        assert len([1 async for _ in late.messages()]) > count
        await late.aclose()
        warm_peak, _, _, _ = await _burst(h, "warm-again", count, stall=False)
        warm_peak = max(first_peak, warm_peak)
        peak, backlog, held, job_id = await _burst(h, "stalled", count, stall=True)
        assert held is not None
        stalled, early = held
        # What the stalled one holds is bounded by the outbox, not by what it missed.
        missed = count * len(f"line {count} {'x' * 100}")
        assert 0 < backlog <= MAX_BACKLOG_BYTES + REPLAY_PAGE * 200
        assert peak - warm_peak < missed, (
            f"RSS rose {(peak - warm_peak) >> 20} MiB with a stalled subscriber "
            f"({missed >> 20} MiB of output it did not read)")
        # The stalled one was dropped once its socket stayed full for the stall timeout.
        stats = await wait_stats(h, 3 * STALL_PONG, connections=0, slow_writers=0,
                                 backlog_bytes=0)
        assert stats["stalled_connections_total"] == 1  # and counted, once
        got = early + await stalled.collect()
        await stalled.aclose()
        assert stalled.close_code in (1006, 1011)
        last = max(m.get("seq", 0) for m in got)
        again = await RawWebSocket.connect(h.server.port,
                                           logs_path(job_id, h.admin, f"&since={last}"))
        rest = await again.collect()
        await again.aclose()
        assert again.close_code == 1000 and rest[-1]["payload"]["status"] == "SUCCEEDED"
        seqs = [m["seq"] for m in got + rest if m["type"] == "log"]
        assert seqs == list(range(seqs[0], seqs[0] + count))
        assert log_lines(got + rest) == [f"line {i} {'x' * 100}" for i in range(count)]


async def test_lagging_subscriber_catches_up_and_goes_live_again(data_dir: Path) -> None:
    count = 100_000
    async with running_server(data_dir, max_lag_events=1000, ws_ping_interval=10,
                              ws_ping_timeout=10) as h:
        go1, go2 = h.data_dir / "go1", h.data_dir / "go2"
        job = await submit_command(h, ["python3", "-c", TWO_BURSTS, str(go1), str(go2),
                                       str(count)])
        await h.wait(job["id"], "RUNNING")
        port = h.server.port
        fast = await RawWebSocket.connect(port, logs_path(job["id"], h.admin, "&replay=1"))
        slow = await RawWebSocket.connect(port, logs_path(job["id"], h.admin, "&replay=1"))
        go1.touch()
        fast_got = [json.loads(m) async for m in fast.messages(limit=2 + 1 + count)]
        assert len(log_lines(fast_got)) == count
        # The slow one is off the live path, its backlog bounded, its writer waiting
        # for the socket before it reads on from the store.
        stats = await wait_stats(h, subscribers=2, live=1, slow_writers=1)
        assert 0 < stats["backlog_bytes"] <= MAX_BACKLOG_BYTES + 2000 * 200
        slow_got = [json.loads(m) async for m in slow.messages(limit=2 + 1 + count)]
        assert [m.get("seq") for m in slow_got] == [m.get("seq") for m in fast_got]
        assert slow_got[1:] == fast_got[1:]  # after `system`, whose ts is its own
        await wait_stats(h, live=2, catching_up=0, slow_writers=0)  # live again
        go2.touch()
        for ws in (fast, slow):
            tail = await ws.collect()
            assert ws.close_code == 1000
            assert log_lines(tail) == ["tail 0", "tail 1", "tail 2"]
            assert tail[-1]["payload"]["status"] == "SUCCEEDED"
            await ws.aclose()


async def test_closed_connections_leave_no_garbage_cycles(h: Harness) -> None:
    """Reference counting frees a closed connection: nothing waits for a full
    collection (whose pause, with thousands of connections, is the latency tail)."""
    go = h.data_dir / "go-cycles"
    job = await gated_job(h, go, 3)
    # The server's first health checks (at start) are over: their garbage is theirs.
    with trio.fail_after(10):
        while not {"api", "database"} <= set(h.server.engine.health):
            await trio.sleep(0.01)
    for polite in (True, False):  # a close handshake, and a peer that just goes
        clients = []
        for _ in range(20):
            ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin))
            assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
            clients.append(ws)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for ws in clients:
                if polite:
                    await ws.close()
                    await ws.collect()
                await ws.aclose()
            # Waited for in-process: each scrape over HTTP leaves cycles of its
            # own (the client's request and response objects), one set per poll,
            # and a busy machine takes more than 20 polls to close 20 connections.
            with trio.fail_after(10):
                while own_stats(h)["connections"]:
                    await trio.sleep(0.02)
            del clients, ws
            gc.collect()
            kinds = Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        leaked = {k: n for k, n in kinds.items() if n >= 20}  # one or more per connection
        assert not leaked, f"closed connections left cycles behind: {leaked}"
    go.touch()
