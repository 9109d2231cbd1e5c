"""The nodes' SQL on PostgreSQL: claims, heartbeats, declaring a node dead, the
shared keys, cross-node control. The blocking half: psycopg's sync API.

Rules:
- Nothing from trio here: `cluster.py` calls these in `trio.to_thread.run_sync`,
  one call at a time per connection, each bounded (connect timeout, statement
  timeout), so a cancelled caller never waits long for its thread.
- Every change is one transaction, and every transition that two nodes could race
  for is a conditional UPDATE: claiming takes rows `FOR UPDATE SKIP LOCKED` (a
  row one node is taking is skipped by the others, never waited for, never taken
  twice); a node is declared dead by the one UPDATE that still sees it 'up' with
  an old heartbeat, and that transaction also takes its RUNNING jobs and releases
  its claimed-but-not-started ones, so exactly one node rescues them.
- `jobs.node` is written only here (the store's job-record upsert leaves it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from ..core.ids import JobId
from ..core.job import Job
from .codec import decode_job

CONNECT_TIMEOUT = 5  # seconds (psycopg's connect_timeout)
STATEMENT_TIMEOUT_MS = 5000
CONTROL_CHANNEL = "jobserver_control"
QUEUE_CHANNEL = "jobserver_queue"
# Heartbeats are stamped and judged by the database's clock: nodes' clocks may differ.
NOW = "extract(epoch from clock_timestamp())"
# The claiming node is 'up' (its id the parameter): a node declared dead claims nothing.
UP = "EXISTS (SELECT 1 FROM nodes WHERE nodes.id = %s AND nodes.state = 'up')"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rescue:
    """What declaring a node dead took: its RUNNING jobs (now claimed by the
    rescuer) and how many claimed-but-not-started jobs went back to the queue."""

    node: str
    running: list[Job]
    released: int


def _job(row: tuple[object, ...]) -> Job:
    return decode_job(str(row[0]), row[1])


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


class NodesDb:
    """One connection's worth of node SQL (used by one thread at a time)."""

    def __init__(self, url: str, node_id: str) -> None:
        self._url = url
        self.node_id = node_id
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def _c(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reset(self) -> None:
        """Drop the connection after an error; the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    # ---- this node's row ---------------------------------------------------

    def register(self, host: str, pid: int) -> None:
        self._c().execute(
            f"INSERT INTO nodes (id, host, pid, started_at, heartbeat_at, state) "
            f"VALUES (%s, %s, %s, {NOW}, {NOW}, 'up') ON CONFLICT (id) DO UPDATE SET host = "
            "EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, "
            "heartbeat_at = EXCLUDED.heartbeat_at, state = 'up'",
            (self.node_id, host, pid))

    def heartbeat(self) -> bool:
        """False when this node is no longer 'up' (another node declared it dead)."""
        cur = self._c().execute(
            f"UPDATE nodes SET heartbeat_at = {NOW} WHERE id = %s AND state IN ('up', 'stopping')",
            (self.node_id,))
        return cur.rowcount == 1

    def set_state(self, state: str) -> None:
        self._c().execute("UPDATE nodes SET state = %s WHERE id = %s AND state <> 'dead'",
                          (state, self.node_id))

    def node_states(self) -> dict[str, str]:
        rows = self._c().execute("SELECT id, state FROM nodes").fetchall()
        return {str(i): str(s) for i, s in rows}

    # ---- claims ------------------------------------------------------------

    def claim(self, limit: int) -> list[Job]:
        """Take up to `limit` unclaimed QUEUED jobs, oldest first (none while
        this node is not 'up': one declared dead takes nothing more)."""
        if limit <= 0:
            return []
        rows = self._c().execute(
            "WITH c AS (SELECT id FROM jobs WHERE status = 'QUEUED' AND node IS NULL "
            f"AND {UP} ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE jobs SET node = %s FROM c WHERE jobs.id = c.id "
            "RETURNING jobs.data, jobs.pinned",
            (self.node_id, limit, self.node_id)).fetchall()
        jobs = [_job(r) for r in rows]
        jobs.sort(key=lambda j: (j.created_at, j.id))
        return jobs

    def claim_one(self, job_id: JobId) -> Job | None:
        """Take one particular job if it is QUEUED and unclaimed (to cancel it)."""
        row = self._c().execute(
            "UPDATE jobs SET node = %s WHERE id = %s AND status = 'QUEUED' AND node IS NULL "
            f"AND {UP} RETURNING data, pinned", (self.node_id, job_id, self.node_id)).fetchone()
        return None if row is None else _job(row)

    def release(self, job_ids: Sequence[JobId]) -> int:
        """Give this node's QUEUED jobs among `job_ids` back to the queue."""
        if not job_ids:
            return 0
        cur = self._c().execute(
            "UPDATE jobs SET node = NULL WHERE id = ANY(%s) AND node = %s AND status = 'QUEUED'",
            (list(job_ids), self.node_id))
        return self._released(cur.rowcount)

    def release_all(self) -> int:
        """Every QUEUED job this node holds back to the queue (graceful stop)."""
        cur = self._c().execute(
            "UPDATE jobs SET node = NULL WHERE node = %s AND status = 'QUEUED'", (self.node_id,))
        return self._released(cur.rowcount)

    def _released(self, count: int) -> int:
        """Wake the idle nodes when jobs went back to the queue."""
        if count:
            self._c().execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))
        return count

    def own_unfinished(self) -> list[Job]:
        """This node's jobs left QUEUED or RUNNING (recovery at start), oldest first."""
        rows = self._c().execute(
            "SELECT data, pinned FROM jobs WHERE node = %s AND status IN ('QUEUED', 'RUNNING') "
            "ORDER BY created_at, id", (self.node_id,)).fetchall()
        return [_job(r) for r in rows]

    def job_node(self, job_id: JobId) -> tuple[str | None, str] | None:
        """(node, status) of a job, None when there is no such job."""
        row = self._c().execute("SELECT node, status FROM jobs WHERE id = %s",
                                (job_id,)).fetchone()
        return None if row is None else (None if row[0] is None else str(row[0]), str(row[1]))

    # ---- liveness ----------------------------------------------------------

    def liveness(self, dead_after: float) -> tuple[list[str], int]:
        """The other nodes still counted alive whose heartbeat is older than
        `dead_after` s (oldest first), and how many nodes' heartbeats are fresh."""
        rows = self._c().execute(
            f"SELECT id, heartbeat_at < {NOW} - %s FROM nodes WHERE state IN ('up', 'stopping') "
            "ORDER BY heartbeat_at", (dead_after,)).fetchall()
        stale = [str(i) for i, old in rows if old and i != self.node_id]
        return stale, sum(1 for _, old in rows if not old)

    def declare_dead(self, node: str, dead_after: float) -> Rescue | None:
        """Declare `node` dead if its heartbeat is still older than `dead_after` s, and
        in the same transaction take its RUNNING jobs and release its queued ones.
        None when another node did it first (or the node came back)."""
        conn = self._c()
        with conn.transaction():
            won = conn.execute(
                "UPDATE nodes SET state = 'dead' WHERE id = %s AND state IN ('up', 'stopping') "
                f"AND heartbeat_at < {NOW} - %s RETURNING id", (node, dead_after)).fetchone()
            if won is None:
                return None
            rows = conn.execute(
                "UPDATE jobs SET node = %s WHERE node = %s AND status = 'RUNNING' "
                "RETURNING data, pinned", (self.node_id, node)).fetchall()
            released = conn.execute(
                "UPDATE jobs SET node = NULL WHERE node = %s AND status = 'QUEUED'",
                (node,)).rowcount
            if released:
                conn.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))
        running = sorted((_job(r) for r in rows),
                         key=lambda j: (j.created_at, j.id))
        return Rescue(node=node, running=running, released=released)

    # ---- control -----------------------------------------------------------

    def send_control(self, node: str, verb: str, job_id: JobId) -> None:
        self._c().execute("SELECT pg_notify(%s, %s)",
                          (CONTROL_CHANNEL, f"{node} {verb} {job_id}"))

    # ---- shared secrets ----------------------------------------------------

    def shared_secret(self, name: str, mine: str) -> str:
        """The secret `name` all nodes use: `mine` if this node is the first to
        offer one, else the one already there."""
        conn = self._c()
        conn.execute("INSERT INTO shared_secrets (name, value) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO NOTHING", (name, mine))
        row = conn.execute("SELECT value FROM shared_secrets WHERE name = %s",
                           (name,)).fetchone()
        assert row is not None
        return str(row[0])
