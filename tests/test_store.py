"""The store contract, on each backend (`stores`: a real SQLite file in
tmp_path, a real PostgreSQL database of the suite's own server), and SQLite's
own (its file, its errors); PostgreSQL's own are in test_store_postgres.py.

No sleeps as assertions: a writer is held back by not starting `run` yet, by a
long linger, or by a commit parked on a threading.Event.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, new_job_id
from jobserver.core.job import Job, StepState
from jobserver.core.states import Status
from jobserver.errors import ValidationFailed
from jobserver.store import IncompatibleDatabase, JobFilter, StoreStatistics, codec
from jobserver.store.sqlite import SqliteStore

from .stores import AnyStore, Backend


def make_job(
    *, owner: str = "alice", template: str = "t", status: Status = Status.QUEUED,
    created_at: float = 1000.0, job_id: JobId | None = None, last_seq: int = 0,
) -> Job:
    return Job(id=job_id or new_job_id(), owner=UserId(owner), template=template,
               status=status, created_at=created_at, last_seq=last_seq)


def logs(job_id: JobId, first: int, n: int, *, ts: float = 1.5, stream: str = "stdout",
         text: str = "line") -> list[ev.Event]:
    return [ev.Log(job_id=job_id, seq=first + i, ts=ts, stream=stream, line=f"{text} {first + i}")
            for i in range(n)]


def every_event_type(job_id: JobId) -> list[ev.Event]:
    def at(seq: int) -> dict[str, Any]:
        return {"job_id": job_id, "seq": seq, "ts": 10.0 + seq}

    out: list[ev.Event] = [
        ev.Queued(**at(1), reason="retry"),
        ev.Started(**at(2), pid=4242, command="echo hi", step="build"),
        ev.Log(**at(3), stream="stderr", line="h\u00e9llo \udcff \x00 \"quoted\""),
        ev.Progress(**at(4), pct=12.5, at=1, of=8, message="going", step="build"),
        ev.Progress(**at(5), pct=50.0),
        ev.Step(**at(6), name="build", status="Succeeded"),
        ev.Spawned(**at(7), child_id=str(new_job_id()), template="child", name="kid"),
        ev.Result(**at(8), data={"n": 1, "nested": {"a": [1, 2, None]}}),
        ev.Error(**at(9), code="E1", message="bad", remediation="fix it", step="build"),
        ev.Warning(**at(10), message="careful"),
        ev.Bounce(**at(11), reason="server restarted"),
        ev.Finished(**at(12), status="FAILED", outcome="failed", exit_code=3,
                    message="boom", log_snippet="a\nb"),
        ev.Truncated(**at(13), lines=7, bytes=70, first_seq=4, last_seq=10),
        ev.Deleted(**at(14)),
    ]
    assert {type(e) for e in out} == set(ev.EVENT_TYPES.values())
    return out


# ---- events -----------------------------------------------------------------


async def test_every_event_type_round_trips(store: AnyStore) -> None:
    job = make_job()
    written = every_event_type(job.id)
    await store.write(written, job)
    await store.wait_flushed()
    assert await store.events_after(job.id, 0) == written
    assert await store.events_after(job.id, 5, limit=2) == written[5:7]
    assert await store.events_after(job.id, 14) == []
    assert await store.events_after(new_job_id(), 0) == []
    stats = store.statistics()
    assert (stats.committed_events, stats.commits, stats.pending) == (14, 1, 0)


async def test_events_but_lines_after_leaves_only_the_lines_out(store: AnyStore) -> None:
    job = make_job()
    j = job.id
    written = [*every_event_type(j)[:2], *logs(j, 3, 500),
               ev.Progress(job_id=j, seq=503, ts=3.0, pct=1.0), *logs(j, 504, 10),
               ev.Finished(job_id=j, seq=514, ts=4.0, status="SUCCEEDED", outcome="succeeded")]
    await store.write(written, job)
    await store.wait_flushed()
    rest = [e for e in written if type(e) is not ev.Log]
    assert await store.events_but_lines_after(j, 0) == rest
    assert await store.events_but_lines_after(j, 2) == rest[2:]
    assert await store.events_but_lines_after(j, 0, limit=2) == rest[:2]
    assert await store.events_but_lines_after(j, 514) == []


async def test_log_runs_become_chunks_and_expand_exactly(
    stores: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "MAX_CHUNK_LINES", 8)
    job = make_job()
    j = job.id
    other = new_job_id()
    written: list[ev.Event] = []
    # One group (the writer is parked in its linger): runs merge across
    # writes while seqs stay contiguous, whatever the ts and stream.
    async with trio.open_nursery() as n:
        parked = stores.new(linger=3600)
        await n.start(parked.run)
        for batch in (
            logs(j, 1, 5, ts=1.0),
            logs(j, 6, 2, ts=2.0, stream="stderr"),
            logs(other, 1, 3),  # another job in between does not split j's run
            logs(j, 8, 12, ts=2.0, stream="stderr"),  # 19 lines: chunks of 8
            [ev.Progress(job_id=j, seq=20, ts=3.0, pct=1.0)],
            logs(j, 21, 3, ts=4.0),
            logs(j, 24, 1, ts=4.0, stream="stderr") + logs(j, 25, 2, ts=5.0),
        ):
            await parked.write(batch, job)
            written.extend(e for e in batch if e.job_id == j)
        n.cancel_scope.cancel()  # the final flush commits it all at once
    assert parked.statistics().commits == 1
    assert stores.rows(j) == [
        (1, 8, "log"), (9, 16, "log"), (17, 19, "log"), (20, 20, "progress"), (21, 26, "log"),
    ]
    reopened = stores.new()
    async with trio.open_nursery() as n:
        await n.start(reopened.run)
        for after in range(27):
            for limit in (1, 2, 7, 8, 9, 30):
                got = await reopened.events_after(j, after, limit=limit)
                assert got == written[after:after + limit], (after, limit)
        assert [e.seq for e in await reopened.events_after(other, 0)] == [1, 2, 3]
        n.cancel_scope.cancel()


async def test_chunks_are_cut_by_size(
    store: AnyStore, stores: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "MAX_CHUNK_CHARS", 100)
    job = make_job()
    lines = ["a" * 30] * 7 + ["b" * 250] + ["c" * 10] * 3
    written: list[ev.Event] = [ev.Log(job_id=job.id, seq=i + 1, ts=1.0, stream="stdout", line=x)
                               for i, x in enumerate(lines)]
    await store.write(written, job)
    await store.wait_flushed()
    # 3 x 30 fit in 100; a line longer than a chunk goes alone.
    assert stores.rows(job.id) == [
        (1, 3, "log"), (4, 6, "log"), (7, 7, "log"), (8, 8, "log"), (9, 11, "log")]
    assert await store.events_after(job.id, 0) == written


async def test_non_contiguous_logs_start_a_new_chunk(store: AnyStore, stores: Backend) -> None:
    job = make_job()
    written = logs(job.id, 1, 3) + logs(job.id, 5, 2)  # seq 4 never came
    await store.write(written, job)
    await store.wait_flushed()
    assert stores.rows(job.id) == [(1, 3, "log"), (5, 6, "log")]
    assert await store.events_after(job.id, 3) == written[3:]


async def test_order_is_kept_across_many_writes_and_jobs(stores: Backend) -> None:
    store = stores.new(capacity=50, max_group=20, linger=0)
    jobs = [make_job() for _ in range(3)]
    expected: dict[JobId, list[ev.Event]] = {j.id: [] for j in jobs}
    async with trio.open_nursery() as n:
        await n.start(store.run)
        seqs = dict.fromkeys(expected, 0)
        for i in range(300):
            job = jobs[i % 3]
            first = seqs[job.id] + 1
            batch: list[ev.Event] = (
                logs(job.id, first, i % 7 + 1) if i % 5
                else [ev.Warning(job_id=job.id, seq=first, ts=1.0, message=str(i))]
            )
            seqs[job.id] += len(batch)
            expected[job.id].extend(batch)
            await store.write(batch, dataclasses.replace(job, last_seq=seqs[job.id]))
        await store.wait_flushed()
        for job in jobs:
            assert await store.events_after(job.id, 0, limit=10_000) == expected[job.id]
            stored = await store.get_job(job.id)
            assert stored is not None
            assert stored.last_seq == seqs[job.id]
        assert store.statistics().commits > 10
        n.cancel_scope.cancel()


# ---- the queue: backpressure and flushing -------------------------------------


async def test_write_waits_while_the_queue_is_full(stores: Backend) -> None:
    store = stores.new(capacity=10, linger=0)
    job = make_job()
    await store.write(logs(job.id, 1, 6), job)
    await store.write(logs(job.id, 7, 4), job)  # 10: full, but it fits
    assert store.statistics().pending == 10
    done: list[str] = []

    async def write(name: str, batch: list[ev.Event]) -> None:
        await store.write(batch, job)
        done.append(name)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as writers:
            writers.start_soon(write, "big", logs(job.id, 11, 3))
            await trio.testing.wait_all_tasks_blocked()
            writers.start_soon(write, "small", [])  # would fit by size; waits its turn
            await trio.testing.wait_all_tasks_blocked()
            writers.start_soon(write, "one", logs(job.id, 14, 1))
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # no writer is running: the queue stays full
            assert store.statistics().pending == 10
            await outer.start(store.run)
        assert done == ["big", "small", "one"]
        await store.wait_flushed()
        assert [e.seq for e in await store.events_after(job.id, 0)] == list(range(1, 15))
        outer.cancel_scope.cancel()


async def test_a_smaller_write_behind_a_waiting_one_keeps_its_place(stores: Backend) -> None:
    store = stores.new(capacity=4, max_group=4, linger=0)
    job = make_job()
    await store.write(logs(job.id, 1, 4), job)
    order: list[int] = []

    async def write(first: int, n: int) -> None:
        await store.write(logs(job.id, first, n), job)
        order.append(first)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as writers:
            writers.start_soon(write, 5, 3)
            await trio.testing.wait_all_tasks_blocked()
            writers.start_soon(write, 8, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert order == []
            await outer.start(store.run)
        assert order == [5, 8]
        await store.wait_flushed()
        assert [e.seq for e in await store.events_after(job.id, 0)] == list(range(1, 9))
        outer.cancel_scope.cancel()


async def assert_write_blocks(store: AnyStore, batch: list[ev.Event], job: Job) -> None:
    """`write(batch)` waits (no writer is running); cancelled, it queued nothing."""
    before = store.statistics()
    async with trio.open_nursery() as n:
        n.start_soon(store.write, batch, job)
        await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
    assert store.statistics() == before


async def test_a_cancelled_waiting_write_queues_nothing(stores: Backend) -> None:
    store = stores.new(capacity=2, linger=0)
    job = make_job()
    await store.write(logs(job.id, 1, 2), job)
    await assert_write_blocks(store, logs(job.id, 3, 1), job)
    assert store.statistics().pending == 2


async def test_a_write_larger_than_the_queue_goes_alone(stores: Backend) -> None:
    store = stores.new(capacity=5, max_group=5, linger=0)
    job = make_job()
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write(logs(job.id, 1, 12), job)
        await store.wait_flushed()
        assert len(await store.events_after(job.id, 0)) == 12
        n.cancel_scope.cancel()


async def test_long_lines_count_against_the_queue(stores: Backend) -> None:
    store = stores.new(capacity=1000, capacity_chars=100, linger=0)
    job = make_job()
    await store.write(logs(job.id, 1, 1, text="x" * 80), job)
    await store.write(logs(job.id, 2, 1, text="y" * 10), job)
    await assert_write_blocks(store, logs(job.id, 3, 1, text="z" * 30), job)


class CommitHook:
    """Runs `before(ops)` in the writer's thread before each group commit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stores: Backend) -> None:
        self.parked = threading.Event()
        self.released = threading.Event()
        real = stores.blocking.commit_group

        def commit_group(conn: Any, ops: Sequence[codec.Op]) -> None:
            self.before(ops)
            real(conn, ops)

        monkeypatch.setattr(stores.blocking, "commit_group", commit_group)

    def before(self, ops: Sequence[codec.Op]) -> None:
        pass

    def park(self) -> None:
        """Hold this commit until `released` is set."""
        self.parked.set()
        assert self.released.wait(timeout=10)

    async def wait_parked(self) -> None:
        assert await trio.to_thread.run_sync(self.parked.wait, 10)


