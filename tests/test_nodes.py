"""Several nodes on one PostgreSQL database: two real server processes, each with
its own data dir, on one fresh database of the suite's PostgreSQL.

What is checked against the database itself (the source of truth): every job
runs exactly once (one `started` event) wherever it was submitted; a cancel
works from the node that does not hold the job, queued or running; a node
killed with SIGKILL is declared dead by the other, which fails or re-queues its
jobs and ends the processes it can prove are theirs; a node stopped gracefully
hands its jobs to the other; a token made on one node works on both.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from jobserver.auth import KeyRing

from .conftest import pid_alive
from .procserver import auth, get_job, server_process, submit, wait_status

# Jobs the exactly-once test submits (a longer soak: JOBSERVER_TEST_NODE_JOBS=2000).
NODE_JOBS = int(os.environ.get("JOBSERVER_TEST_NODE_JOBS", "200"))
# Quick liveness for the kill -9 tests, yet not so quick that a node merely
# slowed by a loaded machine (a stamp a second late) is declared dead and fenced.
FAST = {"JOBSERVER_NODE_HEARTBEAT_INTERVAL": "0.2", "JOBSERVER_NODE_DEAD_AFTER": "4",
        "JOBSERVER_KILL_GRACE": "1"}
STOP_TIMEOUT = 20.0


def node_env(database_url: str, **settings: str) -> dict[str, str]:
    return {"JOBSERVER_DATABASE_URL": database_url, **FAST,
            **{f"JOBSERVER_{k.upper()}": v for k, v in settings.items()}}


@asynccontextmanager
async def node(tmp_path: Path, name: str, database_url: str,
               **settings: str) -> AsyncIterator[tuple[trio.Process, str, Path]]:
    data_dir = tmp_path / name
    async with server_process(data_dir, env=node_env(database_url, **settings)) as (proc, url):
        try:
            yield proc, url, data_dir
        finally:
            await stop(proc)


async def stop(proc: trio.Process) -> int | None:
    """SIGTERM (the graceful stop) and its exit code; bounded."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await proc.wait()
    return proc.returncode


