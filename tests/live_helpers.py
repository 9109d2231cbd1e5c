"""Helpers for the live-dialect tests: a job that reports progress, tokens, a client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import trio

from .conftest import Harness
from .test_dataplane_helpers import RawWebSocket, submit_command

LIVE = "/api/2/jobs/live"
EVENT_KEYS = {"type", "message", "indicator", "occurred_at", "spawned"}
# Waits for its go file ("-": no wait), reports `n` progress steps on fd 3,
# prints a line (output is not progress), exits with the code given.
PROGRESS_JOB = (
    "import json, os, sys, time\n"
    "c = os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w', buffering=1)\n"
    "go = sys.argv[1]\n"
    "while go != '-' and not os.path.exists(go): time.sleep(0.005)\n"
    "n = int(sys.argv[2])\n"
    "print('an output line', flush=True)\n"
    "for i in range(n):\n"
    "    c.write(json.dumps({'progress': {'at': i + 1, 'of': n}, 'message': 'step %d' % i})"
    " + '\\n')\n"
    "c.close()\n"
    "sys.exit(int(sys.argv[3]))\n"
)


async def progress_job(h: Harness, n: int, *, go: Path | None = None, code: int = 0
                       ) -> dict[str, Any]:
    """An ad-hoc job (the admin's) reporting `n` progress steps once `go` exists."""
    return await submit_command(h, ["python3", "-c", PROGRESS_JOB, str(go or "-"), str(n),
                                    str(code)])


async def progress_token(h: Harness, job_id: str, *, token: str | None = None) -> str:
    r = await h.client.get(f"/api/v1/jobs/{job_id}/progress-token",
                           headers=h.auth(token or h.admin))
    assert r.status_code == 200, r.text
    jwt: str = r.json()["jwt"]
    return jwt


def authorize(job_uid: Any, jwt: Any) -> str:
    return json.dumps({"type": "authorize", "data": {"job_uid": job_uid, "jwt": jwt}})


async def connect(h: Harness, *, stream: trio.SocketStream | None = None) -> RawWebSocket:
    return await RawWebSocket.connect(h.server.port, LIVE, stream=stream)


async def first_batch(ws: RawWebSocket, job_id: str, jwt: str
                      ) -> tuple[AsyncIterator[str], dict[str, Any]]:
    """Authorize on `ws`: its messages (auth_response read), and the first batch."""
    await ws.send_text(authorize(job_id, jwt))
    messages = ws.messages()
    assert json.loads(await messages.__anext__())["type"] == "auth_response"
    first: dict[str, Any] = json.loads(await messages.__anext__())
    return messages, first


async def follow(h: Harness, job_id: str, jwt: str, *, stream: trio.SocketStream | None = None,
                 timeout: float = 30.0) -> tuple[list[dict[str, Any]], int | None]:
    """Authorize, then every packet until the server closes, and its close code."""
    with trio.fail_after(timeout):
        ws = await connect(h, stream=stream)
        try:
            await ws.send_text(authorize(job_id, jwt))
            packets = await ws.collect()
        finally:
            await ws.aclose()
    return packets, ws.close_code


def events_of(packets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of every batch, in order (asserting each packet's shape)."""
    assert packets[0]["type"] == "auth_response"
    out = []
    for p in packets[1:]:
        assert set(p) == {"success", "type", "data"} and p["success"] is True, p
        assert p["type"] == "event_batch" and set(p["data"]) == {"events"}, p
        assert p["data"]["events"], "a batch is never empty"
        for e in p["data"]["events"]:
            assert set(e) == EVENT_KEYS, e
            assert isinstance(e["occurred_at"], float)
            assert (e["spawned"] is not None) == (e["type"] == "spawned"), e
        out.extend(p["data"]["events"])
    return out


async def after_rest_call(h: Harness) -> trio.SocketStream:
    """A connection that has had a REST answer (hypercorn owns it): an upgrade
    sent on it goes through the ASGI fallback."""
    stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(
        method="GET", target="/healthz", headers=[("Host", "127.0.0.1")])))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if isinstance(event, h11.Response):
            assert event.status_code == 200
        if isinstance(event, h11.EndOfMessage):
            return stream