def lines_of(ops: Sequence[codec.Op]) -> set[int]:
    return {e.seq for op in ops if isinstance(op, codec.WriteOp) for e in op.events}


async def test_wait_flushed_waits_for_earlier_writes_only(
    stores: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = CommitHook(monkeypatch, stores)
    hook.before = lambda ops: hook.park() if 2 in lines_of(ops) else None  # type: ignore[method-assign]
    job = make_job()
    store = stores.new(max_group=1, linger=0)
    await store.write(logs(job.id, 1, 1), job)
    flushed = trio.Event()

    async def waiter() -> None:
        await store.wait_flushed()
        flushed.set()

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await store.write(logs(job.id, 2, 1), job)  # queued after the waiter's call
        await n.start(store.run)
        await hook.wait_parked()  # the first write is committed, the second is held
        with trio.fail_after(5):
            await flushed.wait()
        assert [e.seq for e in await store.events_after(job.id, 0)] == [1]
        assert store.statistics().pending == 1
        hook.released.set()
        await store.wait_flushed()
        assert [e.seq for e in await store.events_after(job.id, 0)] == [1, 2]
        await store.wait_flushed()  # nothing pending: returns at once
        n.cancel_scope.cancel()


async def test_cancelling_run_flushes_what_is_queued(stores: Backend) -> None:
    job = make_job()
    store = stores.new(linger=3600)  # the writer would wait an hour
    async with trio.open_nursery() as n:
        await n.start(store.run)
        for first in range(1, 1001, 100):
            await store.write(logs(job.id, first, 100),
                              dataclasses.replace(job, last_seq=first + 99))
        assert store.statistics().commits == 0
        n.cancel_scope.cancel()
    assert store.statistics() == StoreStatistics(committed_events=1000, commits=1, pending=0)
    with pytest.raises(trio.ClosedResourceError):
        await store.write(logs(job.id, 1001, 1), job)
    with pytest.raises(trio.ClosedResourceError):
        await store.get_job(job.id)
    await store.wait_flushed()  # everything it took was committed

    reopened = stores.new()
    async with trio.open_nursery() as n:
        await n.start(reopened.run)
        assert len(await reopened.events_after(job.id, 0, limit=5000)) == 1000
        stored = await reopened.get_job(job.id)
        assert stored is not None
        assert stored.last_seq == 1000
        n.cancel_scope.cancel()


async def test_the_final_flush_is_bounded(stores: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobserver.store.committer.FLUSH_TIMEOUT", 0.05)
    hook = CommitHook(monkeypatch, stores)

    def before(ops: Sequence[codec.Op]) -> None:
        if 1 in lines_of(ops):
            hook.park()  # until the run is cancelled
        elif 2 in lines_of(ops):
            time.sleep(0.2)  # a slow disk: the flush runs out of time after this

    hook.before = before  # type: ignore[method-assign]
    job = make_job()
    store = stores.new(max_group=1, linger=0)
    for seq in (1, 2, 3):
        await store.write(logs(job.id, seq, 1), job)
    failed = trio.Event()

    async def waiter() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await store.wait_flushed()
        failed.set()

    async with trio.open_nursery() as outer:
        outer.start_soon(waiter)
        async with trio.open_nursery() as inner:
            await inner.start(store.run)
            await hook.wait_parked()
            inner.cancel_scope.cancel()
            hook.released.set()
    assert failed.is_set()
    assert store.statistics() == StoreStatistics(committed_events=2, commits=2, pending=1)


async def test_a_failed_commit_stops_the_store(tmp_path: Path) -> None:
    """(On PostgreSQL a repeated seq is a repeated group, and harmless:
    test_store_postgres.py.)"""
    job = make_job()
    store = SqliteStore(tmp_path / "jobserver.db", linger=0)
    with pytest.RaisesGroup(sqlite3.IntegrityError):
        async with trio.open_nursery() as n:
            await n.start(store.run)
            await store.write(logs(job.id, 1, 2), job)
            await store.wait_flushed()
            await store.write(logs(job.id, 2, 1), job)  # seq 2 again
            await trio.sleep_forever()
    with pytest.raises(trio.ClosedResourceError):
        await store.write(logs(job.id, 3, 1), job)


async def test_on_commit_runs_after_the_commit_in_order_and_never_for_a_failed_one(
        stores: Backend) -> None:
    """A full disk (SQLite's "database or disk is full", made here by capping the
    database's pages; on PostgreSQL a constraint the rows break) fails the
    commit: its writes' callbacks never run, so nothing of them is published,
    and the store stops with the error."""
    job = make_job()
    store = stores.new(linger=0)
    called: list[int] = []

    async def seen_by_a_reader(seq: int) -> bool:
        return any(e.seq == seq for e in await store.events_after(job.id, 0, limit=10))

    failure: Any = (pytest.RaisesExc(sqlite3.OperationalError, match="full")
                    if stores.name == "sqlite" else psycopg.errors.CheckViolation)
    with pytest.RaisesGroup(failure):
        async with trio.open_nursery() as n:
            await n.start(store.run)
            await store.write(logs(job.id, 1, 1), job, on_commit=lambda: called.append(1))
            await store.write(logs(job.id, 2, 1), job, on_commit=lambda: called.append(2))
            await store.wait_flushed()
            assert called == [1, 2] and await seen_by_a_reader(2)
            stores.refuse_big_rows(store)
            big = [ev.Log(job_id=job.id, seq=3 + i, ts=1.0, stream="stdout", line="x" * 4000)
                   for i in range(100)]
            await store.write(big, job, on_commit=lambda: called.append(3))
            await trio.sleep_forever()
    assert called == [1, 2]


# ---- jobs ---------------------------------------------------------------------


async def test_last_job_record_of_a_group_wins(stores: Backend) -> None:
    job = make_job()
    store = stores.new(linger=3600)
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write(logs(job.id, 1, 1), dataclasses.replace(job, last_seq=1))
        await store.write([], dataclasses.replace(job, status=Status.RUNNING, pid=7, last_seq=1))
        n.cancel_scope.cancel()
    assert store.statistics().commits == 1
    reopened = stores.new()
    async with trio.open_nursery() as n:
        await n.start(reopened.run)
        assert await reopened.get_job(job.id) == dataclasses.replace(
            job, status=Status.RUNNING, pid=7, last_seq=1)
        assert await reopened.get_job(new_job_id()) is None
        n.cancel_scope.cancel()


async def all_pages(store: AnyStore, query: JobFilter) -> list[list[Job]]:
    pages: list[list[Job]] = []
    while True:
        jobs, cursor = await store.list_jobs(query)
        pages.append(jobs)
        if cursor is None:
            return pages
        query = dataclasses.replace(query, cursor=cursor)


async def test_list_jobs_filters_and_pages_without_gaps(store: AnyStore) -> None:
    jobs = [
        make_job(owner=("alice", "bob")[i % 2], template=("a", "b", "c")[i % 3],
                 status=(Status.QUEUED, Status.RUNNING, Status.SUCCEEDED, Status.FAILED)[i % 4],
                 created_at=1000.0 + i // 3)  # ties on created_at: id breaks them
        for i in range(31)
    ]
    for job in jobs:
        await store.write([], job)
    await store.wait_flushed()
    newest_first = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)
    cases: list[tuple[JobFilter, Callable[[Job], bool]]] = [
        (JobFilter(), lambda j: True),
        (JobFilter(owner="alice"), lambda j: j.owner == "alice"),
        (JobFilter(status=Status.RUNNING), lambda j: j.status is Status.RUNNING),
        (JobFilter(template="b"), lambda j: j.template == "b"),
        (JobFilter(owner="bob", template="c", status=Status.FAILED),
         lambda j: (j.owner, j.template, j.status) == ("bob", "c", Status.FAILED)),
        (JobFilter(owner="nobody"), lambda j: False),
    ]
    for query, keep in cases:
        expected = [j for j in newest_first if keep(j)]
        for limit in (1, 4, 50):
            pages = await all_pages(store, dataclasses.replace(query, limit=limit))
            assert [j for page in pages for j in page] == expected, (query, limit)
            assert all(len(page) <= limit for page in pages)
            assert len(pages) == max(1, -(-len(expected) // limit))


@pytest.mark.parametrize("cursor", ["%%%", "bm9waXBl", "MTIzfA", "bmFufHg", "/w"])
async def test_a_malformed_cursor_is_a_validation_error(store: AnyStore, cursor: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        await store.list_jobs(JobFilter(cursor=cursor))
    assert info.value.field == "cursor"


async def test_unfinished_jobs_oldest_first(store: AnyStore) -> None:
    statuses = [Status.RUNNING, Status.SUCCEEDED, Status.QUEUED, Status.CANCELLED,
                Status.QUEUED, Status.FAILED, Status.RUNNING]
    jobs = [make_job(status=s, created_at=2000.0 - i) for i, s in enumerate(statuses)]
    for job in jobs:
        await store.write([], job)
    await store.wait_flushed()
    got = await store.unfinished_jobs()
    assert got == sorted((j for j in jobs if not j.status.terminal), key=lambda j: j.created_at)


async def test_delete_removes_the_job_and_its_events(store: AnyStore, stores: Backend) -> None:
    gone, kept = make_job(), make_job()
    await store.write(every_event_type(gone.id), gone)
    await store.write(logs(kept.id, 1, 3), kept)
    await store.delete_job(gone.id)  # returns once committed
    assert await store.get_job(gone.id) is None
    assert await store.events_after(gone.id, 0) == []
    assert stores.rows(gone.id) == []
    assert await store.get_job(kept.id) == kept
    assert len(await store.events_after(kept.id, 0)) == 3
    await store.delete_job(new_job_id())  # nothing to delete is fine


async def test_delete_is_ordered_with_writes_in_one_group(stores: Backend) -> None:
    job = make_job()
    store = stores.new(linger=0)
    await store.write(logs(job.id, 1, 5), job)
    async with trio.open_nursery() as n:
        n.start_soon(store.delete_job, job.id)
        await trio.testing.wait_all_tasks_blocked()
        again = dataclasses.replace(job, template="again")
        await store.write(logs(job.id, 1, 2, text="new"), again)  # after the delete
        await n.start(store.run)
        await store.wait_flushed()
        assert store.statistics().commits == 1
        assert await store.get_job(job.id) == again
        assert [e.line for e in await store.events_after(job.id, 0)] == [  # type: ignore[attr-defined]
            "new 1", "new 2"]
        n.cancel_scope.cancel()


# ---- the database ----------------------------------------------------------


async def test_reopening_keeps_everything(stores: Backend) -> None:
    job = dataclasses.replace(
        make_job(status=Status.RUNNING), params={"n": 3, "names": ["a", "b"]},
        command=("echo", "hi"), started_at=1001.5, pid=99, command_line="echo hi",
        progress={"pct": 50.0, "message": "half"},
        steps=(StepState(name="build", status="Running", started_at=1002.0,
                         errors=({"code": "E", "message": "m"},)),),
        result={"ok": True}, errors=({"code": "E", "message": "m"},), warnings=("w",),
        parent_id=new_job_id(), correlation_id="c-1", attempt=2, last_seq=13,
    )
    written = every_event_type(job.id)
    first = stores.new()
    async with trio.open_nursery() as n:
        await n.start(first.run)
        await first.write(written, job)
        await first.wait_flushed()
        n.cancel_scope.cancel()
    assert stores.recorded_version() == stores.schema_version
    if stores.name == "sqlite":
        assert stores.query("PRAGMA journal_mode") == [("wal",)]
    second = stores.new()
    async with trio.open_nursery() as n:
        await n.start(second.run)
        assert await second.get_job(job.id) == job
        assert await second.events_after(job.id, 0) == written
        assert await second.unfinished_jobs() == [job]
        jobs, cursor = await second.list_jobs(JobFilter())
        assert (jobs, cursor) == ([job], None)
        n.cancel_scope.cancel()


async def test_a_newer_schema_is_refused(stores: Backend) -> None:
    stores.record_version(stores.schema_version + 1)
    store = stores.new()
    async with trio.open_nursery() as n:
        with pytest.raises(IncompatibleDatabase) as info:
            await n.start(store.run)
    # The message names both versions.
    assert f"version {stores.schema_version + 1} is newer" in str(info.value)
    assert f"({stores.schema_version})" in str(info.value)
    assert stores.recorded_version() == stores.schema_version + 1  # left as it was


async def test_run_only_once(store: AnyStore) -> None:
    with pytest.raises(RuntimeError):
        await store.run()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobserver.db"


@pytest.fixture
async def sqlite_store(path: Path, nursery: trio.Nursery) -> SqliteStore:
    s = SqliteStore(path, linger=0)
    await nursery.start(s.run)
    return s


async def test_the_database_file_is_private(sqlite_store: SqliteStore, path: Path) -> None:
    assert (await trio.Path(path).stat()).st_mode & 0o077 == 0


async def test_reads_go_on_while_the_database_is_locked_for_writing(
    sqlite_store: SqliteStore, path: Path
) -> None:
    store = sqlite_store
    job = make_job()
    await store.write(logs(job.id, 1, 3), job)
    await store.wait_flushed()
    other = sqlite3.connect(path, isolation_level=None)  # another writer, e.g. a second node
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM events")
        with trio.fail_after(5):
            assert len(await store.events_after(job.id, 0)) == 3
            assert await store.get_job(job.id) == job
            assert await store.events_after(job.id, 0, limit=0) == []
        other.execute("ROLLBACK")
    finally:
        other.close()
