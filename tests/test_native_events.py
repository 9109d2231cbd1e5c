"""`GET /api/v1/events`: every job event a caller may see, live, over SSE (the
owner topic for a user, all jobs for an admin), with real clients."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from httpx_sse import aconnect_sse

from .conftest import Harness


async def _watch(h: Harness, token: str, into: list[dict[str, Any]],
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with httpx.AsyncClient(base_url=h.url, timeout=30) as client, \
            aconnect_sse(client, "GET", "/api/v1/events", headers=h.auth(token)) as source:
        assert source.response.status_code == 200
        task_status.started()
        async for sse in source.aiter_sse():
            into.append({"event": sse.event, **json.loads(sse.data)})


async def test_each_user_sees_only_their_own_jobs_and_an_admin_sees_all(
        harness: Harness) -> None:
    h = harness
    seen: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": [], "root": []}
    async with trio.open_nursery() as nursery:
        for name, token in (("alice", h.alice), ("bob", h.bob), ("root", h.admin)):
            await nursery.start(_watch, h, token, seen[name])
        a = await h.submit("echo", {"message": "from alice"}, token=h.alice)
        b = await h.submit("echo", {"message": "from bob"}, token=h.bob)
        await h.wait(a["id"])
        await h.wait(b["id"])
        with trio.fail_after(10):
            while sum(e["event"] == "finished" for e in seen["root"]) < 2:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert {e["job_id"] for e in seen["alice"]} == {a["id"]}
    assert {e["job_id"] for e in seen["bob"]} == {b["id"]}
    assert {e["job_id"] for e in seen["root"]} == {a["id"], b["id"]}
    kinds = [e["event"] for e in seen["alice"]]
    assert kinds[0] == "queued" and kinds[-1] == "finished" and "log" not in kinds
    assert seen["alice"][-1]["status"] == "SUCCEEDED" and seen["alice"][-1]["seq"] > 1


async def test_a_bad_token_is_401(harness: Harness) -> None:
    r = await harness.client.get("/api/v1/events", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = await harness.client.get("/api/v1/events")
    assert r.status_code == 401
