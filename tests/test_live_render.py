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
from jobserver.dataplane.batch import BatchOutbox
from jobserver.dataplane.outbox import Counters, Outbox
from jobserver.dataplane.wire import FRAMING, encode_items
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


async def test_ties_and_backwards_timestamps_keep_seq_order(tmp_path: Path,
                                                            autojump_clock: Any) -> None:
    """Batches list events in seq order whatever their clocks said; one message."""
    stamps = [5.0, 5.0, 4.0, 6.0, 6.0, 1.0]
    events = [ev.Progress(job_id=JOB, seq=i + 1, ts=ts, pct=0.0, at=i, of=6, message=f"m{i}")
              for i, ts in enumerate(stamps)]
    renderer = LiveRenderer(signer(tmp_path), ttl=3600)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        woken = []
        outbox = Outbox(a, Counters(), wake=lambda: None)
        counters = Counters()
        batch = BatchOutbox(outbox, FRAMING["ws"], Batch(BATCH_HEAD, BATCH_TAIL, 0.05),
                            counters, wake=lambda: woken.append(1))
        start = trio.current_time()  # the mock clock stands still between awaits
        for event in events[:3]:  # the publisher's pushes, one event each
            batch.write_nowait(encode_items(renderer.render(event).messages), 1)
        batch.write_nowait(encode_items([m for e in events[3:]  # a page of three
                                         for m in renderer.render(e).messages]), 3)
        assert woken == [1] and counters.pending_batches == 1
        assert batch.deadline == start + 0.05
        batch.flush_nowait()
        assert counters.pending_batches == 0 and not batch.pending
        [text] = read_ws_messages(b)
    finally:
        a.close()
        b.close()
    packet = json.loads(text)
    assert packet["type"] == "event_batch" and packet["success"] is True
    got = packet["data"]["events"]
    assert [e["message"] for e in got] == [f"m{i}" for i in range(6)]
    assert [e["occurred_at"] for e in got] == stamps


async def test_a_batch_past_its_size_goes_at_once(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        counters = Counters()
        batch = BatchOutbox(Outbox(a, counters, wake=lambda: None), FRAMING["ws"],
                            Batch("[", "]", 10.0, max_bytes=100), counters, wake=lambda: None)
        batch.write_nowait(b'"' + b"x" * 60 + b'",', 1)
        assert batch.pending
        batch.write_nowait(b'"' + b"y" * 60 + b'",', 1)
        assert not batch.pending and counters.pending_batches == 0
        [text] = read_ws_messages(b)
    finally:
        a.close()
        b.close()
    assert json.loads(text) == ["x" * 60, "y" * 60]


def read_ws_messages(sock: socket.socket) -> list[str]:
    """The text messages a server wrote to `sock`, read by a real WebSocket parser."""
    client = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
    sock.settimeout(2)
    client.receive_data(sock.recv(1 << 20))
    return [e.data for e in client.events() if isinstance(e, TextMessage)]


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
