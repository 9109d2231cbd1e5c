"""What is PostgreSQL's own in the store (the shared contract is test_store.py's):
the notifications a commit sends, a repeated group, a lost connection, the
`node` column, concurrent migrations, redacted URLs. Against the suite's own
PostgreSQL server, a fresh database per test."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import psycopg
import pytest
import trio

from jobserver.config import redact_url
from jobserver.core import events as ev
from jobserver.core.ids import new_job_id
from jobserver.core.states import Status
from jobserver.store import DatabaseUnavailable
from jobserver.store import postgres_blocking as db
from jobserver.store.codec import DeleteOp, Op, WriteOp
from jobserver.store.postgres import PostgresStore

from .test_store import logs, make_job


def notifications(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """The notifications `conn` LISTENs to that came before now: PostgreSQL
    delivers them in commit order, so until a marker `conn` sends itself."""
    conn.execute(f"NOTIFY {db.EVENTS_CHANNEL}, 'marker'")
    got: list[tuple[str, str]] = []
    for x in conn.notifies(timeout=10):
        if (x.channel, x.payload) == (db.EVENTS_CHANNEL, "marker"):
            return got
        got.append((x.channel, x.payload))
    raise AssertionError(f"no marker within 10 s after {got}")


async def test_a_commit_notifies_cursors_deletes_and_queued_jobs(database_url: str) -> None:
    store = PostgresStore(database_url, linger=3600)  # one group: the final flush
    a, b = make_job(), make_job(status=Status.RUNNING)
    gone = [make_job(status=Status.SUCCEEDED) for _ in range(300)]  # ids over 4,000 bytes
    async with trio.open_nursery() as n:
        await n.start(store.run)
        for job in gone:
            await store.write([], job)
        n.cancel_scope.cancel()
    with psycopg.connect(database_url, autocommit=True) as listener:
        for channel in (db.EVENTS_CHANNEL, db.DELETED_CHANNEL, db.QUEUE_CHANNEL):
            listener.execute(f"LISTEN {channel}")
        store = PostgresStore(database_url, linger=3600)
        async with trio.open_nursery() as n:
            await n.start(store.run)
            await store.write(logs(a.id, 1, 3), a)
            await store.write([ev.Warning(job_id=b.id, seq=1, ts=1.0, message="w")], b)
            await store.write(logs(a.id, 4, 2), dataclasses.replace(a, last_seq=5))
            n.start_soon(store.delete_jobs, [j.id for j in gone])
            await trio.testing.wait_all_tasks_blocked()
            assert notifications(listener) == []  # nothing before the commit
            n.cancel_scope.cancel()
        got = await trio.to_thread.run_sync(notifications, listener)
    assert store.statistics().commits == 1
    events = [p for c, p in got if c == db.EVENTS_CHANNEL]
    assert sorted(events) == sorted([f"{a.id} 5", f"{b.id} 1"])
    assert [p for c, p in got if c == db.QUEUE_CHANNEL] == [a.id]
    deleted = [p for c, p in got if c == db.DELETED_CHANNEL]
    assert len(deleted) > 1 and all(len(p) <= db.NOTIFY_BYTES for p in deleted)
    assert " ".join(deleted).split() == [j.id for j in gone]


async def test_a_failed_commit_notifies_nothing(database_url: str) -> None:
    store = PostgresStore(database_url, linger=0)
    job = make_job()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {db.EVENTS_CHANNEL}")
        with pytest.RaisesGroup(psycopg.errors.CheckViolation):
            async with trio.open_nursery() as n:
                await n.start(store.run)
                listener.execute("ALTER TABLE events ADD CONSTRAINT small CHECK (seq_end < 10)")
                await store.write(logs(job.id, 9, 2), job)
                await trio.sleep_forever()
        assert notifications(listener) == []


def test_a_repeated_group_is_harmless(database_url: str) -> None:
    """A group whose commit's answer was lost with the connection may be sent
    again: the events are not doubled and nothing fails."""
    job = make_job()
    ops: list[Op] = [WriteOp(events=logs(job.id, 1, 5), job=job),
           WriteOp(events=[ev.Warning(job_id=job.id, seq=6, ts=2.0, message="w")], job=job),
           DeleteOp(job_ids=[new_job_id()])]
    conn = db.connect(database_url, writer=True)
    try:
        db.commit_group(conn, ops)
        db.commit_group(conn, ops)
        assert [e.seq for e in db.events_after(conn, job.id, 0, 100)] == [1, 2, 3, 4, 5, 6]
        assert db.get_job(conn, job.id) == job
    finally:
        conn.close()


async def test_the_job_upsert_leaves_the_node_column_alone(database_url: str) -> None:
    store = PostgresStore(database_url, linger=0)
    job = make_job()
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write([], job)
        await store.wait_flushed()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE jobs SET node = 'node-a' WHERE id = %s", (job.id,))
            await store.write([], dataclasses.replace(job, status=Status.RUNNING))
            await store.wait_flushed()
            assert conn.execute("SELECT node, status FROM jobs").fetchall() == [
                ("node-a", "RUNNING")]
        n.cancel_scope.cancel()


async def test_a_lost_connection_is_opened_again_and_the_write_committed(
        database_url: str) -> None:
    """The writer's backend killed: the group is committed on a new connection
    (test_database_lost.py: a server down for longer than `lost_after`)."""
    store = PostgresStore(database_url, linger=0)
    job = make_job()
    called: list[int] = []
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write(logs(job.id, 1, 1), job, on_commit=lambda: called.append(1))
        await store.wait_flushed()
        assert store._writer is not None
        pid = store._writer.info.backend_pid
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await store.write(logs(job.id, 2, 1), job, on_commit=lambda: called.append(2))
        with trio.fail_after(10):
            await store.wait_flushed()
        assert called == [1, 2]
        assert store._writer.info.backend_pid != pid
        assert [e.seq for e in await store.events_after(job.id, 0)] == [1, 2]
        n.cancel_scope.cancel()


async def test_no_server_is_a_clear_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    store = PostgresStore(f"postgresql://app:s3cret@127.0.0.1:{port}/jobs")
    async with trio.open_nursery() as n:
        with pytest.raises(DatabaseUnavailable) as info:
            await n.start(store.run)
    message = str(info.value)
    assert f"cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:{port}/jobs" in message
    assert "s3cret" not in message and "s3cret" not in repr(store)


async def test_servers_starting_at_once_migrate_once(database_url: str) -> None:
    stores = [PostgresStore(database_url, readers=1) for _ in range(3)]
    async with trio.open_nursery() as n:
        for store in stores:
            n.start_soon(n.start, store.run)
        with trio.fail_after(20):
            while not all(s._open for s in stores):
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM jobserver_schema").fetchall() == [
            (db.SCHEMA_VERSION,)]
        assert db.schema_version(conn) == db.SCHEMA_VERSION


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw@h:5432/d", "postgresql://u:***@h:5432/d"),
    ("postgresql://u@h/d", "postgresql://u@h/d"),
    ("postgresql://h/d?sslmode=require&password=pw",
     "postgresql://h/d?sslmode=require&password=***"),
    ("postgres://u:p%40ss@[::1]/d", "postgres://u:***@[::1]/d"),
])
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
