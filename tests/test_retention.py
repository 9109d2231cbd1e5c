"""Retention (housekeeping.py) against a real server: by age and by count,
globally and per template, pinned jobs kept, and the streams of a removed job
ended. `Housekeeping.sweep(now=...)` takes the time to judge by, so nothing
here waits for a day to pass; the service's own interval is tried once, short."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from jobserver.housekeeping import DAY

from .conftest import Harness
from .test_dataplane_helpers import logs_path, running_server


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, retention_days=10, retention_max_jobs=6,
                              retention_interval=3600) as harness:
        yield harness


async def finished(h: Harness, template: str, n: int, **params: Any) -> list[str]:
    ids = []
    for _ in range(n):
        job = await h.submit(template, params or ({"message": "hi"} if template == "echo"
                                                  else None))
        await h.wait(job["id"])
        ids.append(job["id"])
    return ids


async def present(h: Harness, ids: list[str]) -> list[str]:
    out = []
    for job_id in ids:
        r = await h.client.get(f"/api/v1/jobs/{job_id}", headers=h.auth(h.admin))
        assert r.status_code in (200, 404), r.text
        if r.status_code == 200:
            out.append(job_id)
    return out


async def test_by_age_globally_and_per_template_with_pins_kept(h: Harness) -> None:
    echo = await finished(h, "echo", 2)
    daily = await finished(h, "keep_a_day", 2)
    running = await h.submit("sleep", {"seconds": 30})
    await h.wait(running["id"], "RUNNING")
    r = await h.client.post(f"/api/v1/jobs/{running['id']}/pin", headers=h.auth(h.alice))
    assert r.status_code == 200 and (await h.job(running["id"]))["pinned"] is True
    (h.data_dir / "output" / echo[0] / "result.txt").write_text("made by the job")
    r = await h.client.post(f"/api/v1/jobs/{daily[1]}/pin", headers=h.auth(h.alice))
    assert r.status_code == 200 and r.json()["pinned"] is True
    sweep = h.server.housekeeping.sweep
    now = time.time()
    assert await sweep(now=now + 0.5 * DAY) == 0
    # Two days on: the template's one day has passed, the server's ten have not.
    assert await sweep(now=now + 2 * DAY) == 1
    assert await present(h, echo + daily) == [*echo, daily[1]]
    # Eleven days on: the rest goes, but for the pinned job and the running one.
    assert await sweep(now=now + 11 * DAY) == 2
    assert await present(h, echo + daily + [running["id"]]) == [daily[1], running["id"]]
    assert not (h.data_dir / "output" / echo[0]).exists()
    r = await h.client.get(f"/api/v1/jobs/{echo[0]}/events", headers=h.auth(h.admin))
    assert r.status_code == 404
    # Unpinned, it goes at the next sweep.
    r = await h.client.delete(f"/api/v1/jobs/{daily[1]}/pin", headers=h.auth(h.alice))
    assert r.status_code == 200 and r.json()["pinned"] is False
    assert await sweep(now=now + 11 * DAY) == 1
    assert await present(h, daily) == []
    # Pinned while it ran, it stays pinned once it ended.
    await h.client.post(f"/api/v1/jobs/{running['id']}/cancel", headers=h.auth(h.alice))
    assert (await h.wait(running["id"]))["pinned"] is True
    assert await sweep(now=now + 11 * DAY) == 0


async def test_by_count_globally_and_per_template(h: Harness) -> None:
    kept = await finished(h, "keep_two", 4)
    echo = await finished(h, "echo", 5)
    r = await h.client.post(f"/api/v1/jobs/{echo[0]}/pin", headers=h.auth(h.admin))
    assert r.json()["pinned"] is True
    r = await h.client.get("/api/v1/jobs?limit=50", headers=h.auth(h.alice))
    assert [j["pinned"] for j in r.json()["jobs"] if j["id"] == echo[0]] == [True]
    # keep_two keeps its newest two; then, of the 2 + 4 unpinned jobs, the
    # server's newest six stay: all of them.
    assert await h.server.housekeeping.sweep() == 2
    assert await present(h, kept + echo) == [*kept[2:], *echo]
    more = await finished(h, "echo", 2)
    # Eight unpinned now: the two oldest go (keep_two's, finished first).
    assert await h.server.housekeeping.sweep() == 2
    assert await present(h, kept + echo + more) == [*echo, *more]


async def test_pins_are_the_owners_and_need_a_job(h: Harness) -> None:
    [job_id] = await finished(h, "echo", 1)
    r = await h.client.post(f"/api/v1/jobs/{job_id}/pin", headers=h.auth(h.bob))
    assert r.status_code == 404
    r = await h.client.post("/api/v1/jobs/not-a-uuid/pin", headers=h.auth(h.alice))
    assert r.status_code == 404
    r = await h.client.post(f"/api/v1/jobs/{job_id}/pin")
    assert r.status_code == 401


async def test_the_service_sweeps_by_itself(data_dir: Path) -> None:
    async with running_server(data_dir, retention_max_jobs=1, retention_interval=0.05) as h:
        ids = await finished(h, "echo", 3)
        with trio.fail_after(10):
            while await present(h, ids) != ids[2:]:
                await trio.sleep(0.05)
        assert h.server.housekeeping.removed == 2


async def _read_some(stream: trio.SocketStream, into: bytearray, until: bytes) -> None:
    while until not in into:
        data = await stream.receive_some(65536)
        assert data, bytes(into[-300:])
        into += data


async def _read_to_end(stream: trio.SocketStream, into: bytearray) -> None:
    with trio.move_on_after(8):
        while data := await stream.receive_some(262144):
            into += data
        return
    raise AssertionError(f"still open after {len(into)} bytes: {bytes(into[-300:])!r}")


async def open_raw(h: Harness, target: str, extra: str = "") -> trio.SocketStream:
    """A connection whose receive buffer is fixed before connecting (no autotuning):
    a reader that stops reading holds up the server after ~64 KiB + its own buffers."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    await sock.connect(("127.0.0.1", h.server.port))
    stream = trio.SocketStream(sock)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    return stream


async def test_streams_replaying_a_removed_job_end(h: Harness) -> None:
    # A long log, so that readers who stop reading are mid-replay for sure
    # (12 MB: more than the socket buffers and the outbox hold).
    [job_id] = await finished(h, "chatty", 1, lines=100_000)
    ws_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    ws = await open_raw(h, logs_path(job_id, h.alice, "&replay=true"),
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Version: 13\r\n{ws_key}")
    sse = await open_raw(h, f"/api/v1/jobs/{job_id}/stream?token={h.alice}")
    got_ws, got_sse = bytearray(), bytearray()
    async with ws, sse:
        await _read_some(ws, got_ws, b"line 10\"")
        await _read_some(sse, got_sse, b"line 10\"")
        r = await h.client.post("/api/v1/jobs", json={"template": "echo", "params": {
            "message": "newer"}}, headers=h.auth(h.alice))
        await h.wait(r.json()["id"])
        assert await h.server.housekeeping.sweep(now=time.time() + 11 * DAY) == 2
        await _read_to_end(ws, got_ws)
        await _read_to_end(sse, got_sse)
    # Neither reached the job's end: the logs dialect closed 1000, the native
    # stream sent `deleted` and ended its response.
    assert b'"SUCCEEDED"' not in got_ws and got_ws.endswith(b"\x88\x02\x03\xe8")
    assert b"event: finished" not in got_sse
    assert b"\nevent: deleted\ndata: {" in got_sse[-200:] and got_sse.endswith(b"}\n\n")
