"""The store's half of retention: `expired_jobs`' rules, pins and batched
deletes, on each backend; SQLite's schema 2 migration."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import trio

from jobserver.core import events as ev
from jobserver.core.job import Job
from jobserver.core.states import Status
from jobserver.store import RetentionRule
from jobserver.store import sqlite_blocking as db

from .stores import Backend
from .test_store import make_job


def done(job: Job, at: float) -> Job:
    return dataclasses.replace(job, status=Status.SUCCEEDED, completed_at=at, last_seq=2)


async def test_rules_pins_and_batched_deletes(stores: Backend) -> None:
    store = stores.new(linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        jobs = [done(make_job(template="a" if i % 2 else "b"), 100.0 + i) for i in range(6)]
        running = make_job(template="a", status=Status.RUNNING)
        for job in [*jobs, running]:
            await store.write([ev.Queued(job_id=job.id, seq=1, ts=1.0)], job)
        await store.set_pinned(jobs[0].id, True)

        async def ids(rule: RetentionRule, limit: int = 10) -> list[str]:
            return [e.job_id for e in await store.expired_jobs(rule, limit=limit)]

        # Oldest first; never the pinned one, nor one that has not finished.
        assert await ids(RetentionRule(before=104.0)) == [j.id for j in jobs[1:4]]
        assert await ids(RetentionRule(before=104.0), limit=2) == [j.id for j in jobs[1:3]]
        assert await ids(RetentionRule(template="a", before=200.0)) == [
            jobs[1].id, jobs[3].id, jobs[5].id]
        assert await ids(RetentionRule(exclude=("a",), before=200.0)) == [jobs[2].id,
                                                                          jobs[4].id]
        # Beyond the newest two (of five unpinned), newest first.
        assert await ids(RetentionRule(keep=2)) == [jobs[3].id, jobs[2].id, jobs[1].id]
        expired = await store.expired_jobs(RetentionRule(keep=4), limit=10)
        assert [(e.owner, e.last_seq) for e in expired] == [("alice", 2)]
        assert (await store.get_job(jobs[0].id)) == dataclasses.replace(jobs[0], pinned=True)
        await store.delete_jobs([jobs[1].id, jobs[2].id])
        assert await store.get_job(jobs[1].id) is None
        assert await store.events_after(jobs[2].id, 0) == []
        assert await ids(RetentionRule(keep=2)) == [jobs[3].id]
        # A record written while pinned and then unpinned: the column decides.
        await store.write([], dataclasses.replace(jobs[0], pinned=True))
        await store.set_pinned(jobs[0].id, False)
        assert (await store.get_job(jobs[0].id)) == jobs[0]
        nursery.cancel_scope.cancel()


def test_a_version_1_database_learns_when_its_jobs_finished(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    job = done(make_job(), 123.5)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in db.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO jobs (id, owner, status, template, created_at, data)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (job.id, job.owner, job.status.value,
                                                    job.template, job.created_at,
                                                    json.dumps(job.to_dict())))
    conn = db.connect(path, writer=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)
        assert conn.execute("SELECT completed_at, pinned FROM jobs").fetchall() == [(123.5, 0)]
        assert [e.job_id for e in db.expired_jobs(conn, RetentionRule(before=200.0), 5)] == [
            job.id]
    finally:
        conn.close()
