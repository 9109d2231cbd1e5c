"""The LISTEN service against the suite's own PostgreSQL: notifications reach
their consumers in order, a lost connection is opened again (and consumers are
told), and a cancellation is never stuck behind a wait."""

from __future__ import annotations

import psycopg
import pytest
import trio

from jobserver.store import postgres_listen
from jobserver.store.postgres_listen import APPLICATION_NAME, Listener

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.connects = 0
        self.changed = trio.Event()

    def notify(self, channel: str, payload: str) -> None:
        self.notes.append((channel, payload))
        self.changed.set()

    def connected(self) -> None:
        self.connects += 1
        self.changed.set()

    async def wait_for(self, test: object) -> None:
        with trio.fail_after(10):
            while not test():  # type: ignore[operator]
                self.changed = trio.Event()
                await self.changed.wait()


def _sql(url: str, query: str, *args: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, args)


async def notify(url: str, channel: str, *payloads: str) -> None:
    def send() -> None:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            for payload in payloads:
                conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    await trio.to_thread.run_sync(send)


async def test_notifications_reach_their_consumers_in_order(database_url: str) -> None:
    events, other = Recorder(), Recorder()
    listener = Listener(database_url)
    listener.listen(["jobserver_events", "jobserver_deleted"], events)
    listener.listen(["jobserver_queue"], other)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert events.connects == other.connects == 1
        await notify(database_url, "jobserver_events", *(f"job {i}" for i in range(1, 201)))
        await notify(database_url, "jobserver_queue", "q1")
        await notify(database_url, "jobserver_deleted", "a b")
        await events.wait_for(lambda: len(events.notes) == 201)
        await other.wait_for(lambda: other.notes)
        assert events.notes[:200] == [("jobserver_events", f"job {i}") for i in range(1, 201)]
        assert events.notes[200] == ("jobserver_deleted", "a b")
        assert other.notes == [("jobserver_queue", "q1")]
        assert listener.statistics().notifications == 202
        nursery.cancel_scope.cancel()


async def test_a_lost_connection_is_opened_again_and_consumers_told(database_url: str) -> None:
    consumer = Recorder()
    listener = Listener(database_url, retry_first=0.05, retry_max=0.2)
    listener.listen(["jobserver_events"], consumer)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        await notify(database_url, "jobserver_events", "before")
        await consumer.wait_for(lambda: consumer.notes)
        await trio.to_thread.run_sync(
            _sql, database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s", APPLICATION_NAME)
        await consumer.wait_for(lambda: consumer.connects == 2)
        assert listener.statistics().connects == 2
        await notify(database_url, "jobserver_events", "after")
        await consumer.wait_for(lambda: len(consumer.notes) == 2)
        assert consumer.notes == [("jobserver_events", "before"), ("jobserver_events", "after")]
        nursery.cancel_scope.cancel()
    assert not listener.statistics().connected


async def test_a_channel_added_while_running_is_listened_to(database_url: str) -> None:
    first, late = Recorder(), Recorder()
    listener = Listener(database_url)
    listener.listen(["jobserver_events"], first)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        listener.listen(["jobserver_control"], late)
        # The new channel is LISTENed before the next wait: once one more
        # notification of the old channel has come, the new one is in place.
        await notify(database_url, "jobserver_events", "x")
        await first.wait_for(lambda: first.notes)
        await trio.sleep(postgres_listen.WAIT + 0.1)
        await notify(database_url, "jobserver_control", "cancel 1")
        await late.wait_for(lambda: late.notes)
        assert late.notes == [("jobserver_control", "cancel 1")]
        nursery.cancel_scope.cancel()


async def test_cancellation_is_not_stuck_behind_a_wait(database_url: str) -> None:
    listener = Listener(database_url)
    listener.listen(["jobserver_events"], Recorder())
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        await trio.sleep(0.1)  # inside a worker-thread wait now
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start < postgres_listen.WAIT + 0.4
