"""The blocking half of the SQLite store: schema, row encoding, queries.

Rules: everything here is synchronous and runs in a worker thread started by
`trio.to_thread.run_sync` from `sqlite.py`; nothing here imports trio. A
connection is used by one thread at a time. Writes happen only in
`commit_group`, in one `BEGIN IMMEDIATE` transaction per group.

Log lines are stored in chunks, not a row per line: a run of Log events of one
job with contiguous seqs becomes ONE `events` row covering `seq..seq_end`,
whose `data` is a JSON array of segments `[ts, stream, [line, ...]]` (lines
sharing a timestamp and stream share a segment; a batch from one read of a
pipe is one segment). Every other event is one row, `data` being
`events.to_data(event)` as JSON. Rows never overlap, so ordering by `seq_end`
is ordering by seq, and `(job_id, seq_end)` is the index of the range scan
`seq_end > after` that `events_after` does.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import sqlite3
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, cast

from ..core import events as ev
from ..core.ids import JobId, UserId
from ..core.job import Job
from ..core.states import Status
from ..errors import ValidationFailed
from .base import Expired, IdempotencyRecord, JobFilter, RetentionRule

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

# A chunk holds at most this many lines: a reader resuming inside a chunk
# decodes it whole, so chunks stay near a replay page (the engine reads 2,000).
MAX_CHUNK_LINES = 1000
# ... and at most about this many characters of line text.
MAX_CHUNK_CHARS = 1 << 20
# Another process (or a hot backup) may hold the database lock briefly.
BUSY_TIMEOUT = 10.0
# The WAL file is truncated to this size after a checkpoint.
WAL_SIZE_LIMIT = 64 << 20
# A page of `list_jobs` never has more rows than this, whatever was asked.
MAX_PAGE = 1000

LOG = ev.Log.TYPE
_UNFINISHED = (Status.QUEUED.value, Status.RUNNING.value)


class IncompatibleDatabase(Exception):
    """The database was written by a newer jobserver (a higher schema version)."""


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


@dataclass(slots=True)
class WriteOp:
    events: Sequence[ev.Event]
    job: Job | None
    key: IdempotencyRecord | None = None


@dataclass(slots=True)
class DeleteOp:
    job_ids: Sequence[JobId]


@dataclass(slots=True)
class PinOp:
    job_id: JobId
    pinned: bool


@dataclass(slots=True)
class TrimOp:
    """Remove a job's log lines with seqs in low..high (other events stay)."""

    job_id: JobId
    low: int
    high: int


Op = WriteOp | DeleteOp | PinOp | TrimOp

Row = tuple[str, int, int, str, float, str]


@dataclass(slots=True)
class _Chunk:
    """An open run of Log events of one job, growing while seqs stay contiguous."""

    job_id: str
    seq: int
    seq_end: int  # seq - 1 while empty
    ts: float
    segments: list[list[Any]] = field(default_factory=list)  # [ts, stream, lines]
    chars: int = 0

    def take(self, seq: int, ts: float, stream: str, lines: list[str]) -> int:
        """Append the first lines that fit (all of them if they do); how many."""
        if seq != self.seq_end + 1:
            return 0
        count = min(len(lines), MAX_CHUNK_LINES - (self.seq_end + 1 - self.seq))
        chars = sum(map(len, lines[:count]))
        if self.chars + chars > MAX_CHUNK_CHARS:
            sizes = list(accumulate(map(len, lines[:count]), initial=self.chars))
            count = max(0, bisect_right(sizes, MAX_CHUNK_CHARS) - 1)
            if count == 0 and self.seq_end < self.seq:
                count = 1  # an empty chunk takes one line, however long
            chars = sizes[count] - self.chars
        if count == 0:
            return 0
        taken = lines if count == len(lines) else lines[:count]
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == ts and last[1] == stream:
            last[2].extend(taken)
        else:
            self.segments.append([ts, stream, list(taken)])
        self.seq_end += count
        self.chars += chars
        return count

    def row(self) -> Row:
        data = json.dumps(self.segments, separators=(",", ":"))
        return (self.job_id, self.seq, self.seq_end, LOG, self.ts, data)


