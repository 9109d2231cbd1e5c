"""The PostgreSQL store: one database that several jobserver nodes may share.

Rules: the queue, the group commit, the reader slots and their rules are
`committer.QueuedStore`'s; this module owns only the connections (psycopg 3,
autocommit, one writer and a few readers, each used by one worker thread at
a time). SQL, the schema and the notifications each commit sends live in
`postgres_blocking.py`. The URL is only ever shown with its password redacted.

The database lost: a group whose commit meets a lost connection is committed
again on a new connection, after a growing delay (`RETRY_FIRST` doubling up
to `RETRY_MAX`), until it goes through or `lost_after` seconds have passed
since the first failure; then `run` ends with `DatabaseUnavailable` saying so
(and with it the server). Meanwhile the group and everything queued behind it
stay in the bounded queue: producers (running jobs' output) wait for room, and
no `on_commit` runs, so nothing is acknowledged or published that is not
committed. A reader's lost connection is opened again at its next read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..config import redact_url
from . import postgres_blocking as db
from .base import DatabaseUnavailable, Store
from .codec import Op
from .committer import (
    LINGER,
    MAX_GROUP_CHARS,
    MAX_GROUP_EVENTS,
    QUEUE_CAPACITY,
    QUEUE_CAPACITY_CHARS,
    READERS,
    QueuedStore,
)

log = logging.getLogger("jobserver.store.postgres")

# A group that met a lost connection is tried again after this long, doubling ...
RETRY_FIRST = 0.1
RETRY_MAX = 2.0  # ... up to this
# ... until the database has been gone this long (the `database_lost_after` setting).
LOST_AFTER = 60.0


class PostgresStore(QueuedStore[db.Connection]):
    """`Store` on a PostgreSQL database named by a `postgresql://` URL."""

    def __init__(
        self,
        url: str,
        *,
        capacity: int = QUEUE_CAPACITY,
        capacity_chars: int = QUEUE_CAPACITY_CHARS,
        max_group: int = MAX_GROUP_EVENTS,
        max_group_chars: int = MAX_GROUP_CHARS,
        linger: float = LINGER,
        readers: int = READERS,
        observe_commit: Callable[[float], None] | None = None,
        lost_after: float = LOST_AFTER,
        node: str | None = None,
    ) -> None:
        super().__init__(db, capacity=capacity, capacity_chars=capacity_chars,
                         max_group=max_group, max_group_chars=max_group_chars, linger=linger,
                         readers=readers, observe_commit=observe_commit)
        self._url = url
        self._lost_after = lost_after
        self._node = node  # the node whose jobs this store writes (None: no fencing)

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self._url)!r})"

    def _open_writer(self) -> db.Connection:
        return db.connect(self._url, writer=True, node=self._node)

    def _open_reader(self) -> db.Connection:
        return db.connect(self._url, writer=False)

    def _close_connection(self, conn: db.Connection) -> None:
        conn.close()

    def _usable(self, conn: db.Connection) -> bool:
        return not (conn.broken or conn.closed)

    async def _commit(self, ops: list[Op]) -> None:
        lost_at: float | None = None
        delay = RETRY_FIRST
        while True:
            try:
                if self._writer is None:
                    self._writer = await trio.to_thread.run_sync(self._open_writer)
                await trio.to_thread.run_sync(self._sql.commit_group, self._writer, ops)
            except DatabaseUnavailable as exc:
                now = trio.current_time()
                lost_at = now if lost_at is None else lost_at
                if now - lost_at >= self._lost_after:
                    raise DatabaseUnavailable(
                        f"PostgreSQL unreachable for {now - lost_at:.1f} s "
                        f"(database_lost_after = {self._lost_after:g}): {exc}; "
                        f"{self.statistics().pending} events not persisted") from exc
                log.warning("commit failed, retrying in %.1f s: %s", delay, exc)
                writer, self._writer = self._writer, None
                if writer is not None:
                    await trio.to_thread.run_sync(self._close_connection, writer)
                await trio.sleep(min(delay, max(self._lost_after - (now - lost_at), 0.0)))
                delay = min(delay * 2, RETRY_MAX)
                continue
            if lost_at is not None:
                log.warning("PostgreSQL back: commit went through after %.1f s",
                            trio.current_time() - lost_at)
            return


if TYPE_CHECKING:

    def _is_a_store(store: PostgresStore) -> Store:
        return store
