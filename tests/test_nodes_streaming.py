"""Cross-node streaming: two real server processes on one PostgreSQL database
(each its own data dir, the same signing keys), a job running on node A, its
clients on node B, in every dialect. Until claiming across nodes exists, a job
submitted to a node runs there, so "on A" is "submitted to A".

Each job waits for a gate file before it prints, so B's client is following
live (not reading a finished job from the store) when the lines come."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_sse import aconnect_sse

from jobserver.auth import PROGRESS_KEY_FILE, SIGNING_KEY_FILE, KeyRing

from .multiplex_helpers import Mx
from .procserver import Received, auth, follow_logs_ws, server_process, wait_status
from .test_dataplane_helpers import RawWebSocket
from .test_frontdoor import bearer

pytestmark = pytest.mark.timeout(120)

# Waits for its gate file, then prints `n` lines (0 .. n-1), reports progress
# on fd 3 at its middle and exits 0.
GATED = (
    "import json, os, sys, time\n"
    "gate, n = sys.argv[1], int(sys.argv[2])\n"
    "while not os.path.exists(gate): time.sleep(0.005)\n"
    "c = os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w', buffering=1)\n"
    "for i in range(n):\n"
    "    print(i)\n"
    "    if i == n // 2: c.write(json.dumps({'progress': {'at': 1, 'of': 2}}) + '\\n')\n"
)


@dataclass
class Nodes:
    a: str  # node A's URL (runs the jobs)
    b: str  # node B's URL (the clients)
    admin: str
    alice: str
    gates: Path

    def ws(self, url: str) -> str:
        return url.replace("http://", "ws://", 1)

    def port(self, url: str) -> int:
        return int(url.rsplit(":", 1)[1])

    async def gated(self, name: str, lines: int, *, template: str | None = None,
                    command: list[str] | None = None, **params: Any) -> tuple[str, Path]:
        """A job on A waiting (RUNNING) at its gate, to print `lines` lines: the
        admin's GATED command (or `command` + the gate's path), or alice's
        `template` with a `gate` param."""
        gate = self.gates / name
        argv = ["python3", "-c", GATED] if command is None else command
        body: dict[str, Any] = {"command": [*argv, str(gate), str(lines)]}
        if template is not None:
            body = {"template": template,
                    "params": {"gate": str(gate), "lines": lines, **params}}
        async with httpx.AsyncClient(base_url=self.a) as client:
            r = await client.post("/api/v1/jobs", json=body,
                                  headers=auth(self.admin if template is None else self.alice))
            assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        await wait_status(self.a, self.admin, job_id, "RUNNING")
        # B has mirrored it once B says it runs.
        await wait_status(self.b, self.admin, job_id, "RUNNING")
        return job_id, gate


@pytest.fixture
async def nodes(database_url: str, tmp_path: Path) -> AsyncIterator[Nodes]:
    dirs = [tmp_path / "a", tmp_path / "b"]
    ring = KeyRing.load_or_create(dirs[0])
    ring.issue_progress("x", ttl=60)  # makes the progress key file
    dirs[1].mkdir()
    for name in (SIGNING_KEY_FILE, PROGRESS_KEY_FILE):
        shutil.copy2(dirs[0] / name, dirs[1] / name)
    env = {"JOBSERVER_DATABASE_URL": database_url, "JOBSERVER_ASYNC_MIN_INTERVAL_MS": "100"}
    gates = tmp_path / "gates"
    gates.mkdir()
    async with server_process(dirs[0], env=env) as (_, a), \
            server_process(dirs[1], env=env) as (_, b):
        yield Nodes(a, b, ring.issue("root", "admin"), ring.issue("alice", "user"), gates)


async def test_every_line_of_seq_100000_reaches_the_other_node_in_order(nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("seq", 100_000, command=[
        "sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.01; done; exec seq 100000', "sh"])
    got = Received()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_logs_ws, nodes.ws(nodes.b), nodes.admin, job_id, 0, got)
        with trio.fail_after(10):
            while not got.items:  # the opening's messages: B follows it now
                await trio.sleep(0.01)
        gate.touch()
    assert got.ended, got.items[-1:]
    lines = [m["payload"]["message"] for _, m in got.items if m["type"] == "log"]
    assert lines == [str(i) for i in range(1, 100_001)]
    seqs = [seq for seq, _ in got.items]  # a seq may carry two messages (started)
    assert seqs == sorted(seqs)
    line_seqs = [seq for seq, m in got.items if m["type"] == "log"]
    assert all(a < b for a, b in pairwise(line_seqs))


async def test_a_resume_on_the_other_node_mid_job_loses_and_repeats_nothing(
        nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("resume", 20_000)
    first = Received()
    with trio.move_on_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_logs_ws, nodes.ws(nodes.b), nodes.admin, job_id, 0, first)
            gate.touch()
            while sum(1 for _, m in first.items if m["type"] == "log") < 5_000:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()  # the client goes away mid-job
    cut = first.last_seq
    assert cut > 0 and not first.ended
    # Resume by seq on B twice: the logs dialect (`since`) and the native SSE stream.
    again, sse = Received(), Received()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_logs_ws, nodes.ws(nodes.b), nodes.admin, job_id, cut, again)
        nursery.start_soon(follow_native(nodes.b, nodes.admin, job_id, cut, sse))
    assert again.ended and sse.ended
    both = [seq for seq, m in [*first.items, *again.items] if m["type"] == "log"]
    assert all(a < b for a, b in pairwise(both))
    lines = [m["payload"]["message"] for _, m in [*first.items, *again.items]
             if m["type"] == "log"]
    assert lines == [str(i) for i in range(20_000)]
    assert [seq for seq, _ in sse.items] == list(range(cut + 1, sse.last_seq + 1))
    assert sse.items[-1][1]["type"] == "finished"


def follow_native(url: str, token: str, job_id: str, after: int, got: Received) -> Any:
    async def run() -> None:
        headers = {**auth(token), "Last-Event-ID": str(after)}
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10.0, read=30)) \
                as client, aconnect_sse(client, "GET", f"/api/v1/jobs/{job_id}/stream",
                                        headers=headers) as source:
            assert source.response.status_code == 200
            async for event in source.aiter_sse():
                view = json.loads(event.data)
                got.items.append((view["seq"], view))
                got.ended = view["type"] in ("finished", "deleted")
    return run


async def test_jobs_dialect_sse_on_the_other_node(nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("jobs", 300)
    seen: list[tuple[str, dict[str, Any]]] = []
    async with httpx.AsyncClient(base_url=nodes.b, timeout=httpx.Timeout(10.0, read=30)) \
            as client, aconnect_sse(client, "GET", f"/api/jobs/{job_id}/events",
                                    headers=auth(nodes.admin)) as source:
        assert source.response.status_code == 200
        gate.touch()
        with trio.fail_after(30):
            async for event in source.aiter_sse():
                seen.append((event.event, json.loads(event.data)))
    names = [name for name, _ in seen]
    assert [data["status"] for name, data in seen if name == "job-status"] == \
        ["Queued", "Running"]
    assert [data["message"] for name, data in seen if name == "job-log"] == \
        [str(i) for i in range(300)]
    assert names[-1] == "job-completed" and seen[-1][1]["status"] == "Succeeded"
    assert "step-progress" in names


async def test_live_dialect_on_the_other_node(nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("live", 10)
    async with httpx.AsyncClient(base_url=nodes.b) as client:
        r = await client.get(f"/api/v1/jobs/{job_id}/progress-token", headers=auth(nodes.admin))
        assert r.status_code == 200, r.text
        jwt = r.json()["jwt"]
    with trio.fail_after(30):
        ws = await RawWebSocket.connect(nodes.port(nodes.b), "/api/2/jobs/live")
        try:
            await ws.send_text(json.dumps({"type": "authorize",
                                           "data": {"job_uid": job_id, "jwt": jwt}}))
            messages = ws.messages()
            assert json.loads(await messages.__anext__())["type"] == "auth_response"
            gate.touch()
            packets = [json.loads(text) async for text in messages]
        finally:
            await ws.aclose()
    events = [e for p in packets for e in p["data"]["events"]]
    assert [e["type"] for e in events] == ["queued", "started", "progress", "succeeded"]
    assert events[2]["indicator"] == {"type": "bar", "at": 1, "of": 2}


async def test_multiplex_task_on_the_other_node(nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("mx", 10)
    mx = await Mx.open(nodes.port(nodes.b), nodes.admin)
    try:
        await mx.send("subscribe", {"channel": "task", "task_id": job_id})
        await mx.sync()
        gate.touch()
        got = await mx.until(lambda m: m["type"] in ("task_completion", "task_error"),
                             timeout=30)
    finally:
        await mx.aclose()
    updates = [m for m in got if m["type"] == "task_update"]
    assert updates and updates[-1]["data"]["task_id"] == job_id
    assert got[-1]["type"] == "task_completion" and got[-1]["data"]["task_id"] == job_id


async def test_async_dialect_on_the_other_node(nodes: Nodes) -> None:
    job_id, gate = await nodes.gated("async", 50, template="async-gated", updates=20,
                                     native="op-7")
    with trio.fail_after(30):
        ws = await RawWebSocket.connect(nodes.port(nodes.b),
                                        f"/v1/async/batch/{job_id}/ws?interval_ms=100",
                                        headers=[bearer(nodes.alice)])
        try:
            messages = ws.messages()
            snapshot = json.loads(await messages.__anext__())
            assert snapshot["type"] == "job.snapshot"
            assert snapshot["data"]["status"] == "in_progress"
            gate.touch()
            rest = [json.loads(text) async for text in messages]
        finally:
            await ws.aclose()
    assert ws.close_code == 1000
    final = rest[-1]["data"]
    assert final["status"] == "completed" and final["native_id"] == "op-7", final
    assert final["progress"] == {"pct": 100.0, "at": 20, "of": 20}
    assert final["latency_ms"] > 0  # its first output line was seen, on B


async def test_the_owner_topic_on_the_other_node_sees_jobs_change(nodes: Nodes) -> None:
    seen: list[dict[str, Any]] = []
    job_id = ""
    with trio.fail_after(30), trio.CancelScope() as drop:
        async with httpx.AsyncClient(base_url=nodes.b, timeout=httpx.Timeout(10.0, read=30)) \
                as client, aconnect_sse(client, "GET", "/api/v1/events",
                                        headers=auth(nodes.admin)) as source:
            assert source.response.status_code == 200
            job_id, gate = await nodes.gated("owner", 5)
            gate.touch()
            async for event in source.aiter_sse():
                data = json.loads(event.data)
                seen.append(data)
                if data.get("type") == "finished" and data.get("job_id") == job_id:
                    drop.cancel()  # the client goes away (the next read raises Cancelled)
    mine = [d["type"] for d in seen if d.get("job_id") == job_id]
    assert mine[:2] == ["queued", "started"] and mine[-1] == "finished", mine
    assert "log" not in mine
