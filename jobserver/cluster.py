"""Several nodes on one PostgreSQL database: this node's identity, its heartbeat,
its claims on the queue, the rescue of dead nodes, control across nodes, and the
keys all nodes share.

Rules:
- A node is known by the id kept in its data dir (`node.id`), so a restart of the
  same node takes back its own jobs, and only those (`own_unfinished`).
- The database is the queue (queueing.py): this node claims jobs only within its
  free slots (running + held QUEUED < slots), oldest first, when a notification
  on `jobserver_queue` says there may be some, when a slot frees, and every
  `CLAIM_POLL` seconds in case a notification was lost.
- Every `node_heartbeat_interval` the node stamps its row and looks for nodes
  whose stamp is older than `node_dead_after`; it declares each dead in one
  conditional transaction (store/postgres_nodes.py), so exactly one node rescues
  a dead node's jobs, the way a restart does (engine.take_over); it signals only
  processes it can prove are those jobs' (groups.py: never another machine's).
  Then it ends the RUNNING jobs the database says are its own and the engine
  does not hold (`_rescue_orphans`: a declaration whose answer was lost).
  A node that finds itself declared dead stops at once (`NodeFenced`): its jobs
  belong to others now.
- A cancel for a job another node runs goes to that node as a notification on
  `jobserver_control`; the owner acts on it, the asker waits, bounded, for the
  job's end in the database.
- The SQL lives in store/postgres_nodes.py; each of its two connections is used
  by one worker thread at a time (a lock each), every call bounded.
- A rescue, once its node is declared dead, is carried to its end through a
  lost database: what it reads and the release of re-queued jobs are tried
  again every `RETRY_DELAY` until they go through (the store's writes wait on
  their own, up to `database_lost_after`), so no job is left held by this node
  in the database and by nobody here.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
import trio

from .auth import PROGRESS_KEY_FILE, SIGNING_KEY_FILE, new_rsa_pem, read_or_create_secret
from .config import Config
from .core.ids import JobId
from .core.job import Job
from .core.states import Status
from .engine import Engine
from .errors import NotFound, Unavailable
from .livejob import LiveJob
from .store import DatabaseUnavailable
from .store.postgres_nodes import CONTROL_CHANNEL, QUEUE_CHANNEL, NodesDb

log = logging.getLogger("jobserver.cluster")

T = TypeVar("T")

NODE_ID_FILE = "node.id"  # in the data directory
DELETED_CHANNEL = "jobserver_deleted"
# Seconds between looks at the queue when no notification came (a safety net).
CLAIM_POLL = 1.0
# Control messages waiting for this node to act on them; a cancel beyond it is
# dropped (logged) and its asker's wait runs out.
CONTROL_BACKLOG = 256
# How often a cancel's asker looks whether the job ended elsewhere, and how
# long it waits beyond the owner's kill grace.
CANCEL_POLL = 0.05
CANCEL_MARGIN = 5.0
# After a failed database call, the loop waits this long before the next.
RETRY_DELAY = 0.5


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    heartbeat_age: float  # seconds since this node's heartbeat was last stamped
    nodes_alive: int  # nodes (this one included) with a fresh heartbeat, at the last look
    declared_dead: int  # nodes this node declared dead (and rescued), since start
    claimed: int  # jobs this node claimed from the shared queue, since start


class NodeFenced(RuntimeError):
    """Another node declared this one dead and took its jobs: it must stop."""


class Listener(Protocol):
    """The shared LISTEN service (store/postgres_listen.py)."""

    def listen(self, channels: Iterable[str], consumer: Any) -> None: ...


def node_id_for(data_dir: Path) -> str:
    """This node's id: made once (host name and a random part), kept in the data dir."""
    made = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    return read_or_create_secret(data_dir / NODE_ID_FILE, made.encode).decode().strip()


