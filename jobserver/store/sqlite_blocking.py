"""The blocking half of the SQLite store: schema, connections, SQL.

Rules: everything here is synchronous and runs in a worker thread started by
`trio.to_thread.run_sync` (committer.py); nothing here imports trio. A
connection is used by one thread at a time. Writes happen only in
`commit_group`, in one `BEGIN IMMEDIATE` transaction per group. The row
layout (log chunks, job rows, cursors) is codec.py's, shared with PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core import events as ev
from ..core.ids import JobId, UserId
from ..core.job import Job
from ..core.states import Status
from . import codec
from .base import Expired, IdempotencyRecord, IncompatibleDatabase, JobFilter, RetentionRule
from .codec import LOG, DeleteOp, Group, Op, PinOp, TrimOp, WriteOp, decode_job

SCHEMA_VERSION = 3

# Statements that take a database from version i to i + 1 (`PRAGMA user_version`).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            status TEXT NOT NULL,
            template TEXT NOT NULL,
            created_at REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX jobs_by_created ON jobs (created_at, id)",
        "CREATE INDEX jobs_by_owner ON jobs (owner, created_at, id)",
        "CREATE INDEX jobs_by_status ON jobs (status, created_at, id)",
        "CREATE INDEX jobs_by_template ON jobs (template, created_at, id)",
        """CREATE TABLE events (
            job_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            seq_end INTEGER NOT NULL,
            type TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE UNIQUE INDEX events_by_job ON events (job_id, seq_end)",
    ),
    (  # retention: when a job finished, and whether a user pinned it
        "ALTER TABLE jobs ADD COLUMN completed_at REAL",
        "ALTER TABLE jobs ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",
        "UPDATE jobs SET completed_at = json_extract(data, '$.completed_at')",
        "CREATE INDEX jobs_expiring ON jobs (completed_at, id)"
        " WHERE completed_at IS NOT NULL AND pinned = 0",
        "CREATE INDEX jobs_expiring_by_template ON jobs (template, completed_at, id)"
        " WHERE completed_at IS NOT NULL AND pinned = 0",
    ),
    # Idempotency keys (api/idempotency.py): one row per (owner, key), written
    # with the job it made; expired rows go as new keys are written.
    (
        """CREATE TABLE idempotency_keys (
            owner TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (owner, key)
        )""",
        "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)",
        "CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# Another process (or a hot backup) may hold the database lock briefly.
BUSY_TIMEOUT = 10.0
# The WAL file is truncated to this size after a checkpoint.
WAL_SIZE_LIMIT = 64 << 20
_UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


# ---- connections ----------------------------------------------------------


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit)."""
    if writer:
        path.touch(mode=0o600)  # job params and logs are private (SQLite's -wal follows)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        if writer:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA cache_size = -32768")  # KiB
            # After a checkpoint, shrink a WAL that a burst made big.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
            migrate(conn)
        else:
            conn.execute("PRAGMA query_only = 1")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise IncompatibleDatabase(
                f"database schema version {version} is newer than this server's "
                f"({SCHEMA_VERSION})"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# ---- writing --------------------------------------------------------------


def _flush(conn: sqlite3.Connection, group: Group) -> None:
    rows, jobs = group.take()
    if rows:
        conn.executemany(
            "INSERT INTO events (job_id, seq, seq_end, type, ts, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    if jobs:
        conn.executemany(
            "INSERT INTO jobs (id, owner, status, template, created_at, completed_at, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " owner = excluded.owner, status = excluded.status,"
            " template = excluded.template, created_at = excluded.created_at,"
            " completed_at = excluded.completed_at, data = excluded.data",
            jobs,
        )


def commit_group(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Commit `ops`, in order, in one transaction (all or nothing)."""
    group = Group()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            if isinstance(op, WriteOp):
                group.add(op.events)
                if op.job is not None:
                    group.jobs[op.job.id] = op.job
                if op.key is not None:
                    _put_key(conn, op.key)
                continue
            _flush(conn, group)
            if isinstance(op, DeleteOp):
                ids = [(job_id,) for job_id in op.job_ids]
                conn.executemany("DELETE FROM events WHERE job_id = ?", ids)
                conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
                conn.executemany("DELETE FROM idempotency_keys WHERE job_id = ?", ids)
            elif isinstance(op, PinOp):
                conn.execute("UPDATE jobs SET pinned = ? WHERE id = ?", (op.pinned, op.job_id))
            else:
                trim_logs(conn, op)
        _flush(conn, group)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def trim_logs(conn: sqlite3.Connection, op: TrimOp) -> None:
    """Remove the log lines of `op`'s range: whole chunks inside it go, a chunk
    that straddles an end is written again without those lines."""
    rows = conn.execute(
        "SELECT rowid, seq, seq_end FROM events WHERE job_id = ? AND type = ?"
        " AND seq_end >= ? AND seq_end < ?",
        (op.job_id, LOG, op.low, op.high + codec.MAX_CHUNK_LINES),
    ).fetchall()
    whole = [(rowid,) for rowid, seq, seq_end in rows if seq >= op.low and seq_end <= op.high]
    conn.executemany("DELETE FROM events WHERE rowid = ?", whole)
    for rowid, seq, seq_end in rows:
        if seq <= op.high and not (seq >= op.low and seq_end <= op.high):
            _rewrite_without(conn, rowid, op)


