"""The part of a store every backend shares: a bounded write queue, one
group-committing writer, reader slots and statistics. A backend adds only its
connections and its blocking half (SQL), the `Blocking` functions.

Rules:
- `write` and `delete_job` only queue; `run` is the one task that writes. It
  takes everything queued (up to a group's bound), commits it in ONE
  transaction (the blocking half's `commit_group`), calls the group's
  `on_commit` callbacks in queue order and then wakes `wait_flushed`
  waiters. Queued operations are committed in the order they were queued,
  and the last job record of a group is the one stored. A write that is
  never committed (a crash, a failed commit, a flush cut short) never has
  its callback called.
- The queue is bounded, in events and in characters of log text, counting
  what is being committed: a full queue makes `write` wait (FIFO, so order is
  kept) until a commit makes room. A single write bigger than the whole
  bound goes in alone.
- Every blocking call runs in a worker thread via `trio.to_thread.run_sync`
  (never abandoned, so a connection is never used by two threads at once).
  The writer connection belongs to `run`; reads take one of a few reader
  connections.
- On the way out `run` flushes what is queued (shielded, within
  `FLUSH_TIMEOUT`) and closes every connection. A failed commit is not
  retried: the error leaves `run`, and with it the server.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, TypeVarTuple

import trio

from ..core.events import Event, Log
from ..core.ids import JobId
from ..core.job import Job
from .base import (
    DatabaseUnavailable,
    Expired,
    IdempotencyRecord,
    JobFilter,
    OnCommit,
    RetentionRule,
    StoreStatistics,
)
from .codec import DeleteOp, Op, PinOp, TrimOp, WriteOp

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Events queued or being committed before `write` waits. A chatty job writes
# ~500k lines/s, so this is under half a second of its output, while a short
# Log event takes ~300 bytes of memory: ~60 MB at worst.
QUEUE_CAPACITY = 200_000
# ... and characters of log text queued or being committed: long lines (up to
# the executor's 64 KiB) would make 200k events gigabytes.
QUEUE_CAPACITY_CHARS = 64 << 20
# One transaction takes at most this many events and characters of log text
# (a single bigger write goes alone), so a commit stays in the tens of
# milliseconds and waiters see progress while a backlog drains.
MAX_GROUP_EVENTS = 50_000
MAX_GROUP_CHARS = 16 << 20
# After a quiet spell, the writer may wait this long for more writes to join
# the first one's transaction. It does not: events are published once
# committed (engine.py), so every millisecond here is a millisecond of
# fan-out latency. Under load no wait is needed anyway: writes queue up while
# the previous group commits.
LINGER = 0.0
# Shutdown gives the final flush this long; what is still queued then is lost.
FLUSH_TIMEOUT = 10.0
# Reader connections, i.e. reads that can run at once.
READERS = 3


class Blocking(Protocol[C_contra]):
    """A backend's blocking half (a module): SQL on a connection, in a worker thread."""

    def commit_group(self, conn: C_contra, ops: Sequence[Op], /) -> None: ...
    def get_job(self, conn: C_contra, job_id: JobId, /) -> Job | None: ...
    def list_jobs(self, conn: C_contra, query: JobFilter, /) -> tuple[list[Job], str | None]: ...
    def events_after(self, conn: C_contra, job_id: JobId, after: int, limit: int,
                     /) -> list[Event]: ...
    def events_but_lines_after(self, conn: C_contra, job_id: JobId, after: int, limit: int,
                               /) -> list[Event]: ...
    def find_key(self, conn: C_contra, owner: str, key: str, /) -> IdempotencyRecord | None: ...
    def unfinished_jobs(self, conn: C_contra, /) -> list[Job]: ...
    def expired_jobs(self, conn: C_contra, rule: RetentionRule, limit: int, /) -> list[Expired]: ...


@dataclass(frozen=True, slots=True)
class _Size:
    """How much of the bounds a queued operation takes (a delete counts as one event)."""

    events: int
    chars: int  # of log lines

    def __add__(self, other: _Size) -> _Size:
        return _Size(self.events + other.events, self.chars + other.chars)

    def __sub__(self, other: _Size) -> _Size:
        return _Size(self.events - other.events, self.chars - other.chars)

    def within(self, bound: _Size) -> bool:
        return self.events <= bound.events and self.chars <= bound.chars


