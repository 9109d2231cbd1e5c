"""Where a node's queued jobs come from: the seam between one node and several.

Rules: the supervisor takes work from the engine's `LocalQueue` only (sync,
FIFO), whatever the backend. With one node (SQLite), a submit puts its job
there and that is the whole queue. With several (PostgreSQL) the database is
the queue: a submit only records the job QUEUED, and a `Claims` service
(cluster.py) takes jobs from the database within this node's free slots and
puts them into the local queue; the engine asks it for everything that
involves other nodes (its own unfinished jobs at start, giving jobs back,
cancelling a job that is not here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from .core.ids import JobId
from .core.job import Job


class LocalQueue:
    """FIFO of the job ids this node holds QUEUED, and the wake-up of whoever takes them."""

    def __init__(self) -> None:
        self._ids: dict[JobId, None] = {}
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def put(self, job_id: JobId) -> None:
        self._ids[job_id] = None
        self._changed.set()

    def take(self) -> JobId | None:
        for job_id in self._ids:
            del self._ids[job_id]
            return job_id
        return None

    def remove(self, job_id: JobId) -> bool:
        if job_id not in self._ids:
            return False
        del self._ids[job_id]
        return True

    def kick(self) -> None:
        self._changed.set()

    async def wait_changed(self) -> None:
        self._changed = trio.Event()
        await self._changed.wait()

    def ids(self) -> list[JobId]:
        return list(self._ids)


class Claims(Protocol):
    """The database's queue, as the engine sees it (cluster.Cluster)."""

    node_id: str

    def wake(self) -> None:
        """A slot may have freed: look for jobs to claim."""

    async def own_unfinished(self) -> list[Job]:
        """This node's jobs left QUEUED or RUNNING by its previous run."""

    async def release(self, job_ids: Sequence[JobId]) -> None:
        """Give these QUEUED jobs of this node back to the queue (committed first)."""

    async def cancel_elsewhere(self, job: Job) -> Job | None:
        """Cancel a job this node does not hold; the job as it ended (None: it was
        claimed here meanwhile, try locally)."""
