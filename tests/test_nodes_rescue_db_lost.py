"""The database lost in the middle of a dead node's rescue. Node A runs two jobs
and is killed (kill -9); node B declares it dead and ends its processes, one
of which ignores SIGTERM (so the rescue waits `kill_grace` before SIGKILL).
Right after the declaration, PostgreSQL (a private server: conftest's
`private_pg`) is stopped, and started again a little later: while B still
waits for the processes, or once B's rescue is recording the jobs' ends and
waiting for them to commit. B's one slot is taken by a job of its own, so
nothing else of B's uses the database when the rescue goes on. The rescue
then completes once: the plain job fails `lost` with one `finished` event,
the re-queued one is bounced once and given back to the queue (no node's),
and runs again once B has a free slot.

And a declaration whose answer was lost: the transaction that declared A dead
and gave B its jobs committed, but B never heard (the test runs it as B).
B finds the RUNNING jobs the database says are its own and ends them.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from jobserver.store.postgres_nodes import NodesDb

from .conftest import pid_alive
from .pg import PgServer
from .procserver import auth, submit, wait_status
from .test_nodes import admin, node, node_id, query, running_on, wait_node_of


@pytest.mark.parametrize(("kill_grace", "down"), [("4", 2.0), ("1", 3.0)],
                         ids=["while-ending-processes", "while-recording"])
async def test_a_rescue_cut_by_the_database_completes_once_it_is_back(
        tmp_path: Path, private_pg: PgServer, kill_grace: str, down: float) -> None:
    url = private_pg.create_database()
    slow = {"slots": "2", "kill_grace": kill_grace}  # the SIGTERM-proof one's wait
    async with node(tmp_path, "a", url, **slow) as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        lost = await submit(url_a, token, "tree", {})
        again = await submit(url_a, token, "sleep_requeue", {"seconds": 60})
        for job_id in (lost, again):
            await wait_node_of(url, job_id, "RUNNING", node_id(dir_a))
        async with node(tmp_path, "b", url, **{**slow, "slots": "1"}) as (_, url_b, dir_b):
            b = node_id(dir_b)
            own = await submit(url_b, token, "sleep", {"seconds": 60})
            await wait_node_of(url, own, "RUNNING", b)  # A is full: B took it
            proc_a.kill()
            await proc_a.wait()
            with trio.fail_after(20):  # B took A's jobs: its rescue is under way
                while (await query(url, "SELECT count(*) FROM jobs WHERE node = %s AND "
                                   "status = 'RUNNING'", b))[0][0] < 3:
                    await trio.sleep(0.05)
            await trio.to_thread.run_sync(private_pg.pause)
            try:
                await trio.sleep(down)
            finally:
                await trio.to_thread.run_sync(private_pg.resume)
            failed = await wait_status(url_b, token, lost, "FAILED", timeout=40)
            assert failed["outcome"] == "lost", failed
            with trio.fail_after(40):  # back in the queue, no node's
                while await query(url, "SELECT status, node FROM jobs WHERE id = %s",
                                  again) != [("QUEUED", None)]:
                    await trio.sleep(0.05)
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(f"{url_b}/api/v1/jobs/{own}/cancel", headers=auth(token))
                assert r.status_code == 202, r.text
            await wait_node_of(url, again, "RUNNING", b, timeout=40)
            counts = dict(await query(url, "SELECT job_id || ' ' || type, count(*) FROM events "
                                      "WHERE type IN ('finished', 'bounce', 'started') "
                                      "GROUP BY job_id, type"))
            assert counts == {f"{lost} started": 1, f"{lost} finished": 1,
                              f"{again} started": 2, f"{again} bounce": 1,
                              f"{own} started": 1, f"{own} finished": 1}, counts
            assert dict(await query(url, "SELECT id, state FROM nodes")) == {
                node_id(dir_a): "dead", b: "up"}
            assert (await wait_status(url_b, token, again, "RUNNING"))["node"] == b


async def test_a_declaration_whose_answer_was_lost_is_carried_out(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="1") as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        job = await running_on(url_a, dir_a, database_url, token, "sleep", {"seconds": 60})
        job_id, pid = job["id"], job["pid"]
        # B would not declare A dead for a minute: the test does it, as B.
        async with node(tmp_path, "b", database_url, slots="1",
                        node_dead_after="60") as (_, url_b, dir_b):
            a, b = node_id(dir_a), node_id(dir_b)
            proc_a.kill()
            await proc_a.wait()
            db = NodesDb(database_url, b)
            try:
                taken = await trio.to_thread.run_sync(db.declare_dead, a, 0.0)
            finally:
                db.close()
            assert taken is not None and [j.id for j in taken.running] == [job_id]
            failed = await wait_status(url_b, token, job_id, "FAILED", timeout=30)
            assert failed["outcome"] == "lost" and f"node {a} died" in failed["error_message"]
            assert failed["node"] == a  # the node that ran it
            with trio.fail_after(10):  # its process, provably the job's, ended by B
                while pid_alive(pid):
                    await trio.sleep(0.05)
            ends = await query(database_url, "SELECT count(*) FROM events WHERE job_id = %s "
                               "AND type = 'finished'", job_id)
            assert ends == [(1,)]
            assert await query(database_url, "SELECT node FROM jobs WHERE id = %s",
                               job_id) == [(b,)]