class QueuedStore(ABC, Generic[C]):
    """`Store` over a backend's connections of type C and its blocking half.

    A backend subclass passes its `Blocking` module and implements `_open_writer`,
    `_open_reader` and `_close_connection` (blocking; run in a worker thread).
    """

    def __init__(
        self,
        sql: Blocking[C],
        *,
        capacity: int = QUEUE_CAPACITY,
        capacity_chars: int = QUEUE_CAPACITY_CHARS,
        max_group: int = MAX_GROUP_EVENTS,
        max_group_chars: int = MAX_GROUP_CHARS,
        linger: float = LINGER,
        readers: int = READERS,
        observe_commit: Callable[[float], None] | None = None,
    ) -> None:
        if min(capacity, capacity_chars, max_group, max_group_chars, readers) < 1:
            raise ValueError("capacities, group sizes and readers must be positive")
        self._sql = sql
        self._capacity = _Size(capacity, capacity_chars)
        self._max_group = _Size(max_group, max_group_chars)
        self._linger = linger
        self._readers = readers
        self._observe_commit = observe_commit  # seconds of each group commit (metrics)
        self._queue: deque[tuple[Op, _Size, OnCommit | None]] = deque()
        self._pending = _Size(0, 0)  # queued or being committed
        self._enqueued_ops = 0  # operations ever queued ...
        self._committed_ops = 0  # ... and committed: a prefix of them
        self._committed_events = 0
        self._commits = 0
        self._work = trio.Event()  # set while _queue is not empty
        self._progress = trio.Event()  # set (and replaced) after each commit / on close
        self._admission = trio.Lock()  # FIFO of writes waiting for room
        self._writer: C | None = None
        self._free_readers: list[C] = []
        self._reader_slots = trio.Semaphore(readers)
        self._started = False
        self._open = False
        self._closed = False

    # ---- the backend's connections (blocking) --------------------------------

    @abstractmethod
    def _open_writer(self) -> C:
        """The writer's connection; it creates or migrates the schema."""

    @abstractmethod
    def _open_reader(self) -> C: ...

    @abstractmethod
    def _close_connection(self, conn: C) -> None: ...

    # ---- the writer service ------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError(f"{type(self).__name__}.run can only be called once")
        self._started = True
        try:
            await trio.to_thread.run_sync(self._connect)
            self._open = True
            task_status.started()
            while True:
                if not self._queue:
                    self._work = trio.Event()
                    await self._work.wait()
                    if self._linger > 0:
                        await trio.sleep(self._linger)
                await self._commit_next()
        except BaseException as exc:
            # Flush on cancellation (shutdown) only: after a failed commit
            # another attempt would fail the same way.
            flush = isinstance(exc, trio.Cancelled) and self._open
            await self._shut(flush=flush)
            raise

    async def _commit_next(self) -> None:
        """Commit the oldest queued operations, within the group bound (or just one)."""
        ops: list[Op] = []
        callbacks: list[OnCommit] = []
        size = _Size(0, 0)
        while self._queue and (not ops or (size + self._queue[0][1]).within(self._max_group)):
            op, op_size, on_commit = self._queue.popleft()
            ops.append(op)
            size += op_size
            if on_commit is not None:
                callbacks.append(on_commit)
        assert self._writer is not None
        began = time.perf_counter()
        await self._commit(ops)
        if self._observe_commit is not None:
            self._observe_commit(time.perf_counter() - began)
        # No checkpoint from here on: a cancellation that arrived during the
        # commit (which ran to the end) is delivered after the bookkeeping.
        # Nor between callbacks: a pause there lets producers queue more while
        # a group is published, and a stalled subscriber's test measured the
        # memory that costs (RSS +34-39 MiB against under 21).
        for on_commit in callbacks:
            on_commit()
        self._pending -= size
        self._committed_ops += len(ops)
        self._committed_events += sum(len(op.events) for op in ops if isinstance(op, WriteOp))
        self._commits += 1
        self._progress.set()
        self._progress = trio.Event()

    async def _commit(self, ops: list[Op]) -> None:
        """Commit one group on the writer's connection (a backend may retry it)."""
        assert self._writer is not None
        await trio.to_thread.run_sync(self._sql.commit_group, self._writer, ops)

    def _usable(self, conn: C) -> bool:
        """Whether a reader's connection can still be used (else it is opened again)."""
        return True

    async def _shut(self, *, flush: bool) -> None:
        try:
            with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                while flush and self._queue:
                    await self._commit_next()
        finally:
            self._closed = True
            self._open = False
            self._progress.set()  # waiters see `_closed`
            with trio.CancelScope(shield=True):
                # Wait for reads in progress: their connections are closed below.
                for _ in range(self._readers):
                    await self._reader_slots.acquire()
                await trio.to_thread.run_sync(self._disconnect)
                for _ in range(self._readers):
                    self._reader_slots.release()

    def _connect(self) -> None:
        self._writer = self._open_writer()
        try:
            for _ in range(self._readers):
                self._free_readers.append(self._open_reader())
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        for conn in self._free_readers:
            self._close_connection(conn)
        self._free_readers.clear()
        if self._writer is not None:
            self._close_connection(self._writer)  # the writer goes last (SQLite checkpoints)
            self._writer = None

    # ---- writing -------------------------------------------------------------

    async def write(self, events: Sequence[Event], job: Job | None = None, *,
                    on_commit: OnCommit | None = None,
                    key: IdempotencyRecord | None = None) -> None:
        """Queue events (and the job record as it stands after them, and an
        idempotency key naming the job) for commit, in one transaction.

        Waits only while the queue is full. Writes are committed in the order
        their `write` calls returned; a cancelled `write` queued nothing.
        `on_commit` is called once they are committed (in the writer's task,
        with no await: it must not block or raise), never if they are not.
        """
        if not events and job is None and key is None:
            await trio.lowlevel.checkpoint()
            return
        chars = sum([len(e.line) for e in events if type(e) is Log])
        await self._admit(WriteOp(events=tuple(events), job=job, key=key),
                          _Size(max(1, len(events)), chars), on_commit)

    async def delete_job(self, job_id: JobId) -> None:
        """Remove a job and its events, in order with queued writes; return once committed.

        Once queued, the delete happens even if this call is cancelled while it waits.
        """
        await self.delete_jobs((job_id,))

    async def delete_jobs(self, job_ids: Sequence[JobId]) -> None:
        """Remove jobs and their events in one transaction, as `delete_job` does one."""
        ticket = await self._admit(DeleteOp(job_ids=tuple(job_ids)),
                                   _Size(max(1, len(job_ids)), 0))
        await self._wait_committed(ticket)

    async def set_pinned(self, job_id: JobId, pinned: bool) -> None:
        ticket = await self._admit(PinOp(job_id=job_id, pinned=pinned), _Size(1, 0))
        await self._wait_committed(ticket)

    async def trim_logs(self, job_id: JobId, low: int, high: int) -> None:
        """Queue the removal of log lines low..high of a job (returns once queued)."""
        await self._admit(TrimOp(job_id=job_id, low=low, high=high), _Size(1, 0))

    async def wait_flushed(self) -> None:
        """Return once everything queued before this call is committed.

        Raises `trio.ClosedResourceError` if the store closed first.
        """
        await self._wait_committed(self._enqueued_ops)

    async def _admit(self, op: Op, size: _Size, on_commit: OnCommit | None = None) -> int:
        """Queue `op`, waiting for room; its ticket: committed once `_committed_ops` reaches it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_writable()
        if self._admission.locked() or not self._has_room(size):
            async with self._admission:
                while not self._has_room(size):
                    await self._progress.wait()
                    self._check_writable()
        self._queue.append((op, size, on_commit))
        self._pending += size
        self._enqueued_ops += 1
        ticket = self._enqueued_ops
        self._work.set()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return ticket

    def _has_room(self, size: _Size) -> bool:
        return self._pending.events == 0 or (self._pending + size).within(self._capacity)

    def _check_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")

    async def _wait_committed(self, target: int) -> None:
        if self._committed_ops >= target:
            await trio.lowlevel.checkpoint()
            return
        while self._committed_ops < target:
            if self._closed:
                raise trio.ClosedResourceError("the store closed before the writes were committed")
            await self._progress.wait()

    # ---- reading -------------------------------------------------------------

    async def _read(self, fn: Callable[[C, *Ts], T], *args: *Ts) -> T:
        async with self._reader_slots:
            if not self._open:
                raise trio.ClosedResourceError("the store is not open")
            conn = self._free_readers.pop()
            try:
                if not self._usable(conn):
                    conn = await self._reopen(conn)
                try:
                    return await trio.to_thread.run_sync(fn, conn, *args)
                except DatabaseUnavailable:
                    if self._usable(conn):
                        raise
                # The connection was lost since its last use: once more, on a new one.
                conn = await self._reopen(conn)
                return await trio.to_thread.run_sync(fn, conn, *args)
            finally:
                self._free_readers.append(conn)

    async def _reopen(self, conn: C) -> C:
        await trio.to_thread.run_sync(self._close_connection, conn)
        return await trio.to_thread.run_sync(self._open_reader)

    async def get_job(self, job_id: JobId) -> Job | None:
        return await self._read(self._sql.get_job, job_id)

    async def list_jobs(self, query: JobFilter) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first (by created_at, then id), and the next page's cursor.

        A malformed cursor raises `ValidationFailed(field="cursor")`.
        """
        return await self._read(self._sql.list_jobs, query)

    async def events_after(self, job_id: JobId, after: int, *, limit: int = 1000) -> list[Event]:
        return await self._read(self._sql.events_after, job_id, after, limit)

    async def events_but_lines_after(self, job_id: JobId, after: int, *,
                                     limit: int = 1000) -> list[Event]:
        return await self._read(self._sql.events_but_lines_after, job_id, after, limit)

    async def find_key(self, owner: str, key: str) -> IdempotencyRecord | None:
        return await self._read(self._sql.find_key, owner, key)

    async def unfinished_jobs(self) -> list[Job]:
        return await self._read(self._sql.unfinished_jobs)

    async def expired_jobs(self, rule: RetentionRule, *, limit: int) -> list[Expired]:
        return await self._read(self._sql.expired_jobs, rule, limit)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            committed_events=self._committed_events,
            commits=self._commits,
            pending=self._pending.events,
        )
