"""The live dialect (specs/dialect-live-batches.md) against a real server and a real
WebSocket client: the handshake, batches, history, spawned children, the end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import trio

from jobserver.dataplane.outbox import MAX_BACKLOG_BYTES

from .conftest import Harness
from .live_helpers import (
    after_rest_call,
    authorize,
    connect,
    events_of,
    first_batch,
    follow,
    progress_job,
    progress_token,
)
from .test_dataplane_fanout import wait_stats
from .test_dataplane_helpers import running_server, submit_command

WINDOW = 0.05


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, live_batch_window=WINDOW) as harness:
        yield harness


async def test_a_job_from_queued_to_succeeded(h: Harness) -> None:
    """A client connected before the job runs: auth_response, then batches of the
    events in order, the terminal one `final`, then a 1000 close."""
    go = h.data_dir / "go"
    job = await progress_job(h, 3, go=go)
    token = await progress_token(h, job["id"])
    async with trio.open_nursery() as nursery:
        got: list[tuple[list[dict[str, object]], int | None]] = []

        async def watch() -> None:
            got.append(await follow(h, job["id"], token))

        nursery.start_soon(watch)
        await h.wait(job["id"], "RUNNING")
        await trio.sleep(2 * WINDOW)
        go.touch()
    packets, code = got[0]
    assert code == 1000
    auth = packets[0]
    assert auth["success"] is True and auth["data"] == {} and isinstance(auth["uid"], str)
    assert set(auth) == {"success", "type", "uid", "data"}
    events = events_of(packets)
    assert [e["type"] for e in events] == ["queued", "started", "progress", "progress",
                                          "progress", "succeeded"]
    assert events[0]["indicator"] == {"type": "spinner"}
    assert [e["indicator"] for e in events[2:5]] == [
        {"type": "bar", "at": i, "of": 3} for i in (1, 2, 3)]
    assert [e["message"] for e in events[2:5]] == ["step 0", "step 1", "step 2"]
    assert events[-1]["indicator"] == {"type": "final"}
    stamps = [e["occurred_at"] for e in events]
    assert stamps == sorted(stamps)
    # The output line is not progress: no event carries it.
    assert not any("output line" in e["message"] for e in events)


async def test_history_for_a_late_joiner_and_again_on_reconnect(h: Harness) -> None:
    """The spec has no cursor: every connection's first batch is the whole story,
    on both transports, and a finished job's ends it."""
    job = await progress_job(h, 4, code=3)
    await h.wait(job["id"])
    token = await progress_token(h, job["id"])
    first, code1 = await follow(h, job["id"], token)
    again, code2 = await follow(h, job["id"], token)
    fallback, code3 = await follow(h, job["id"], token, stream=await after_rest_call(h))
    assert code1 == code2 == code3 == 1000
    assert len(first) == 2, "auth_response, then one batch with everything"
    assert events_of(first) == events_of(again) == events_of(fallback)
    events = events_of(first)
    assert [e["type"] for e in events] == ["queued", "started"] + ["progress"] * 4 + ["failed"]
    assert events[-1]["indicator"] == {"type": "final"}


async def test_events_are_batched(h: Harness) -> None:
    """2,000 progress events reported as fast as the job can: far fewer packets,
    every event once, in order."""
    go = h.data_dir / "go"
    n = 2000
    job = await progress_job(h, n, go=go)
    token = await progress_token(h, job["id"])
    await h.wait(job["id"], "RUNNING")
    ws = await connect(h)
    try:
        messages, first = await first_batch(ws, job["id"], token)
        assert [e["type"] for e in first["data"]["events"]] == ["queued", "started"]
        go.touch()
        packets = [first] + [json.loads(m) async for m in messages]
    finally:
        await ws.aclose()
    assert ws.close_code == 1000
    events = events_of([{"type": "auth_response"}, *packets])
    progress = [e["message"] for e in events if e["type"] == "progress"]
    assert progress == [f"step {i}" for i in range(n)]
    assert len(packets) < n / 10, f"{len(packets)} packets for {n} events"


async def test_a_spawned_child_is_followed_with_its_own_token(h: Harness) -> None:
    parent = await h.submit("spawner")
    await h.wait(parent["id"])
    r = await h.client.get(f"/api/v1/jobs/{parent['id']}/progress-token",
                           headers=h.auth(h.alice))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"job_uid", "jwt", "expires_at"} and body["job_uid"] == parent["id"]
    packets, code = await follow(h, parent["id"], body["jwt"])
    assert code == 1000
    events = events_of(packets)
    spawned = [e for e in events if e["type"] == "spawned"]
    assert len(spawned) == 1
    child = spawned[0]["spawned"]
    assert set(child) == {"uid", "jwt", "name"} and child["name"] == "kid"
    claims = jwt.decode(child["jwt"], options={"verify_signature": False})
    assert claims["sub"] == child["uid"] and claims["aud"] == "oseh-job-progress"
    assert claims["iss"] == "oseh" and claims["exp"] > claims["iat"]
    assert jwt.get_unverified_header(child["jwt"])["alg"] == "RS256"
    await h.wait(child["uid"])
    child_packets, child_code = await follow(h, child["uid"], child["jwt"])
    assert child_code == 1000
    assert [e["type"] for e in events_of(child_packets)] == ["queued", "started", "succeeded"]
    # The parent's token does not open the child's stream.
    wrong, wrong_code = await follow(h, child["uid"], body["jwt"])
    assert wrong[0]["data"]["code"] == 403 and wrong_code == 4403
    # Replaying the parent renders the same child token (deterministic renderer).
    replay, _ = await follow(h, parent["id"], body["jwt"])
    assert events_of(replay) == events
    # Someone else's job: 404 from the REST call.
    r = await h.client.get(f"/api/v1/jobs/{parent['id']}/progress-token",
                           headers=h.auth(h.bob))
    assert r.status_code == 404