class Cluster:
    """This node among the others (`queueing.Claims` for the engine)."""

    def __init__(self, engine: Engine, url: str, *, node_id: str,
                 running: Callable[[], int], listener: Listener | None = None,
                 settle: Callable[[JobId, int], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self.config = engine.config
        self.node_id = node_id
        self._running = running
        self._settle = settle
        self._db = NodesDb(url, node_id)  # claims, control, releases
        self._beat = NodesDb(url, node_id)  # heartbeat and liveness
        self._db_lock = trio.Lock()
        self._beat_lock = trio.Lock()
        self._wake = trio.Event()
        self._last_beat = time.monotonic()
        self._alive = 1
        self._declared_dead = 0
        self._claimed = 0
        self._control_in, self._control_out = trio.open_memory_channel[tuple[str, list[str]]](
            CONTROL_BACKLOG)
        if listener is not None:
            listener.listen([QUEUE_CHANNEL, CONTROL_CHANNEL, DELETED_CHANNEL], self)

    # ---- database calls ----------------------------------------------------

    async def _call(self, db: NodesDb, fn: Callable[..., T], *args: Any) -> T:
        lock = self._db_lock if db is self._db else self._beat_lock
        async with lock:
            try:
                return await trio.to_thread.run_sync(fn, *args)
            except psycopg.Error:
                db.reset()
                raise

    # ---- the service ---------------------------------------------------------

    async def register(self) -> None:
        """This node's row says 'up' (before recovery: see postgres_nodes.declare_dead)."""
        await self._call(self._beat, self._beat.register, socket.gethostname(), os.getpid())
        self._last_beat = time.monotonic()
        log.info("node %s is up", self.node_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._watch_loop)
                nursery.start_soon(self._claim_loop)
                nursery.start_soon(self._control_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._db.close)
                await trio.to_thread.run_sync(self._beat.close)

    async def leave(self) -> None:
        """The graceful stop, once running jobs are bounced and committed: this
        node's QUEUED jobs go back to the queue, its row says 'stopped'."""
        released = await self._call(self._db, self._db.release_all)
        await self._call(self._beat, self._beat.set_state, "stopped")
        log.info("node %s stopped: %d jobs back to the shared queue", self.node_id, released)

    # ---- the listener's consumer -------------------------------------------

    def notify(self, channel: str, payload: str) -> None:
        if channel == QUEUE_CHANNEL:
            self.wake()
        elif channel == CONTROL_CHANNEL:
            node, _, rest = payload.partition(" ")
            verb, _, job_id = rest.partition(" ")
            if node == self.node_id:
                self._control(verb, [job_id])
        elif channel == DELETED_CHANNEL:
            self._control("removed", payload.split())

    def connected(self) -> None:
        self.wake()

    def _control(self, verb: str, job_ids: list[str]) -> None:
        try:
            self._control_in.send_nowait((verb, job_ids))
        except trio.WouldBlock:
            log.warning("control backlog full: %s of %s dropped", verb, " ".join(job_ids))

    def wake(self) -> None:
        self._wake.set()

    # ---- loops ---------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.node_heartbeat_interval
        while True:
            try:
                alive = await self._call(self._beat, self._beat.heartbeat)
            except psycopg.Error as exc:
                log.warning("heartbeat failed: %s", type(exc).__name__)
            else:
                if alive:
                    self._last_beat = time.monotonic()
                else:
                    raise NodeFenced(f"node {self.node_id} was declared dead by another node "
                                     "(its heartbeat stopped for longer than node_dead_after); "
                                     "its jobs were taken over: stopping")
            await trio.sleep(interval)

    async def _watch_loop(self) -> None:
        """Looks for dead nodes (a task of its own: a rescue never delays a heartbeat)."""
        while True:
            await trio.sleep(self.config.node_heartbeat_interval)
            try:
                stale, self._alive = await self._call(self._beat, self._beat.liveness,
                                                      self.config.node_dead_after)
                for node in stale:
                    await self._rescue(node)
                await self._rescue_orphans()
            except psycopg.Error as exc:
                log.warning("looking for dead nodes failed: %s", type(exc).__name__)

    async def _rescue(self, node: str) -> None:
        dead_after = self.config.node_dead_after
        rescue = await self._call(self._beat, self._beat.declare_dead, node, dead_after)
        if rescue is None:
            return  # another node was first, or it came back
        self._declared_dead += 1
        log.warning("node %s declared dead (no heartbeat for %g s): %d running jobs taken "
                    "over, %d queued ones back to the queue", node, dead_after,
                    len(rescue.running), rescue.released)
        await self._take_over(node, rescue.running)

    async def _take_over(self, node: str, jobs: Sequence[Job]) -> None:
        """End the RUNNING jobs taken from dead `node` (failed, or re-queued)."""
        dead_after = self.config.node_dead_after
        for job in jobs:
            await self._settle_job(job)
        await self.engine.take_over(
            jobs, lost=f"node {node} died while running it (no heartbeat for {dead_after:g} s)",
            bounced=f"node {node} died")
        self.wake()

    async def _rescue_orphans(self) -> None:
        """RUNNING jobs the database says are this node's that its engine does not
        hold: a rescue whose declaration committed but whose answer was lost with
        the connection, or one cut short. Ended as the rescue would have (each
        named by the node that ran it, its record's `node`). Claims and a
        rescue under way hold their jobs in the engine before they can be
        RUNNING here, a job leaves the engine only once its end is committed,
        and this runs in the watch loop, after its rescues."""
        held = await self._call(self._db, self._db.own_unfinished)
        suspects = {j.id for j in held
                    if j.status is Status.RUNNING and self.engine.local(j.id) is None}
        if not suspects:
            return
        # The read may predate the end of a job that finished here meanwhile (a job
        # leaves the engine once its end is committed): read again, and only the
        # jobs RUNNING here in both reads and held by no one all along are orphans.
        again = await self._call(self._db, self._db.own_unfinished)
        orphans = [j for j in again if j.id in suspects and j.status is Status.RUNNING
                   and self.engine.local(j.id) is None]
        by_node: dict[str, list[Job]] = {}
        for job in orphans:
            by_node.setdefault(job.node or "unknown", []).append(job)
        for node, jobs in by_node.items():
            log.warning("%d jobs of node %s held here and run by no one: taken over",
                        len(jobs), node)
            await self._take_over(node, jobs)

    async def _settle_job(self, job: Job) -> None:
        """What this node's subscribers of `job` have not yet seen of another
        node's run of it is published first (mirror.py); the job is this node's
        in the database already, so this is tried until the database answers."""
        while self._settle is not None:
            try:
                await self._settle(job.id, job.last_seq)
                return
            except DatabaseUnavailable as exc:
                log.warning("job %s: reading it failed (%s); again in %g s", job.id, exc,
                            RETRY_DELAY)
                await trio.sleep(RETRY_DELAY)

    async def _take(self, job: Job) -> LiveJob:
        """A job claimed from the database: this node's from now on."""
        await self._settle_job(job)
        return self.engine.adopt(job)

    async def _claim_loop(self) -> None:
        engine = self.engine
        while True:
            self._wake = trio.Event()
            free = self.config.slots - self._running() - len(engine.queued_ids())
            if engine.accepting and free > 0:
                try:
                    jobs = await self._call(self._db, self._db.claim, free)
                except psycopg.Error as exc:
                    log.warning("claiming failed: %s", type(exc).__name__)
                    await trio.sleep(RETRY_DELAY)
                    continue
                self._claimed += len(jobs)
                for job in jobs:
                    await self._take(job)
                    engine.enqueue(job.id)
            with trio.move_on_after(CLAIM_POLL):
                await self._wake.wait()

    async def _control_loop(self) -> None:
        async for verb, job_ids in self._control_out:
            if verb == "removed":
                await self.engine.remove_outputs([JobId(j) for j in job_ids])
                continue
            for job_id in job_ids:
                live = self.engine.local(JobId(job_id))
                if verb == "cancel" and live is not None and not live.job.status.terminal:
                    log.info("job %s: cancel from another node", job_id)
                    await self.engine.stop(live, "cancel")

    def statistics(self) -> ClusterStatistics:
        return ClusterStatistics(heartbeat_age=time.monotonic() - self._last_beat,
                                 nodes_alive=self._alive, declared_dead=self._declared_dead,
                                 claimed=self._claimed)

    # ---- what the engine asks (queueing.Claims) ------------------------------

    async def own_unfinished(self) -> list[Job]:
        return await self._call(self._db, self._db.own_unfinished)

    async def release(self, job_ids: Sequence[JobId]) -> None:
        """Give jobs back to the queue; tried until the database answers (they
        are this node's there until then, and no other node could take them)."""
        while True:
            try:
                await self._call(self._db, self._db.release, job_ids)
                return
            except psycopg.Error as exc:
                log.warning("releasing %d jobs failed (%s); again in %g s", len(job_ids),
                            type(exc).__name__, RETRY_DELAY)
                await trio.sleep(RETRY_DELAY)

    async def cancel_elsewhere(self, job: Job) -> Job | None:
        engine = self.engine
        with trio.move_on_after(self.config.kill_grace + CANCEL_MARGIN):
            while True:
                claimed = await self._call(self._db, self._db.claim_one, job.id)
                if claimed is not None:  # queued, unclaimed: ours now, and cancelled
                    live = await self._take(claimed)
                    await engine.finish_cancelled(live)
                    engine.forget(job.id)
                    await engine.store.wait_flushed()
                    return live.published
                where = await self._call(self._db, self._db.job_node, job.id)
                if where is None:
                    raise NotFound("job not found", code="job_not_found")
                node, status = where
                if Status(status).terminal:
                    return await engine.store.get_job(job.id)
                if node == self.node_id:
                    return None  # claimed here meanwhile: the engine cancels it
                if node is not None:
                    break
                await trio.sleep(CANCEL_POLL)  # released between the two looks: again
            await self._call(self._db, self._db.send_control, node, "cancel", job.id)
            while True:
                now = await engine.store.get_job(job.id)
                if now is None:
                    raise NotFound("job not found", code="job_not_found")
                if now.status.terminal:
                    return now
                await trio.sleep(CANCEL_POLL)
        raise Unavailable("the job's node did not end it in time; it may still end")


# ---- the keys all nodes share -------------------------------------------------

SHARED_API_KEY = "api_signing_key"
SHARED_PROGRESS_KEY = "progress_key"


async def share_keys(config: Config, url: str) -> None:
    """Make this node's data-dir key files the ones every node uses: the first
    node to start puts its keys into `shared_secrets`, the others take those
    (and write them into their data dir, 0600, so `jobserver token` there makes
    tokens every node accepts). The progress key is shared only when it is the
    data dir's file (a configured key is the operator's to give every node)."""
    await trio.to_thread.run_sync(_share_keys, config, url)


def _share_keys(config: Config, url: str) -> None:
    db = NodesDb(url, "")
    try:
        _share(db, SHARED_API_KEY, config.data_dir / SIGNING_KEY_FILE,
               lambda: os.urandom(32))
        if config.progress_jwt_secret is None and config.progress_key_file is None:
            _share(db, SHARED_PROGRESS_KEY, config.data_dir / PROGRESS_KEY_FILE, new_rsa_pem)
    finally:
        db.close()


def _share(db: NodesDb, name: str, path: Path, make: Callable[[], bytes]) -> None:
    mine = read_or_create_secret(path, make)
    shared = base64.b64decode(db.shared_secret(name, base64.b64encode(mine).decode()))
    if shared != mine:
        tmp = path.with_name(path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(shared)
        os.replace(tmp, path)
        log.info("%s: the key all nodes share replaced this data dir's", path.name)