@dataclass(slots=True)
class _Group:
    """The rows and job records of one group commit, built in op order."""

    rows: list[Row] = field(default_factory=list)
    open: dict[str, _Chunk] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    def add(self, events: Sequence[ev.Event]) -> None:
        i, n = 0, len(events)
        while i < n:
            e = events[i]
            if type(e) is ev.Log:
                j = _log_run(events, i)
                run = cast(Sequence[ev.Log], events[i:j])
                self._add_lines(e.job_id, e.seq, e.ts, e.stream, [x.line for x in run])
                i = j
                continue
            self._close(e.job_id)
            data = json.dumps(ev.to_data(e), separators=(",", ":"))
            self.rows.append((e.job_id, e.seq, e.seq, e.TYPE, e.ts, data))
            i += 1

    def _add_lines(self, job_id: str, seq: int, ts: float, stream: str, lines: list[str]) -> None:
        """Log events seq, seq + 1, ... of one job, all at `ts` on `stream`."""
        while lines:
            c = self.open.get(job_id)
            taken = 0 if c is None else c.take(seq, ts, stream, lines)
            if taken == 0:
                self._close(job_id)
                c = self.open[job_id] = _Chunk(job_id=job_id, seq=seq, seq_end=seq - 1, ts=ts)
                taken = c.take(seq, ts, stream, lines)
            seq += taken
            lines = lines[taken:]

    def _close(self, job_id: str) -> None:
        c = self.open.pop(job_id, None)
        if c is not None:
            self.rows.append(c.row())

    def flush(self, conn: sqlite3.Connection) -> None:
        rows = self.rows
        rows.extend(c.row() for c in self.open.values())
        if rows:
            conn.executemany(
                "INSERT INTO events (job_id, seq, seq_end, type, ts, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        if self.jobs:
            conn.executemany(
                "INSERT INTO jobs (id, owner, status, template, created_at, completed_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " owner = excluded.owner, status = excluded.status,"
                " template = excluded.template, created_at = excluded.created_at,"
                " completed_at = excluded.completed_at, data = excluded.data",
                [
                    (j.id, j.owner, j.status.value, j.template, j.created_at, j.completed_at,
                     json.dumps(j.to_dict(), separators=(",", ":")))
                    for j in self.jobs.values()
                ],
            )
        self.rows = []
        self.open.clear()
        self.jobs.clear()


def _log_run(events: Sequence[ev.Event], i: int) -> int:
    """The end of the run of Log events from `i` that share job, ts and stream
    and have contiguous seqs."""
    first = events[i]
    assert isinstance(first, ev.Log)
    job_id, ts, stream, seq = first.job_id, first.ts, first.stream, first.seq
    log = ev.Log
    # The common case, a whole batch from `record_logs`, checked at C speed.
    if i == 0 and (
        all(type(e) is log and e.ts == ts and e.stream == stream and e.job_id == job_id
            for e in events)
        and [e.seq for e in events] == list(range(seq, seq + len(events)))
    ):
        return len(events)
    j = i + 1
    while j < len(events):
        e = events[j]
        if not (type(e) is log and e.ts == ts and e.stream == stream
                and e.job_id == job_id and e.seq == seq + j - i):
            break
        j += 1
    return j


def commit_group(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Commit `ops`, in order, in one transaction (all or nothing)."""
    group = _Group()
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
            group.flush(conn)
            if isinstance(op, DeleteOp):
                ids = [(job_id,) for job_id in op.job_ids]
                conn.executemany("DELETE FROM events WHERE job_id = ?", ids)
                conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
                conn.executemany("DELETE FROM idempotency_keys WHERE job_id = ?", ids)
            elif isinstance(op, PinOp):
                conn.execute("UPDATE jobs SET pinned = ? WHERE id = ?", (op.pinned, op.job_id))
            else:
                trim_logs(conn, op)
        group.flush(conn)
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
        (op.job_id, LOG, op.low, op.high + MAX_CHUNK_LINES),
    ).fetchall()
    whole = [(rowid,) for rowid, seq, seq_end in rows if seq >= op.low and seq_end <= op.high]
    conn.executemany("DELETE FROM events WHERE rowid = ?", whole)
    for rowid, seq, seq_end in rows:
        if seq <= op.high and not (seq >= op.low and seq_end <= op.high):
            _rewrite_without(conn, rowid, op)


def _rewrite_without(conn: sqlite3.Connection, rowid: int, op: TrimOp) -> None:
    seq, data = conn.execute("SELECT seq, data FROM events WHERE rowid = ?", (rowid,)).fetchone()
    conn.execute("DELETE FROM events WHERE rowid = ?", (rowid,))
    group = _Group()
    for ts, stream, lines in json.loads(data):
        for line in lines:
            if not op.low <= seq <= op.high:
                group._add_lines(op.job_id, seq, ts, stream, [line])
            seq += 1
    group.flush(conn)


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


def _job(data: str, pinned: int) -> Job:
    """A job record; whether it is pinned is the column's say (`data` may be older)."""
    job = Job.from_dict(json.loads(data))
    return job if job.pinned == bool(pinned) else dataclasses.replace(job, pinned=bool(pinned))


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
    return None if row is None else _job(*row)


def list_jobs(conn: sqlite3.Connection, query: JobFilter) -> tuple[list[Job], str | None]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("owner", query.owner),
        ("status", None if query.status is None else query.status.value),
        ("template", query.template),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.cursor is not None:
        clauses.append("(created_at, id) < (?, ?)")
        params.extend(decode_cursor(query.cursor))
    limit = max(1, min(query.limit, MAX_PAGE))
    where = " AND ".join(clauses) or "1"
    rows = conn.execute(
        f"SELECT created_at, id, data, pinned FROM jobs WHERE {where}"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    jobs = [_job(data, pinned) for _, _, data, pinned in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        created_at, job_id, _, _ = rows[limit - 1]
        cursor = encode_cursor(created_at, job_id)
    return jobs, cursor


def encode_cursor(created_at: float, job_id: str) -> str:
    raw = f"{created_at!r}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        created_at = float(created)
    except (ValueError, binascii.Error):  # UnicodeDecodeError is a ValueError
        raise ValidationFailed("invalid cursor", field="cursor") from None
    if not job_id or not math.isfinite(created_at):
        raise ValidationFailed("invalid cursor", field="cursor")
    return created_at, job_id


def unfinished_jobs(conn: sqlite3.Connection) -> list[Job]:
    rows = conn.execute(
        "SELECT data, pinned FROM jobs WHERE status IN (?, ?) ORDER BY created_at, id",
        _UNFINISHED,
    ).fetchall()
    return [_job(data, pinned) for data, pinned in rows]


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
        for seq, type_, ts, data in cur:
            if type_ == LOG:
                if _expand(out, job_id, seq, json.loads(data), after, limit):
                    break
            else:
                out.append(ev.from_data(type_, job_id=job_id, seq=seq, ts=ts,
                                        data=json.loads(data)))
                if len(out) >= limit:
                    break
    finally:
        cur.close()
    return out


def events_but_lines_after(
    conn: sqlite3.Connection, job_id: JobId, after: int, limit: int
) -> list[ev.Event]:
    """Like `events_after`, output lines left out (they are most of a job's rows)."""
    rows = conn.execute(
        "SELECT seq, type, ts, data FROM events WHERE job_id = ? AND seq_end > ?"
        " AND type != ? ORDER BY seq_end LIMIT ?", (job_id, after, LOG, limit)).fetchall()
    return [ev.from_data(type_, job_id=job_id, seq=seq, ts=ts, data=json.loads(data))
            for seq, type_, ts, data in rows]


def _expand(
    out: list[ev.Event], job_id: JobId, seq: int, segments: list[list[Any]],
    after: int, limit: int,
) -> bool:
    """Append a chunk's Log events with seq > after; True once `out` is full."""
    for ts, stream, lines in segments:
        n = len(lines)
        if seq + n <= after:  # the whole segment was seen
            seq += n
            continue
        skip = max(0, after + 1 - seq)
        stop = min(n, skip + limit - len(out))
        out.extend(ev.make_logs(job_id, seq + skip, ts, stream,
                                lines if skip == 0 and stop == n else lines[skip:stop]))
        if len(out) >= limit:
            return True
        seq += n
    return False
