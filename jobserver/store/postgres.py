"""The PostgreSQL store: one database that several jobserver nodes may share.

Rules: the queue, the group commit, the reader slots and their rules are
`committer.QueuedStore`'s; this module owns only the connections (psycopg 3,
autocommit, one writer and a few readers, each used by one worker thread at
a time). SQL, the schema and the notifications each commit sends live in
`postgres_blocking.py`. A lost connection ends `run` with
`DatabaseUnavailable` (no reconnection here); the URL is only ever shown
with its password redacted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import postgres_blocking as db
from .base import Store
from .committer import (
    LINGER,
    MAX_GROUP_CHARS,
    MAX_GROUP_EVENTS,
    QUEUE_CAPACITY,
    QUEUE_CAPACITY_CHARS,
    READERS,
    QueuedStore,
)


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
    ) -> None:
        super().__init__(db, capacity=capacity, capacity_chars=capacity_chars,
                         max_group=max_group, max_group_chars=max_group_chars, linger=linger,
                         readers=readers, observe_commit=observe_commit)
        self._url = url

    def __repr__(self) -> str:
        return f"PostgresStore({db.redact(self._url)!r})"

    def _open_writer(self) -> db.Connection:
        return db.connect(self._url, writer=True)

    def _open_reader(self) -> db.Connection:
        return db.connect(self._url, writer=False)

    def _close_connection(self, conn: db.Connection) -> None:
        conn.close()


if TYPE_CHECKING:

    def _is_a_store(store: PostgresStore) -> Store:
        return store
