"""A node declared dead while it was not: it must stop acting. Two real server
processes on one database; node A is frozen (SIGSTOP: its heartbeat stops, its
connections stay open), node B declares it dead and rescues its job, then A
is let go (SIGCONT). Whatever A does first when it wakes (its job's process,
ended by B, reports its end; its heartbeat finds the node row 'dead'), none of
it lands in the database: the job ends exactly once, B's way, and A exits.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from .procserver import submit, wait_status
from .test_nodes import STOP_TIMEOUT, admin, node, node_id, query, running_on, wait_node_of


async def test_a_node_declared_dead_writes_nothing_more_and_stops(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="1") as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        job_id = (await running_on(url_a, dir_a, database_url, token, "sleep",
                                   {"seconds": 60}))["id"]
        async with node(tmp_path, "b", database_url, slots="1") as (_, url_b, dir_b):
            proc_a.send_signal(signal.SIGSTOP)
            try:
                failed = await wait_status(url_b, token, job_id, "FAILED", timeout=30)
                assert failed["outcome"] == "lost"
                assert dict(await query(database_url, "SELECT id, state FROM nodes")) == {
                    node_id(dir_a): "dead", node_id(dir_b): "up"}
                # Queued while A is frozen: B runs it, A (once awake) must not claim it.
                later = await submit(url_b, token, "sleep", {"seconds": 60})
                await wait_node_of(database_url, later, "RUNNING", node_id(dir_b))
                stored = await query(database_url, "SELECT max(seq_end) FROM events "
                                     "WHERE job_id = %s", job_id)
            finally:
                proc_a.send_signal(signal.SIGCONT)
            with trio.fail_after(STOP_TIMEOUT):
                assert await proc_a.wait() == 1  # NodeFenced: it stops by itself
            # The job ended once, B's way; nothing of A's after the takeover.
            assert await query(database_url, "SELECT max(seq_end) FROM events "
                               "WHERE job_id = %s", job_id) == stored
            ends = await query(database_url, "SELECT data FROM events WHERE job_id = %s "
                               "AND type = 'finished'", job_id)
            assert len(ends) == 1 and '"lost"' in ends[0][0], ends
            rows = await query(database_url, "SELECT status, node FROM jobs WHERE id = %s",
                               job_id)
            assert rows == [("FAILED", node_id(dir_b))]
            assert (await wait_status(url_b, token, job_id, "FAILED"))["outcome"] == "lost"
            assert await query(database_url, "SELECT node, status FROM jobs WHERE id = %s",
                               later) == [(node_id(dir_b), "RUNNING")]
