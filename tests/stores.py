"""The store backends the contract tests run on: a fresh SQLite file or a fresh
PostgreSQL database per test, and what a test needs to look under the store
(its raw rows, its recorded schema version, a way to make commits fail).

Rules: `Backend.new` makes a store on the test's one database, so a second
call is the store reopened; nothing here starts a store's `run`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from jobserver.core.ids import JobId
from jobserver.store import postgres_blocking, sqlite_blocking
from jobserver.store.committer import QueuedStore
from jobserver.store.postgres import PostgresStore
from jobserver.store.sqlite import SqliteStore

BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    path: Path | None = None  # sqlite
    url: str | None = None  # postgres

    @property
    def schema_version(self) -> int:
        """The schema version this server writes."""
        if self.url is None:
            return sqlite_blocking.SCHEMA_VERSION
        return postgres_blocking.SCHEMA_VERSION

    @property
    def blocking(self) -> Any:
        """The backend's blocking half (a module), e.g. to wrap its `commit_group`."""
        return sqlite_blocking if self.url is None else postgres_blocking

    def new(self, **options: Any) -> QueuedStore[Any]:
        if self.url is not None:
            return PostgresStore(self.url, **options)
        assert self.path is not None
        return SqliteStore(self.path, **options)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with `?` placeholders), from a connection of the test's own."""
        if self.url is not None:
            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description is not None else []
        assert self.path is not None
        with closing(sqlite3.connect(self.path, isolation_level=None)) as lite:
            return lite.execute(sql, params).fetchall()

    def rows(self, job_id: JobId) -> list[tuple[int, int, str]]:
        """(seq, seq_end, type) of a job's stored `events` rows, in order."""
        return [(int(a), int(b), str(c)) for a, b, c in self.query(
            "SELECT seq, seq_end, type FROM events WHERE job_id = ? ORDER BY seq", job_id)]

    def record_version(self, version: int) -> None:
        """Make the database say it has schema `version`."""
        if self.url is not None:
            self.query("CREATE TABLE IF NOT EXISTS jobserver_schema (version integer NOT NULL)")
            self.query("DELETE FROM jobserver_schema")
            self.query("INSERT INTO jobserver_schema (version) VALUES (?)", version)
        else:
            self.query(f"PRAGMA user_version = {version:d}")

    def recorded_version(self) -> int:
        if self.url is not None:
            return int(self.query("SELECT version FROM jobserver_schema")[0][0])
        return int(self.query("PRAGMA user_version")[0][0])

    def refuse_big_rows(self, store: QueuedStore[Any]) -> type[BaseException]:
        """From now on a commit with an `events` row of over 10,000 characters
        fails, the way a full disk fails one; the error it raises."""
        if self.url is not None:
            self.query("ALTER TABLE events ADD CONSTRAINT small_rows"
                       " CHECK (length(data) <= 10000) NOT VALID")
            return psycopg.errors.CheckViolation
        writer = store._writer
        assert isinstance(writer, sqlite3.Connection)
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count = {pages}")
        return sqlite3.OperationalError


AnyStore = QueuedStore[Any]
