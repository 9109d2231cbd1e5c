"""The multiplex dialect's delivery promises: each task's updates exactly once,
whatever a connection subscribed to, and nobody sees another user's tasks."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from .conftest import Harness
from .multiplex_helpers import Msg, Mx, task_messages
from .test_dataplane_helpers import running_server

# Rounds of the 500-subscription run (CI runs the default; raise it to soak).
SOAK_ROUNDS = int(os.environ.get("JOBSERVER_MULTIPLEX_SOAK_ROUNDS", "1"))


async def blockers(h: Harness, count: int) -> list[dict[str, Any]]:
    jobs = [await h.submit("sleep", {"seconds": 30}, token=h.admin) for _ in range(count)]
    for job in jobs:
        await h.wait(job["id"], "RUNNING")
    return jobs


async def release(h: Harness, jobs: list[dict[str, Any]]) -> None:
    for job in jobs:
        r = await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.admin))
        assert r.status_code == 202


def ends(messages: list[Msg]) -> int:
    return sum(m["type"] in ("task_completion", "task_error") for m in messages)


async def read_until_ends(mx: Mx, count: int, timeout: float = 60.0) -> list[Msg]:
    out: list[Msg] = []
    with trio.fail_after(timeout):
        while ends(out) < count:
            out.append(await mx.recv(timeout))
    out += await mx.sync()  # and nothing more after them
    return out


async def test_two_users_on_tasks_never_see_each_other(data_dir: Path) -> None:
    async with running_server(data_dir, slots=2) as h:
        alice = await Mx.open(h.server.port, h.alice)
        bob = await Mx.open(h.server.port, h.bob)
        admin = await Mx.open(h.server.port, h.admin)
        for mx in (alice, bob, admin):
            await mx.send("subscribe", {"channel": "tasks"})
            assert await mx.sync() == []
        mine = {"alice": set(), "bob": set()}
        for _ in range(3):
            for user, token in (("alice", h.alice), ("bob", h.bob)):
                job = await h.submit("progress", {"steps": 2}, token=token)
                mine[user].add(job["id"])
        got_alice = await read_until_ends(alice, 3)
        got_bob = await read_until_ends(bob, 3)
        got_admin = await read_until_ends(admin, 6)
        assert {m["data"]["task_id"] for m in got_alice} == mine["alice"]
        assert {m["data"]["task_id"] for m in got_bob} == mine["bob"]
        assert {m["data"]["task_id"] for m in got_admin} == mine["alice"] | mine["bob"]
        for got in (got_alice, got_bob, got_admin):
            for task_id in {m["data"]["task_id"] for m in got}:
                assert [(m["type"], m["data"]["status"], m["data"]["progress"])
                        for m in task_messages(got, task_id)] == FULL_RUN
        # Subscribing to the other's task is refused like a missing one.
        await alice.send("subscribe", {"channel": "task", "task_id": next(iter(mine["bob"]))})
        assert (await alice.recv())["data"]["code"] == "invalid_subscription"
        for mx in (alice, bob, admin):
            await mx.aclose()


FULL_RUN = [("task_update", "pending", 0.0), ("task_update", "in_progress", 0.0),
            ("task_update", "in_progress", 0.5), ("task_update", "in_progress", 1.0),
            ("task_completion", "completed", 1.0)]


async def test_task_and_tasks_together_give_each_update_once(data_dir: Path) -> None:
    """A task followed alone and through `tasks`, `tasks` switched on and off
    again and again while the task reports progress: every update once, in order."""
    steps = 40
    async with running_server(data_dir, slots=1, multiplex_messages_per_minute=100_000) as h:
        block = await blockers(h, 1)
        job = await h.submit("progress", {"steps": steps, "pause": 0.01})
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "task", "task_id": job["id"]})
        await mx.send("subscribe", {"channel": "workflow_execution", "execution_id": job["id"]})
        await mx.send("subscribe", {"channel": "tasks"})
        assert await mx.sync() == []
        await release(h, block)
        out: list[Msg] = []
        toggles = 0
        with trio.fail_after(30):
            while not any(m["type"] == "task_completion" for m in out):
                await mx.send("unsubscribe" if toggles % 2 == 0 else "subscribe",
                              {"channel": "tasks"})
                toggles += 1
                out += await mx.sync()
            # The workflow's end comes through the job's own topic: it may follow.
            while not any(m["type"] == "workflow_execution_update"
                          and m["data"]["status"] == "completed" for m in out):
                out += await mx.sync()
        assert toggles > 4
        mine = task_messages(out, job["id"])
        expected = [("task_update", "in_progress", 0.0)]
        expected += [("task_update", "in_progress", round(i / steps, 4))
                     for i in range(1, steps + 1)]
        expected += [("task_completion", "completed", 1.0)]
        assert [(m["type"], m["data"]["status"], m["data"]["progress"]) for m in mine] == expected
        flow = [m for m in out if m["type"] == "workflow_execution_update"]
        assert [m["data"]["status"] for m in flow] == ["in_progress", "completed"]
        await mx.aclose()


async def test_500_subscriptions_on_20_connections(data_dir: Path) -> None:
    """20 connections x 25 tasks each (every task followed by 5 connections):
    each connection gets exactly its own tasks' updates, none missing or twice."""
    async with running_server(data_dir, slots=2, multiplex_max_connections=20) as h:
        for _ in range(SOAK_ROUNDS):
            await _500_subscriptions(h)


async def _500_subscriptions(h: Harness) -> None:
    block = await blockers(h, 2)
    jobs = [(await h.submit("progress", {"steps": 2}))["id"] for _ in range(100)]
    conns = [await Mx.open(h.server.port, h.alice) for _ in range(20)]
    wanted: list[set[str]] = []
    for i, mx in enumerate(conns):
        ids = {jobs[(i * 5 + k) % 100] for k in range(25)}
        wanted.append(ids)
        for job_id in ids:
            await mx.send("subscribe", {"channel": "task", "task_id": job_id})
        assert await mx.sync() == []
    assert sum(len(w) for w in wanted) == 500
    await release(h, block)
    results: list[list[Msg]] = [[] for _ in conns]

    async def read(i: int) -> None:
        results[i] = await read_until_ends(conns[i], 25)

    async with trio.open_nursery() as nursery:
        for i in range(len(conns)):
            nursery.start_soon(read, i)
    for ids, got in zip(wanted, results, strict=True):
        assert {m["data"]["task_id"] for m in got} == ids
        counts = Counter((m["data"]["task_id"], m["type"], m["data"]["progress"]) for m in got)
        assert set(counts.values()) == {1}  # nothing twice
        for job_id in ids:  # nothing missing, in order (subscribed while queued)
            assert [(m["type"], m["data"]["status"], m["data"]["progress"])
                    for m in task_messages(got, job_id)] == FULL_RUN[1:]
    for mx in conns:
        await mx.aclose()
