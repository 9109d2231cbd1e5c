"""Reliability: SIGTERM with jobs running, one of them ignoring SIGTERM.

The server must exit 0 within the kill grace (plus its margin), having ended
every job's process group and bounced the jobs to QUEUED; every stream is
told in its dialect (a `bounce` event on the native stream; on the logs
WebSocket a `system` message, then close 1001). After a restart the jobs run
again, their events marking the new attempt (`queued`, reason `restart`),
and clients resuming from what they saw reach the jobs' ends.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from jobserver.auth import KeyRing
from jobserver.server import SHUTDOWN_MARGIN

from .conftest import pid_alive
from .procserver import (
    Received,
    all_events,
    follow_logs_ws,
    follow_sse,
    server_process,
    submit,
    wait_status,
)

pytestmark = pytest.mark.reliability

KILL_GRACE = 1.0
SERVER_ENV = {"JOBSERVER_KILL_GRACE": str(KILL_GRACE), "JOBSERVER_SLOTS": "4"}
BOUNCED = "Job returned to the queue: server shutting down."


async def test_sigterm_bounces_jobs_and_a_restart_runs_them_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    token = KeyRing.load_or_create(data_dir).issue("alice", "user")
    async with server_process(data_dir, env=SERVER_ENV) as (proc, url):
        ws_base = url.replace("http://", "ws://", 1)
        # Long enough to be still running when SIGTERM's grace is over.
        jobs = [await submit(url, token, "sleep", {"seconds": 3}),
                await submit(url, token, "stubborn", {"seconds": 3})]
        sse = {j: Received() for j in jobs}
        ws = {j: Received() for j in jobs}
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for j in jobs:
                    nursery.start_soon(follow_sse, url, token, j, 0, sse[j])
                    nursery.start_soon(follow_logs_ws, ws_base, token, j, 0, ws[j])
                while not all(any(v["type"] == "log" for _, v in sse[j].items) for j in jobs):
                    await trio.sleep(0.01)
                pids = [next(v["pid"] for _, v in sse[j].items if v["type"] == "started")
                        for j in jobs]
                stopping = trio.current_time()
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
                took = trio.current_time() - stopping
    assert KILL_GRACE <= took < KILL_GRACE + SHUTDOWN_MARGIN  # the stubborn one got SIGKILL
    assert not any(pid_alive(pid) for pid in pids)
    for j in jobs:
        assert sse[j].items[-1][1]["type"] == "bounce" and not sse[j].ended
        assert sse[j].items[-1][1]["reason"] == "server shutting down"
        assert ws[j].items[-1][1]["payload"]["message"] == BOUNCED and ws[j].close_code == 1001

    async with server_process(data_dir, env=SERVER_ENV) as (proc, url):
        for j in jobs:
            await wait_status(url, token, j, "SUCCEEDED")
            types = [(e["type"], e.get("reason")) for e in await all_events(url, token, j)]
            bounce = types.index(("bounce", "server shutting down"))
            assert types[bounce + 1:bounce + 3] == [("queued", "restart"), ("started", None)]
            assert types[-1] == ("finished", None)
        resumed = {j: (Received(), Received()) for j in jobs}
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for j, (by_sse, by_ws) in resumed.items():
                    nursery.start_soon(follow_sse, url, token, j, sse[j].last_seq, by_sse)
                    nursery.start_soon(follow_logs_ws, url.replace("http://", "ws://", 1),
                                       token, j, ws[j].last_seq, by_ws)
        for j, (by_sse, by_ws) in resumed.items():
            assert by_sse.ended and by_sse.items[0][0] == sse[j].last_seq + 1
            assert by_ws.ended and by_ws.close_code == 1000
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await proc.wait() == 0
