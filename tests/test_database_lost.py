"""The database lost under a running node: PostgreSQL stopped and started again.

Against a private PostgreSQL server (conftest's `private_pg`: the session's is
shared by other tests):
while it is down, writes stay queued and producers wait once the bounded queue
is full; nothing is acknowledged (no `on_commit`) before its commit; once it is
back every write is committed, in order. Down for longer than `lost_after`, the
store fails with a message that says so.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import trio

from jobserver.core.job import Job
from jobserver.store.base import DatabaseUnavailable
from jobserver.store.postgres import PostgresStore

from .pg import PgServer
from .test_store import logs, make_job

CAPACITY = 40  # events queued before `write` waits


async def _write_batches(store: PostgresStore, job: Job, first: int, batches: int,
                         committed: list[int], returned: list[int]) -> None:
    seq = first
    for _ in range(batches):
        events = logs(job.id, seq, 10)
        last = seq + 9
        job = dataclasses.replace(job, last_seq=last)
        await store.write(events, job, on_commit=partial(committed.append, last))
        returned.append(last)
        seq += 10


async def test_writes_wait_for_the_database_and_all_commit_once_it_is_back(
        private_pg: PgServer) -> None:
    store = PostgresStore(private_pg.create_database(), capacity=CAPACITY, lost_after=60)
    job = make_job()
    committed: list[int] = []
    returned: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await _write_batches(store, job, 1, 2, committed, returned)
        await store.wait_flushed()
        assert committed == [10, 20]
        await trio.to_thread.run_sync(private_pg.pause)
        nursery.start_soon(_write_batches, store, job, 21, 10, committed, returned)
        await trio.sleep(1.0)
        # Down: nothing more acknowledged, and the producer waits on the full queue.
        assert committed == [10, 20]
        assert len(returned) < 2 + 10
        assert store.statistics().pending <= CAPACITY + 10
        await trio.to_thread.run_sync(private_pg.resume)
        with trio.fail_after(30):
            while len(committed) < 12:
                await trio.sleep(0.05)
        assert committed == list(range(10, 121, 10))  # every write, in order
        seqs = [e.seq for e in await store.events_after(job.id, 0, limit=1000)]
        assert seqs == list(range(1, 121))  # and readable again (readers reconnected)
        nursery.cancel_scope.cancel()


async def test_the_database_gone_too_long_fails_the_store_clearly(private_pg: PgServer) -> None:
    store = PostgresStore(private_pg.create_database(), lost_after=0.5)
    job = make_job()
    committed: list[int] = []
    failures: list[DatabaseUnavailable] = []
    try:
        with trio.fail_after(30):
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(store.run)
                    await trio.to_thread.run_sync(private_pg.pause)
                    await store.write(logs(job.id, 1, 5), dataclasses.replace(job, last_seq=5),
                                      on_commit=lambda: committed.append(5))
                    await trio.sleep_forever()
            except* DatabaseUnavailable as group:
                failures.extend(e for e in group.exceptions
                                if isinstance(e, DatabaseUnavailable))
    finally:
        await trio.to_thread.run_sync(private_pg.resume)
    assert len(failures) == 1
    assert "database_lost_after = 0.5" in str(failures[0])
    assert "5 events not persisted" in str(failures[0])
    assert committed == []  # never acknowledged
