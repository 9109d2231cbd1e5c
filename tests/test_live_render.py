"""The live dialect's pieces without a server: the event mapping, order under tied
and backwards timestamps, batches on a real socket, determinism, the 30 minutes."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import trio
import wsproto
from wsproto.events import TextMessage

from jobserver.auth import KeyRing, Principal, progress_signer
from jobserver.config import Config
from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, new_job_id
from jobserver.core.job import Job
from jobserver.core.states import Status
from jobserver.core.topics import JobTopic
from jobserver.dataplane.batch import BatchChannel, BatchClock
from jobserver.dataplane.encoded import FrameCache
from jobserver.dataplane.fanout import Member
from jobserver.dataplane.outbox import Counters, Outbox
from jobserver.dataplane.wire import ENCODERS, FRAMING, ITEMS
from jobserver.dialects import Authenticate, Batch, LookUp, SessionEnv, StreamRequest, Subscribe
from jobserver.dialects.live import BATCH_HEAD, BATCH_TAIL, LiveRenderer, LiveSession

from .live_helpers import authorize

JOB = new_job_id()
NOW = float(int(time.time()))


def signer(tmp_path: Path) -> Any:
    return progress_signer(KeyRing.load_or_create(tmp_path), 3600)


def history() -> list[ev.Event]:
    j, t = JOB, NOW
    return [
        ev.Queued(job_id=j, seq=1, ts=t),
        ev.Started(job_id=j, seq=2, ts=t, pid=5, command="a", step="fetch"),
        ev.Log(job_id=j, seq=3, ts=t, stream="stdout", line="noise"),
        ev.Progress(job_id=j, seq=4, ts=t, pct=25.0, at=1, of=4, message="a quarter"),
        ev.Progress(job_id=j, seq=5, ts=t, pct=0.0, message=None),
        ev.Step(job_id=j, seq=6, ts=t, name="fetch", status="Succeeded"),
        ev.Started(job_id=j, seq=7, ts=t, pid=6, command="b", step="build"),
        ev.Step(job_id=j, seq=8, ts=t, name="build", status="Running"),
        ev.Error(job_id=j, seq=9, ts=t, code="disk", message="disk nearly full"),
        ev.Warning(job_id=j, seq=10, ts=t, message="bad control line"),
        ev.Result(job_id=j, seq=11, ts=t, data={"a": 1}),
        ev.Spawned(job_id=j, seq=12, ts=t, child_id="c-1", template="echo", name=None),
        ev.Bounce(job_id=j, seq=13, ts=t, reason="server shutting down"),
        ev.Started(job_id=j, seq=14, ts=t, pid=7, command="a", step="fetch"),
        ev.Finished(job_id=j, seq=15, ts=t, status="CANCELLED", outcome="cancelled",
                    message="Job cancelled by user request."),
    ]


def render_all(renderer: LiveRenderer, events: list[ev.Event]) -> tuple[list[dict[str, Any]],
                                                                       bool]:
    out, end = [], False
    for event in events:
        rendered = renderer.render(event)
        out.extend(json.loads(m) for m in rendered.messages)  # type: ignore[arg-type]
        end = rendered.end
    return out, end


def test_the_event_mapping(tmp_path: Path) -> None:
    items, end = render_all(LiveRenderer(signer(tmp_path), ttl=3600), history())
    assert end
    assert [(i["type"], i["message"]) for i in items] == [
        ("queued", "waiting for a worker to be available"),
        ("started", "started"),
        ("progress", "a quarter"),
        ("progress", "working"),
        ("progress", "fetch: succeeded"),
        ("progress", "build: started"),
        ("progress", "build: running"),
        ("progress", "disk nearly full"),
        ("spawned", "started echo"),
        ("bounce", "back to the queue (server shutting down); it will run again"),
        ("started", "started"),  # a bounced job starts anew
        ("failed", "Job cancelled by user request."),
    ]
    assert [i["indicator"] for i in items] == [
        {"type": "spinner"}, {"type": "spinner"}, {"type": "bar", "at": 1, "of": 4},
        {"type": "spinner"}, None, {"type": "spinner"}, {"type": "spinner"}, None, None,
        {"type": "spinner"}, {"type": "spinner"}, {"type": "final"}]
    assert items[8]["spawned"]["uid"] == "c-1" and items[8]["spawned"]["name"] == "echo"


def test_spawned_tokens_are_deterministic_and_renderers_resume_from_one_event(
        tmp_path: Path) -> None:
    sign = signer(tmp_path)
    events = history()
    whole, _ = render_all(LiveRenderer(sign, ttl=3600), events)
    # A renderer placed after any event renders the rest exactly as one that saw it all.
    for i, event in enumerate(events[:-1]):
        rest, _ = render_all(LiveRenderer(sign, ttl=3600).after(event), events[i + 1:])
        assert rest == whole[len(whole) - len(rest):], i
    token = whole[8]["spawned"]["jwt"]
    assert KeyRing.load_or_create(tmp_path).verify(token, purpose="progress").job == "c-1"


class SocketSink:
    """A connection's side of a member, as small as it gets: a real outbox on a socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.outbox = Outbox(sock, Counters(), wake=self.wake)
        self.readers = trio.Semaphore(1)
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def batching_channel(tmp_path: Path, batch: Batch, sink: SocketSink
                     ) -> tuple[BatchChannel, BatchClock, Member, LiveRenderer]:
    clock = BatchClock()
    renderer = LiveRenderer(signer(tmp_path), ttl=3600)
    subscribe = Subscribe(JobTopic(JOB), 0, renderer, batch)
    channel = BatchChannel((JobTopic(JOB), "test", "ws"), ENCODERS[ITEMS], FrameCache(),
                           release=lambda c: None, batch=batch, framing=FRAMING["ws"],
                           clock=clock)
    member = Member(sink, channel, subscribe, max_lag=1000)
    channel.add_pending(member)
    channel.promote(member, renderer)  # live from the start
    return channel, clock, member, renderer


