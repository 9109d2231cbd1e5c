"""PostgreSQL LISTEN: one connection that hears the other nodes' notifications.

Rules: one `Listener` per server, one psycopg connection of its own (autocommit,
used by one worker thread at a time), LISTENing on the union of the channels
its consumers asked for. It waits for notifications in `trio.to_thread.run_sync`
calls of at most `WAIT` seconds each and loops, so a cancellation is never stuck
behind a wait for longer than that (a connection attempt is bounded by
`CONNECT_TIMEOUT`).

Consumers are sync callbacks (`Consumer`), called in the trio thread, in the
order notifications arrived: `notify(channel, payload)` must not block or
raise. A callback, not a channel, because a notification carries a cursor
("job X has events up to seq N"), never the events: a consumer coalesces them
(keeps the highest seq per job, sets a wakeup) in O(jobs) memory, and reads the
store in a task of its own. A bounded channel would have to either block the
listener (one slow consumer delays every other one's notifications) or drop
on overflow (a lost cursor is a lost wakeup); a callback does neither.

A connection lost (the server restarted, the backend was terminated, the
network broke; TCP keepalives catch a silent peer) is opened again after a
short, growing delay. Notifications sent while it was down are lost, so every
consumer's `connected()` is called each time LISTEN is in place again (and the
first time): "re-read what you follow". `run` calls `task_status.started()`
after the first LISTEN; a first connection that fails raises (the store, on
the same database, would fail too). The URL is never logged (it may hold a
password).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import make_conninfo

log = logging.getLogger("jobserver.store.listen")

WAIT = 0.5  # seconds a worker-thread wait for notifications may take at most
CONNECT_TIMEOUT = 5  # seconds for one connection attempt (libpq's connect_timeout)
RETRY_FIRST = 0.1  # seconds before the first reconnection attempt ...
RETRY_MAX = 2.0  # ... doubling up to this
APPLICATION_NAME = "jobserver-listen"  # how its backend shows in pg_stat_activity
# A silent peer (a broken network, no RST) is noticed within about
# idle + interval * count seconds.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3}


class Consumer(Protocol):
    def notify(self, channel: str, payload: str) -> None:
        """A notification on one of the consumer's channels. Never blocks, never raises."""

    def connected(self) -> None:
        """LISTEN is (again) in place: anything notified before may have been lost."""


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    connected: bool
    connects: int  # successful connections, the first included
    notifications: int  # received, since start

    @property
    def reconnects(self) -> int:
        """Connections opened again after one was lost."""
        return max(0, self.connects - 1)


class Listener:
    def __init__(self, url: str, *, retry_first: float = RETRY_FIRST,
                 retry_max: float = RETRY_MAX) -> None:
        self._url = url
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._consumers: dict[str, list[Consumer]] = {}
        self._listening: set[str] = set()  # on the current connection
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._connects = 0
        self._notifications = 0

    def listen(self, channels: Iterable[str], consumer: Consumer) -> None:
        """Hand `channels`' notifications to `consumer` (from the next wait on,
        if the listener runs already; `connected()` tells it when they flow)."""
        for channel in channels:
            self._consumers.setdefault(channel, []).append(consumer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._connect()
        task_status.started()
        delay = self._retry_first
        try:
            while True:
                try:
                    await self._listen_more()
                    notes = await trio.to_thread.run_sync(_wait, self._conn)
                except psycopg.Error as exc:
                    log.warning("lost the LISTEN connection (%s); reconnecting",
                                type(exc).__name__)
                    await self._close()
                    while self._conn is None:
                        await trio.sleep(delay)
                        delay = min(delay * 2, self._retry_max)
                        try:
                            await self._connect()
                        except psycopg.Error as again:
                            log.warning("LISTEN connection failed (%s); retrying",
                                        type(again).__name__)
                    delay = self._retry_first
                    continue
                self._notifications += len(notes)
                for channel, payload in notes:
                    for consumer in self._consumers.get(channel, ()):
                        consumer.notify(channel, payload)
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _connect(self) -> None:
        self._conn = await trio.to_thread.run_sync(_open, self._url)
        self._listening.clear()
        try:
            await self._listen_more()
        except psycopg.Error:
            await self._close()
            raise
        self._connects += 1
        consumers = {id(c): c for cs in self._consumers.values() for c in cs}
        for consumer in consumers.values():
            consumer.connected()

    async def _listen_more(self) -> None:
        """LISTEN on the channels asked for since the last time (if any)."""
        new = [c for c in self._consumers if c not in self._listening]
        if new:
            await trio.to_thread.run_sync(_listen, self._conn, new)
            self._listening.update(new)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close)

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(connected=self._conn is not None, connects=self._connects,
                                  notifications=self._notifications)


# ---- the blocking half: worker threads only, nothing from trio ------------

def _open(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conninfo = make_conninfo(url, connect_timeout=CONNECT_TIMEOUT,
                             application_name=APPLICATION_NAME, **KEEPALIVES)
    return psycopg.connect(conninfo, autocommit=True)


def _listen(conn: psycopg.Connection[tuple[object, ...]] | None, channels: list[str]) -> None:
    assert conn is not None
    for channel in channels:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def _wait(conn: psycopg.Connection[tuple[object, ...]] | None) -> list[tuple[str, str]]:
    """The notifications that arrive within WAIT seconds: back as soon as one
    packet of them has (with what came in it), or empty."""
    assert conn is not None
    return [(n.channel, n.payload) for n in conn.notifies(timeout=WAIT, stop_after=1)]
