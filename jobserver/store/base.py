"""The Store interface: what the engine needs from persistence, and no SQL.

Rules: SQL stays inside a backend. Writes are queued and group-committed by
the backend's own `run` service, which calls each write's `on_commit` after
its commit, in write order; `write` waits only when the backlog is full
(backpressure on the producer, never unbounded memory). Reads see everything
that was committed; `wait_flushed` waits until everything written before the
call is committed. Nothing assumes one process owns the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ..core.events import Event
from ..core.ids import JobId, UserId
from ..core.job import Job
from ..core.states import Status

# Called once a write is committed, in the store's writer task: it must not
# block or raise (the engine publishes the write's events from it).
OnCommit = Callable[[], None]


class IncompatibleDatabase(Exception):
    """The database was written by a newer jobserver (a higher schema version)."""


class WriteFenced(Exception):
    """A write for a job another node holds now: this node was declared dead
    and its jobs taken over (cluster.py). Nothing of the group was committed;
    the node must stop."""


class DatabaseUnavailable(Exception):
    """The connection to a database server was lost (or never made): nothing of
    the operation that met it is known to be committed beyond what was acknowledged."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    owner: str | None = None  # None: every owner (admins)
    status: Status | None = None
    template: str | None = None
    limit: int = 50
    cursor: str | None = None  # opaque, from the previous page


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionRule:
    """Which finished, unpinned jobs go: those of `template` (None: any but the
    `exclude`d ones) that finished `before` (a time), or beyond the newest `keep`."""

    template: str | None = None
    exclude: tuple[str, ...] = ()
    before: float | None = None
    keep: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Expired:
    """A job retention removes: what its streams' `deleted` event needs."""

    job_id: JobId
    owner: UserId
    last_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyRecord:
    """An `Idempotency-Key` a user sent, what it was sent with and the job it made."""

    owner: str
    key: str
    fingerprint: str  # of the route and the canonical body
    job_id: JobId
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    committed_events: int
    commits: int
    pending: int


class Store(Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the database, then commit queued writes in groups until cancelled;
        on the way out, flush what is queued (bounded) and close."""

    async def write(self, events: Sequence[Event], job: Job | None = None, *,
                    on_commit: OnCommit | None = None,
                    key: IdempotencyRecord | None = None) -> None:
        """Queue events (and the job record as it stands after them, and an
        idempotency key naming the job) for commit, in one transaction; call
        `on_commit` once they are committed, never if they are not."""

    async def wait_flushed(self) -> None:
        """Return once everything queued before this call is committed."""

    async def get_job(self, job_id: JobId) -> Job | None: ...

    async def list_jobs(self, query: JobFilter) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (or None)."""

    async def events_after(self, job_id: JobId, after: int, *, limit: int = 1000) -> list[Event]:
        """Committed events of a job with seq > after, in order, at most `limit`."""

    async def events_but_lines_after(self, job_id: JobId, after: int, *,
                                     limit: int = 1000) -> list[Event]:
        """Like `events_after`, without the output lines (`Log` events)."""

    async def find_key(self, owner: str, key: str) -> IdempotencyRecord | None:
        """The committed idempotency key `key` of `owner` (expired or not)."""

    async def unfinished_jobs(self) -> list[Job]:
        """Jobs QUEUED or RUNNING, oldest first (for recovery at start)."""

    async def delete_job(self, job_id: JobId) -> None:
        """Remove a job, its events and the idempotency keys naming it (committed
        in order with other writes)."""

    async def delete_jobs(self, job_ids: Sequence[JobId]) -> None:
        """Remove jobs and their events in one transaction; return once committed."""

    async def set_pinned(self, job_id: JobId, pinned: bool) -> None:
        """Pin or unpin a job (in order with other writes); return once committed."""

    async def trim_logs(self, job_id: JobId, low: int, high: int) -> None:
        """Queue the removal of a job's log lines with seqs low..high (the log cap)."""

    async def expired_jobs(self, rule: RetentionRule, *, limit: int) -> list[Expired]:
        """Finished, unpinned jobs `rule` removes, oldest first, at most `limit`."""

    def statistics(self) -> StoreStatistics: ...