async def test_bounce_on_graceful_shutdown(data_dir: Path) -> None:
    async with running_server(data_dir, live_batch_window=WINDOW) as h:
        job = await h.submit("sleep", {"seconds": 30})
        await h.wait(job["id"], "RUNNING")
        token = await progress_token(h, job["id"], token=h.alice)
        ws = await connect(h)
        try:
            messages, first = await first_batch(ws, job["id"], token)
            assert [e["type"] for e in first["data"]["events"]] == ["queued", "started"]
            h.server.request_shutdown()
            with trio.fail_after(15):
                rest = [json.loads(m) async for m in messages]
        finally:
            await ws.aclose()
    assert ws.close_code == 1001
    events = [e for p in rest for e in p["data"]["events"]]
    assert [e["type"] for e in events] == ["bounce"]
    assert events[0]["indicator"] == {"type": "spinner"}


async def test_a_quiet_authorized_client_is_kept(data_dir: Path) -> None:
    """The client never speaks after `authorize`: past the authorize timeout and
    several ping intervals, its socket stays open and gets nothing but pings."""
    async with running_server(data_dir, live_auth_timeout=0.2, ws_ping_interval=0.1,
                              ws_ping_timeout=1.0) as h:
        job = await h.submit("sleep", {"seconds": 30})
        await h.wait(job["id"], "RUNNING")
        token = await progress_token(h, job["id"], token=h.alice)
        ws = await connect(h)
        try:
            await ws.send_text(authorize(job["id"], token))
            got = []
            with trio.move_on_after(1.0):
                async for m in ws.messages():
                    got.append(json.loads(m))
            assert ws.close_code is None, "a healthy connection is never closed early"
            assert [p["type"] for p in got] == ["auth_response", "event_batch"]
        finally:
            await ws.aclose()


async def test_a_silent_client_is_dropped(data_dir: Path) -> None:
    async with running_server(data_dir, live_auth_timeout=0.2) as h:
        ws = await connect(h)
        try:
            with trio.fail_after(5):
                got = await ws.collect()
        finally:
            await ws.aclose()
    assert got == [] and ws.close_code == 1008


# Reports `n` progress steps with long messages once go1 exists, 3 more once go2 does.
TWO_PROGRESS_BURSTS = (
    "import json, os, sys, time\n"
    "c = os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w')\n"
    "def wait(p):\n"
    "    while not os.path.exists(p): time.sleep(0.005)\n"
    "def report(i, n):\n"
    "    c.write(json.dumps({'progress': {'at': i, 'of': n}, 'message': 'step %d %s' % (i, 'y' * 200)}) + '\\n')\n"  # noqa: E501
    "wait(sys.argv[1])\n"
    "n = int(sys.argv[3])\n"
    "for i in range(n): report(i, n)\n"
    "c.flush()\n"
    "wait(sys.argv[2])\n"
    "for i in range(n, n + 3): report(i, n + 3)\n"
    "c.close()\n"
)


async def test_a_lagging_live_client_catches_up_and_goes_live_again(data_dir: Path) -> None:
    """A client that stops reading leaves the live path (its backlog bounded), reads
    on from the store, and joins the window again: every event once, in order."""
    count = 20_000
    async with running_server(data_dir, max_lag_events=100, live_batch_window=WINDOW) as h:
        go1, go2 = h.data_dir / "go1", h.data_dir / "go2"
        job = await submit_command(h, ["python3", "-c", TWO_PROGRESS_BURSTS, str(go1), str(go2),
                                       str(count)])
        await h.wait(job["id"], "RUNNING")
        token = await progress_token(h, job["id"])
        fast, slow = await connect(h), await connect(h)
        try:
            fast_messages, _ = await first_batch(fast, job["id"], token)
            slow_messages, _ = await first_batch(slow, job["id"], token)
            go1.touch()
            fast_got = await read_progress(fast_messages, count)
            stats = await wait_stats(h, subscribers=2, live=1)  # the slow one fell behind
            assert stats["backlog_bytes"] <= MAX_BACKLOG_BYTES + 2 * 512 * 1024
            slow_got = await read_progress(slow_messages, count)
            assert fast_got == slow_got == [f"step {i} {'y' * 200}" for i in range(count)]
            await wait_stats(h, live=2, catching_up=0)  # live again
            go2.touch()
            for messages in (fast_messages, slow_messages):
                rest = [json.loads(m) async for m in messages]
                events = [e for p in rest for e in p["data"]["events"]]
                assert [e["message"][:7] for e in events[:3]] == [
                    f"step {i}"[:7] for i in range(count, count + 3)]
                assert events[-1]["type"] == "succeeded"
        finally:
            await fast.aclose()
            await slow.aclose()
    assert fast.close_code == slow.close_code == 1000


async def read_progress(messages: AsyncIterator[str], count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        packet = json.loads(await messages.__anext__())
        got.extend(e["message"] for e in packet["data"]["events"] if e["type"] == "progress")
    return got
