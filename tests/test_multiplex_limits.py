"""The multiplex dialect's limits (connections per user, messages per minute,
subscriptions per connection), with small configured limits."""

from __future__ import annotations

from pathlib import Path

import trio

from .multiplex_helpers import Mx
from .test_dataplane_helpers import running_server, submit_command
from .test_multiplex_dialect import mx_after_rest


def violation(code: str, message: str) -> list[dict[str, object]]:
    return [{"type": "error", "data": {"code": code, "message": message}},
            {"type": "connection_closed", "data": {"reason": code, "message": message}}]


async def test_connections_per_user(data_dir: Path) -> None:
    async with running_server(data_dir, multiplex_max_connections=2) as h:
        first = await Mx.open(h.server.port, h.alice)
        second = await mx_after_rest(h, h.alice)  # the ASGI fallback counts too
        third = await Mx.connect(h.server.port, h.alice)
        assert await third.rest() == violation("connection_limit_exceeded",
                                               "Too many connections for this user")
        assert third.close_code == 1008
        await third.aclose()
        # Another user has places of their own.
        bobs = await Mx.open(h.server.port, h.bob)
        # A connection that ends gives its place back, on either transport.
        await first.aclose()
        third = await open_when_room(h.server.port, h.alice)
        await second.aclose()
        fourth = await open_when_room(h.server.port, h.alice)
        await fourth.send("subscribe", {"channel": "tasks"})
        assert await fourth.sync() == []
        for mx in (third, fourth, bobs):
            await mx.aclose()


async def open_when_room(port: int, token: str) -> Mx:
    """A connection, once the server has seen an earlier one go (it may take a moment)."""
    with trio.fail_after(5):
        while True:
            mx = await Mx.connect(port, token)
            first = await mx.recv()
            if first["type"] == "connection_established":
                return mx
            assert first["data"]["code"] == "connection_limit_exceeded"
            await mx.rest()
            await mx.aclose()
            await trio.sleep(0.02)


async def test_messages_per_minute(data_dir: Path) -> None:
    async with running_server(data_dir, multiplex_messages_per_minute=5) as h:
        mx = await Mx.open(h.server.port, h.alice)
        for _ in range(4):
            await mx.send("pong")
        assert await mx.sync() == []  # the fifth
        await mx.send("subscribe", {"channel": "tasks"})
        assert await mx.rest() == violation("rate_limit_exceeded", "Too many messages per minute")
        assert mx.close_code == 1008
        await mx.aclose()


async def test_subscriptions_per_connection(data_dir: Path) -> None:
    async with running_server(data_dir, multiplex_max_subscriptions=3, slots=1) as h:
        job = await h.submit("sleep", {"seconds": 30})
        await h.wait(job["id"], "RUNNING")
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "tasks"})
        await mx.send("subscribe", {"channel": "system_status"})
        await mx.send("subscribe", {"channel": "task", "task_id": job["id"]})
        await mx.send("subscribe", {"channel": "tasks"})  # again: still three
        assert [m["type"] for m in await mx.sync()] == ["system_status_update"]
        await mx.send("subscribe", {"channel": "workflow_execution", "execution_id": job["id"]})
        out = await mx.rest()
        assert out[-2:] == violation("subscription_limit_exceeded",
                                     "Too many subscriptions on this connection")
        assert mx.close_code == 1008
        await mx.aclose()
        # At the limit, execute_agent submits nothing.
        mx = await Mx.open(h.server.port, h.alice)
        for channel in ("tasks", "system_status"):
            await mx.send("subscribe", {"channel": channel})
        await mx.send("unsubscribe", {"channel": "tasks"})
        await mx.send("subscribe", {"channel": "workflow_execution", "execution_id": job["id"]})
        await mx.send("subscribe", {"channel": "task", "task_id": job["id"]})
        await mx.sync()
        await mx.send("execute_agent", {"agent_id": "code-agent", "task": "x"})
        assert (await mx.rest())[-1]["data"]["reason"] == "subscription_limit_exceeded"
        await mx.aclose()
        r = await h.client.get("/api/v1/jobs", headers=h.auth(h.alice))
        assert [j["template"] for j in r.json()["jobs"]] == ["sleep"]
        await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))
        # A task's subscription ends with the task, also while `tasks` covers it:
        # one agent after another never reaches the limit.
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "tasks"})
        for _ in range(4):
            await mx.send("execute_agent", {"agent_id": "code-agent", "task": "x"})
            await mx.until(lambda m: m["type"] == "task_completion")
            await mx.sync()
        await mx.aclose()


PROGRESS_FLOOD = """
import json, os, sys
n = int(sys.argv[1])
with os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w') as c:
    for i in range(n):
        c.write(json.dumps(dict(progress=dict(at=i, of=n))) + '\\n')
"""


async def test_a_connection_too_far_behind_on_tasks_is_closed_too_slow(data_dir: Path) -> None:
    """`tasks` is an aggregate topic: one that stops draining cannot catch up from
    the store, so past `max_lag_events` it is told `too_slow` and closed 1013,
    and the server counts it as lagged; a connection that reads is unharmed."""
    async with running_server(data_dir, max_lag_events=100) as h:
        port = h.server.port
        sock = trio.socket.socket()
        # Before connecting, so the window the server sees is small from the start.
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        stalled = await Mx.open(port, h.admin, stream=trio.SocketStream(sock))
        await stalled.send("subscribe", {"channel": "tasks"})
        assert await stalled.sync() == []
        reader = await Mx.open(port, h.admin)
        await reader.send("subscribe", {"channel": "tasks"})
        assert await reader.sync() == []
        job = await submit_command(h, ["python3", "-c", PROGRESS_FLOOD, "30000"])
        updates = 0
        with trio.fail_after(60):
            while True:  # the reading connection sees the job to its end
                message = await reader.recv()
                if message["data"].get("task_id") != job["id"]:
                    continue
                if message["type"] == "task_completion":
                    break
                assert message["type"] == "task_update", message
                updates += 1
        assert updates > 1
        assert (await h.job(job["id"]))["status"] == "SUCCEEDED"
        # The stalled one reads again: what was sent before it fell behind, then goodbye.
        rest = await stalled.rest(timeout=30)
        assert rest[-1] == {"type": "connection_closed",
                            "data": {"reason": "too_slow",
                                     "message": "The connection fell too far behind its "
                                                "subscriptions"}}, rest[-3:]
        assert stalled.close_code == 1013
        metrics = (await h.client.get("/metrics", headers=h.auth(h.admin))).text
        lagged = [line for line in metrics.splitlines()
                  if line.startswith("jobserver_stream_lagged_subscribers_total")]
        assert lagged and float(lagged[0].split()[-1]) >= 1, lagged
        await reader.aclose()
        await stalled.aclose()