def _rewrite_without(conn: sqlite3.Connection, rowid: int, op: TrimOp) -> None:
    seq, data = conn.execute("SELECT seq, data FROM events WHERE rowid = ?", (rowid,)).fetchone()
    conn.execute("DELETE FROM events WHERE rowid = ?", (rowid,))
    conn.executemany(
        "INSERT INTO events (job_id, seq, seq_end, type, ts, data) VALUES (?, ?, ?, ?, ?, ?)",
        codec.rows_without(op.job_id, seq, data, op.low, op.high),
    )


def _put_key(conn: sqlite3.Connection, key: IdempotencyRecord) -> None:
    """Store `key` (replacing an expired one of the same name), dropping every
    key that expired by the time it was made."""
    conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (key.created_at,))
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys"
        " (owner, key, fingerprint, job_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        (key.owner, key.key, key.fingerprint, key.job_id, key.created_at, key.expires_at),
    )


# ---- reading --------------------------------------------------------------


def find_key(conn: sqlite3.Connection, owner: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        "SELECT fingerprint, job_id, created_at, expires_at FROM idempotency_keys"
        " WHERE owner = ? AND key = ?", (owner, key)).fetchone()
    if row is None:
        return None
    fingerprint, job_id, created_at, expires_at = row
    return IdempotencyRecord(owner=owner, key=key, fingerprint=fingerprint,
                             job_id=JobId(job_id), created_at=created_at, expires_at=expires_at)


def get_job(conn: sqlite3.Connection, job_id: JobId) -> Job | None:
    row = conn.execute("SELECT data, pinned FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else decode_job(*row)


def list_jobs(conn: sqlite3.Connection, query: JobFilter) -> tuple[list[Job], str | None]:
    clauses, params = codec.page_filter(query, "?")
    limit = codec.page_limit(query.limit)
    where = " AND ".join(clauses) or "1"
    rows = conn.execute(
        f"SELECT created_at, id, data, pinned FROM jobs WHERE {where}"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    return codec.job_page(rows, limit)


def unfinished_jobs(conn: sqlite3.Connection) -> list[Job]:
    rows = conn.execute(
        "SELECT data, pinned FROM jobs WHERE status IN (?, ?) ORDER BY created_at, id",
        _UNFINISHED,
    ).fetchall()
    return [decode_job(data, pinned) for data, pinned in rows]


def expired_jobs(conn: sqlite3.Connection, rule: RetentionRule, limit: int) -> list[Expired]:
    """Finished, unpinned jobs that `rule` removes, oldest first, at most `limit`."""
    clauses = ["completed_at IS NOT NULL", "pinned = 0"]
    params: list[Any] = []
    if rule.template is not None:
        clauses.append("template = ?")
        params.append(rule.template)
    if rule.exclude:
        clauses.append(f"template NOT IN ({', '.join('?' * len(rule.exclude))})")
        params.extend(rule.exclude)
    if rule.before is not None:
        clauses.append("completed_at < ?")
        params.append(rule.before)
    where = " AND ".join(clauses)
    columns = "id, owner, json_extract(data, '$.last_seq')"
    if rule.keep is None:
        sql = f"SELECT {columns} FROM jobs WHERE {where} ORDER BY completed_at, id LIMIT ?"
        rows = conn.execute(sql, (*params, limit)).fetchall()
    else:  # beyond the newest `keep`: skip them, newest first
        sql = (f"SELECT {columns} FROM jobs WHERE {where}"
               " ORDER BY completed_at DESC, id DESC LIMIT ? OFFSET ?")
        rows = conn.execute(sql, (*params, limit, rule.keep)).fetchall()
    return [Expired(job_id=JobId(i), owner=UserId(o), last_seq=int(n or 0)) for i, o, n in rows]


def events_but_lines_after(
    conn: sqlite3.Connection, job_id: JobId, after: int, limit: int
) -> list[ev.Event]:
    """Like `events_after`, output lines left out (they are most of a job's rows)."""
    rows = conn.execute(
        "SELECT seq, type, ts, data FROM events WHERE job_id = ? AND seq_end > ?"
        " AND type != ? ORDER BY seq_end LIMIT ?", (job_id, after, LOG, limit)).fetchall()
    out: list[ev.Event] = []
    codec.decode_rows(rows, job_id, after, limit, out)
    return out


def events_after(
    conn: sqlite3.Connection, job_id: JobId, after: int, limit: int
) -> list[ev.Event]:
    out: list[ev.Event] = []
    if limit <= 0:
        return out
    cur = conn.execute(
        "SELECT seq, type, ts, data FROM events WHERE job_id = ? AND seq_end > ?"
        " ORDER BY seq_end LIMIT ?",
        (job_id, after, limit),
    )
    try:
        codec.decode_rows(cur, job_id, after, limit, out)
    finally:
        cur.close()
    return out