def progress(seq: int, ts: float) -> ev.Progress:
    return ev.Progress(job_id=JOB, seq=seq, ts=ts, pct=0.0, at=seq, of=9, message=f"m{seq}")


def read_ws_messages(sock: socket.socket) -> list[str]:
    """The text messages the server side wrote to `sock`, read by a real WebSocket parser."""
    client = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
    sock.settimeout(2)
    client.receive_data(sock.recv(1 << 20))
    return [e.data for e in client.events() if isinstance(e, TextMessage)]


def nothing_sent(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    return False


async def test_ties_and_backwards_timestamps_keep_seq_order(tmp_path: Path,
                                                            autojump_clock: Any) -> None:
    """One message per window, the events in seq order whatever their clocks said."""
    stamps = [5.0, 5.0, 4.0, 6.0, 6.0, 1.0]
    a, b = socket.socketpair()
    try:
        channel, clock, member, _ = batching_channel(
            tmp_path, Batch(BATCH_HEAD, BATCH_TAIL, 0.05), SocketSink(a))
        start = trio.current_time()  # the mock clock stands still between awaits
        for seq in (1, 2, 3):  # three events published one by one, then three at once
            channel.deliver([progress(seq, stamps[seq - 1])])
        channel.deliver([progress(seq, stamps[seq - 1]) for seq in (4, 5, 6)])
        assert nothing_sent(b) and channel.pending_window and channel.sent_seq == 0
        assert channel.last_seq == 6 and member.cursor == 0
        channel.send_due(start + 0.04)  # not yet due
        assert nothing_sent(b)
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            await trio.sleep(0.06)  # the clock task sends it at 0.05
            nursery.cancel_scope.cancel()
        assert not channel.pending_window and channel.sent_seq == 6 and member.cursor == 6
        [text] = read_ws_messages(b)
    finally:
        a.close()
        b.close()
    packet = json.loads(text)
    assert packet["type"] == "event_batch" and packet["success"] is True
    got = packet["data"]["events"]
    assert [e["message"] for e in got] == [f"m{i}" for i in range(1, 7)]
    assert [e["occurred_at"] for e in got] == stamps


async def test_a_batch_goes_at_once_past_its_size_and_at_the_end(tmp_path: Path,
                                                                 autojump_clock: Any) -> None:
    a, b = socket.socketpair()
    try:
        channel, _, member, _ = batching_channel(
            tmp_path, Batch(BATCH_HEAD, BATCH_TAIL, 10.0, max_bytes=300), SocketSink(a))
        channel.deliver([progress(1, 1.0)])
        assert nothing_sent(b)
        channel.deliver([progress(2, 2.0), progress(3, 3.0)])  # past 300 bytes
        [first] = read_ws_messages(b)
        channel.deliver([ev.Log(job_id=JOB, seq=4, ts=4.0, stream="stdout", line="x")])
        assert nothing_sent(b) and not channel.pending_window, "output lines are not sent"
        channel.deliver([progress(5, 5.0), ev.Finished(job_id=JOB, seq=6, ts=6.0,
                                                        status="SUCCEEDED", outcome="succeeded")])
        [last] = read_ws_messages(b)
    finally:
        a.close()
        b.close()
    assert [e["message"] for e in json.loads(first)["data"]["events"]] == ["m1", "m2", "m3"]
    assert [e["type"] for e in json.loads(last)["data"]["events"]] == ["progress", "succeeded"]
    assert member.ended and member.cursor == 6


def test_the_stream_expires_30_minutes_after_the_last_event() -> None:
    """The default retention, on the session's own clock (no real wait)."""
    done_at = 1_800_000_000.0
    job = Job(id=JOB, owner=UserId("alice"), template="echo", status=Status.SUCCEEDED,
              completed_at=done_at, last_seq=4)
    principal = Principal(UserId(JOB), "user", job=JobId(JOB))

    def opening(now: float) -> list[Any]:
        env = SessionEnv(config=Config(), clock=lambda: now, sign_progress=lambda j, t: "x")
        session = LiveSession(StreamRequest("GET", "/api/2/jobs/live", {}, {}, {}), env)
        session.open()
        [_, auth] = session.on_message(authorize(JOB, "token"))
        assert isinstance(auth, Authenticate) and auth.rules == "progress"
        [look] = session.on_result(auth, principal)
        assert isinstance(look, LookUp)
        return list(session.on_result(look, job))

    kept = opening(done_at + 29 * 60 + 59)
    assert json.loads(kept[0])["type"] == "auth_response" and isinstance(kept[1], Subscribe)
    assert kept[1].after == 0 and kept[1].batch is not None
    gone = opening(done_at + 30 * 60 + 1)
    assert json.loads(gone[0])["data"]["code"] == 404