def sql(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


async def query(database_url: str, q: str, *args: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(lambda: sql(database_url, q, *args))


def admin(data_dir: Path) -> str:
    return KeyRing.load_or_create(data_dir).issue("root", "admin")


async def wait_node_of(database_url: str, job_id: str, status: str, on: str | None = None,
                       timeout: float = 30.0) -> str:
    """The node a job has `status` on (on node `on`, if given): waits for it."""
    with trio.fail_after(timeout):
        while True:
            rows = await query(database_url, "SELECT node, status FROM jobs WHERE id = %s",
                               job_id)
            if rows and rows[0][1] == status and rows[0][0] is not None \
                    and on in (None, rows[0][0]):
                return str(rows[0][0])
            await trio.sleep(0.05)


def node_id(data_dir: Path) -> str:
    return (data_dir / "node.id").read_text().strip()


async def running_on(url: str, data_dir: Path, database_url: str, token: str,
                     template: str, params: dict[str, Any]) -> dict[str, Any]:
    """A job submitted to the node at `url` (data dir `data_dir`, the only one
    with a free slot) once it runs there: its record."""
    job_id = await submit(url, token, template, params)
    await wait_node_of(database_url, job_id, "RUNNING", node_id(data_dir))
    return await wait_status(url, token, job_id, "RUNNING")


async def test_jobs_submitted_across_two_nodes_each_run_exactly_once(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url) as (_, url_a, dir_a), \
            node(tmp_path, "b", database_url) as (_, url_b, _):
        token = admin(dir_a)
        ids: list[str] = []

        async def submit_some(url: str, n: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for i in range(n):
                    r = await client.post("/api/v1/jobs", headers=auth(token), json={
                        "template": "echo", "params": {"message": f"m{i}"}})
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["id"])

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for url in (url_a, url_b):
                    for _ in range(2):
                        nursery.start_soon(submit_some, url, NODE_JOBS // 4)
            while (await query(database_url, "SELECT count(*) FROM jobs WHERE status = "
                               "'SUCCEEDED'"))[0][0] < len(ids):
                await trio.sleep(0.1)
        assert len(set(ids)) == len(ids) == NODE_JOBS // 4 * 4
        started = await query(database_url, "SELECT job_id, count(*) FROM events "
                              "WHERE type = 'started' GROUP BY job_id")
        assert sorted(j for j, _ in started) == sorted(ids)
        assert {c for _, c in started} == {1}  # each ran exactly once
        by_node = dict(await query(database_url,
                                   "SELECT node, count(*) FROM jobs GROUP BY node"))
        assert len(by_node) == 2 and None not in by_node, by_node  # both nodes took jobs
        # Any node answers for any job.
        for url in (url_a, url_b):
            job = await get_job(url, token, ids[0])
            assert job["status"] == "SUCCEEDED"


async def test_cancel_from_the_other_node_queued_and_running(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="1") as (_, url_a, dir_a), \
            node(tmp_path, "b", database_url, slots="1") as (_, url_b, dir_b):
        token = admin(dir_a)
        running = [await submit(url_a, token, "sleep", {"seconds": 30}) for _ in range(2)]
        holders = {await wait_node_of(database_url, j, "RUNNING") for j in running}
        assert holders == {node_id(dir_a), node_id(dir_b)}  # each node's one slot taken
        queued = await submit(url_a, token, "echo", {"message": "never"})
        await trio.sleep(0.3)
        assert (await query(database_url, "SELECT node FROM jobs WHERE id = %s",
                            queued))[0][0] is None  # no free slot: nobody claimed it
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(f"{url_b}/api/v1/jobs/{queued}/cancel", headers=auth(token))
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "CANCELLED"
            for job_id in running:  # each from the node that does not run it
                holder = await wait_node_of(database_url, job_id, "RUNNING")
                other = url_b if holder == node_id(dir_a) else url_a
                r = await client.post(f"{other}/api/v1/jobs/{job_id}/cancel",
                                      headers=auth(token))
                assert r.status_code == 202, r.text
                assert r.json()["status"] == "CANCELLED", r.json()
        for url in (url_a, url_b):
            for job_id in (queued, *running):
                assert (await get_job(url, token, job_id))["status"] == "CANCELLED"
        started = await query(database_url, "SELECT count(*) FROM events WHERE job_id = %s "
                              "AND type = 'started'", queued)
        assert started[0][0] == 0


async def test_a_killed_node_is_declared_dead_and_its_jobs_rescued(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="2") as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        lost = await submit(url_a, token, "sleep", {"seconds": 60})
        again = await submit(url_a, token, "sleep_requeue", {"seconds": 60})
        for job_id in (lost, again):
            assert await wait_node_of(database_url, job_id, "RUNNING") == node_id(dir_a)
        pid = (await wait_status(url_a, token, lost, "RUNNING"))["pid"]
        assert pid is not None and pid_alive(pid)
        async with node(tmp_path, "b", database_url, slots="2") as (_, url_b, dir_b):
            proc_a.kill()  # kill -9: no goodbye, its heartbeat just stops
            await proc_a.wait()
            dead_a = node_id(dir_a)
            failed = await wait_status(url_b, token, lost, "FAILED", timeout=20)
            assert f"node {dead_a} died" in failed["error_message"], failed
            assert failed["outcome"] == "lost"
            # Its process (same machine, provably the job's) ended by the rescuer.
            with trio.fail_after(10):
                while pid_alive(pid):
                    await trio.sleep(0.05)
            # requeue_on_restart: queued again, and run by the living node.
            await wait_node_of(database_url, again, "RUNNING", node_id(dir_b))
            states = dict(await query(database_url, "SELECT id, state FROM nodes"))
            assert states == {dead_a: "dead", node_id(dir_b): "up"}
            events = await query(database_url, "SELECT type, data FROM events WHERE job_id = "
                                 "%s AND type = 'bounce'", again)
            assert any(f"node {dead_a} died" in json.loads(d).get("reason", "")
                       for _, d in events), events


async def test_a_graceful_stop_hands_the_nodes_jobs_to_the_other(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="2") as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        jobs = [await submit(url_a, token, "sleep", {"seconds": 30}) for _ in range(3)]
        for job_id in jobs[:2]:
            assert await wait_node_of(database_url, job_id, "RUNNING") == node_id(dir_a)
        async with node(tmp_path, "b", database_url, slots="3") as (_, url_b, dir_b):
            b = node_id(dir_b)
            await wait_node_of(database_url, jobs[2], "RUNNING", b)
            assert await stop(proc_a) == 0
            assert dict(await query(database_url, "SELECT id, state FROM nodes"))[
                node_id(dir_a)] == "stopped"
            for job_id in jobs:
                await wait_node_of(database_url, job_id, "RUNNING", b)
            for job_id in jobs[:2]:
                bounces = await query(database_url, "SELECT count(*) FROM events WHERE "
                                      "job_id = %s AND type = 'bounce'", job_id)
                assert bounces[0][0] == 1
                # As alone: the bounce, then queued again (a new attempt), then started.
                kinds = [t for t, in await query(
                    database_url, "SELECT type FROM events WHERE job_id = %s AND type IN "
                    "('bounce', 'queued', 'started') ORDER BY seq", job_id)]
                assert kinds == ["queued", "started", "bounce", "queued", "started"], kinds
                assert (await get_job(url_b, token, job_id))["status"] == "RUNNING"


async def test_a_token_made_on_one_node_works_on_the_other(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url) as (_, url_a, dir_a), \
            node(tmp_path, "b", database_url) as (_, url_b, dir_b):
        keys: Mapping[str, str] = {
            "a": KeyRing.load_or_create(dir_a).issue("alice", "user"),
            "b": KeyRing.load_or_create(dir_b).issue("alice", "user")}
        assert (dir_a / "signing.key").read_bytes() == (dir_b / "signing.key").read_bytes()
        async with httpx.AsyncClient(timeout=10) as client:
            for token in keys.values():
                for url in (url_a, url_b):
                    r = await client.get(f"{url}/api/v1/jobs", headers=auth(token))
                    assert r.status_code == 200, r.text


async def test_delete_retry_and_spawn_from_any_node(tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url) as (_, url_a, dir_a), \
            node(tmp_path, "b", database_url) as (_, url_b, dir_b):
        token = admin(dir_a)
        dirs = {node_id(dir_a): (dir_a, url_a), node_id(dir_b): (dir_b, url_b)}
        failed = await submit(url_a, token, "exit", {"code": 3})
        await wait_status(url_a, token, failed, "FAILED")
        ran_on, _ = dirs[await wait_node_of(database_url, failed, "FAILED")]
        assert (ran_on / "output" / failed).is_dir()
        async with httpx.AsyncClient(timeout=30) as client:
            for url in (url_a, url_b):  # a retry from either node, a new job in the queue
                r = await client.post(f"{url}/api/jobs/{failed}/retry", headers=auth(token))
                assert r.status_code == 202, r.text
                again = await wait_status(url, token, r.json()["newJobId"], "FAILED")
                assert again["retry_of"] == failed and again["attempt"] == 2
            r = await client.delete(f"{url_b}/api/v1/jobs/{failed}", headers=auth(token))
            assert r.status_code == 204, r.text
            for url in (url_a, url_b):
                r = await client.get(f"{url}/api/v1/jobs/{failed}", headers=auth(token))
                assert r.status_code == 404
        with trio.fail_after(10):  # the node that ran it removes its output
            while (ran_on / "output" / failed).exists():
                await trio.sleep(0.05)
        parent = await submit(url_a, token, "spawner", {})
        await wait_status(url_a, token, parent, "SUCCEEDED")
        children = await query(database_url, "SELECT id FROM jobs WHERE "
                               "data::json->>'parent_id' = %s", parent)
        assert len(children) == 1  # a submit into the database's queue, claimed by either
        await wait_status(url_b, token, children[0][0], "SUCCEEDED")


async def test_a_restarted_node_takes_back_only_its_own_jobs(
        tmp_path: Path, database_url: str) -> None:
    # A's watch is slow here: B's restart is a restart, not a death to rescue.
    async with node(tmp_path, "a", database_url, slots="1",
                    node_dead_after="60") as (_, url_a, dir_a):
        token = admin(dir_a)
        mine = await submit(url_a, token, "sleep_requeue", {"seconds": 30})
        await wait_node_of(database_url, mine, "RUNNING", node_id(dir_a))
        async with node(tmp_path, "b", database_url, slots="1") as (proc_b, url_b, dir_b):
            theirs = await submit(url_b, token, "sleep_requeue", {"seconds": 30})
            await wait_node_of(database_url, theirs, "RUNNING", node_id(dir_b))
            proc_b.kill()
            await proc_b.wait()
        async with node(tmp_path, "b", database_url, slots="1") as (_, url_b, dir_b):
            # B's recovery re-queued its own job (and ran it again) ...
            await wait_node_of(database_url, theirs, "RUNNING", node_id(dir_b))
            bounces = await query(database_url, "SELECT job_id, count(*) FROM events WHERE "
                                  "type = 'bounce' GROUP BY job_id")
            assert dict(bounces) == {theirs: 1}  # ... and never touched A's
            assert (await get_job(url_b, token, mine))["status"] == "RUNNING"
            assert dict(await query(database_url, "SELECT id, state FROM nodes")) == {
                node_id(dir_a): "up", node_id(dir_b): "up"}
