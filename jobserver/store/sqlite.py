"""The embedded SQLite store: one database file in WAL mode, one writer
connection and a few read-only ones (WAL lets them read while the writer
commits).

Rules: the queue, the group commit, the reader slots and their rules are
`committer.QueuedStore`'s; this module owns only the connections. SQL and the
row layout live in `sqlite_blocking.py`. The writer connection closes last:
the last connection out checkpoints the WAL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import sqlite_blocking as db
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


class SqliteStore(QueuedStore[sqlite3.Connection]):
    """`Store` on one SQLite database file (WAL mode), e.g. `data_dir / "jobserver.db"`."""

    def __init__(
        self,
        path: Path,
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
        self._path = path

    def _open_writer(self) -> sqlite3.Connection:
        return db.connect(self._path, writer=True)

    def _open_reader(self) -> sqlite3.Connection:
        return db.connect(self._path, writer=False)

    def _close_connection(self, conn: sqlite3.Connection) -> None:
        conn.close()


if TYPE_CHECKING:

    def _is_a_store(store: SqliteStore) -> Store:
        return store
