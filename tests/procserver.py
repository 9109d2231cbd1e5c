"""The server as a real separate process (for kill -9 and signals), and its clients.

`server_process` starts `python -m jobserver --port 0` on a data dir and yields
the process and its URL once it listens; it kills the server on the way out
if it is still there. The clients below record everything they receive, so a
test can compare it with the store after a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket
from httpx_sse import aconnect_sse

from .conftest import PY, TEMPLATES
from .test_dataplane_helpers import ws_client

# How long a server process may take to listen (recovery included) on a busy machine.
START_TIMEOUT = 30.0


@asynccontextmanager
async def server_process(data_dir: Path, port: int = 0, *,
                         env: Mapping[str, str] | None = None, stderr: Path | None = None
                         ) -> AsyncIterator[tuple[trio.Process, str]]:
    """The server as a process; its stderr (its log) goes to `stderr` when given."""
    err = os.open(stderr or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = await trio.lowlevel.open_process(
            [PY, "-m", "jobserver", "--port", str(port), "--data-dir", str(data_dir),
             "--config", str(TEMPLATES)],
            stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
    finally:
        os.close(err)  # the child has its own copy
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(START_TIMEOUT):
            while b"listening on " not in buffer or not buffer.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"server exited early: {buffer!r}"
                buffer += chunk
        url = buffer.split(b"listening on ")[1].split()[0].decode()
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10):
            await proc.wait()
        await proc.stdout.aclose()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def submit(url: str, token: str, template: str, params: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/api/v1/jobs", json={"template": template, "params": params},
                              headers=auth(token))
        assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        return job_id


async def get_job(url: str, token: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get(f"/api/v1/jobs/{job_id}", headers=auth(token))
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job


async def wait_status(url: str, token: str, job_id: str, *statuses: str,
                      timeout: float = 30.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while (job := await get_job(url, token, job_id))["status"] not in statuses:
            await trio.sleep(0.02)
    return job


async def all_events(url: str, token: str, job_id: str) -> list[dict[str, Any]]:
    """Every stored event of a job, page by page."""
    out: list[dict[str, Any]] = []
    after: int | None = 0
    async with httpx.AsyncClient(base_url=url) as client:
        while after is not None:
            r = await client.get(f"/api/v1/jobs/{job_id}/events", params={"after": after},
                                 headers=auth(token))
            assert r.status_code == 200, r.text
            page = r.json()
            out.extend(page["events"])
            after = page["next_after"]
    return out


@dataclass
class Received:
    """What one client got: (seq, what) pairs in arrival order, and how it ended."""

    items: list[tuple[int, Any]] = field(default_factory=list)
    ended: bool = False  # the stream's own end (a terminal event), not a dropped connection
    close_code: int | None = None  # a WebSocket's, as the client saw it

    @property
    def last_seq(self) -> int:
        return self.items[-1][0] if self.items else 0


async def follow_sse(url: str, token: str, job_id: str, after: int, got: Received) -> None:
    """The native stream from `after` (Last-Event-ID), each event's (seq, event_view),
    until the server ends it (after a terminal event) or the connection drops."""
    headers = {**auth(token), "Last-Event-ID": str(after)}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5.0, read=None)) \
                as client, aconnect_sse(client, "GET", f"/api/v1/jobs/{job_id}/stream",
                                        headers=headers) as source:
            if source.response.status_code == 204:
                got.ended = True
                return
            assert source.response.status_code == 200, source.response.status_code
            async for sse in source.aiter_sse():  # to its end: the server ends it
                view = json.loads(sse.data)
                assert int(sse.id) == view["seq"] and not got.ended
                got.items.append((view["seq"], view))
                got.ended = view["type"] in ("finished", "deleted")
    except httpx.HTTPError:
        pass  # the server went away


async def follow_logs_ws(ws_url: str, token: str, job_id: str, since: int,
                         got: Received) -> None:
    """The logs dialect with `?since=` (so every message carries its seq), each
    message's (seq, message), until the server closes or drops the connection."""
    url = f"{ws_url}/api/v1/ws/jobs/{job_id}/logs?token={token}&since={since}"
    try:
        async with ws_client(url) as ws:
            while True:
                message = json.loads(await ws.get_message())
                if "seq" in message:
                    got.items.append((message["seq"], message))
                if message["type"] == "status" and message["payload"]["status"] in \
                        ("SUCCEEDED", "FAILED", "CANCELLED"):
                    got.ended = True
    except trio_websocket.ConnectionClosed as exc:
        got.close_code = exc.reason.code
    except (trio_websocket.HandshakeError, OSError):
        pass
