"""The blocking half of the PostgreSQL store: schema, connections, SQL, notifications.

Rules: everything here is synchronous and runs in a worker thread started by
`trio.to_thread.run_sync` (committer.py); nothing here imports trio. A
connection is used by one thread at a time and is in autocommit mode:
transactions are explicit. Writes happen only in `commit_group`, in one
transaction per group, and are safe to repeat (events insert with ON CONFLICT
DO NOTHING, jobs and keys are upserts, deletes and trims converge), so a group
whose commit's outcome was lost with the connection may be committed again.
The group's notifications are sent inside its transaction, so PostgreSQL
delivers them at commit and never for a write that did not commit:

    jobserver_events   "<job_id> <last_seq>"       per job whose events were written
    jobserver_deleted  "<job_id> <job_id> ..."     deleted jobs (payloads < NOTIFY_BYTES)
    jobserver_queue    "<job_id>"                  a job record written while QUEUED

The row layout (log chunks, job rows, cursors) is codec.py's, shared with SQLite.
The job-record upsert never writes `node` (claiming does). The writer's
connection names its node (`jobserver.node`, a session setting): a group that
writes new events for a job another node holds now (it declared this one dead
and took the job over) is refused whole with `WriteFenced`, checked under the
job rows' locks in the group's transaction, so no write of a fenced node
lands after the takeover; a repeat of a group already committed (its events
are there) leaves such a job's rows alone. Every network wait
is bounded by the connection's TCP timeouts, so a thread never hangs on a dead
server; a lost connection raises `DatabaseUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..config import redact_url
from ..core import events as ev
from ..core.ids import JobId, UserId
from ..core.job import Job
from ..core.states import Status
from . import codec
from .base import (
    DatabaseUnavailable,
    Expired,
    IdempotencyRecord,
    IncompatibleDatabase,
    JobFilter,
    RetentionRule,
    WriteFenced,
)
from .codec import LOG, DeleteOp, Group, JobRow, Op, PinOp, Row, TrimOp, WriteOp, decode_job

Connection = psycopg.Connection[tuple[Any, ...]]

SCHEMA_VERSION = 1

# Statements that take a database from version i to i + 1 (`jobserver_schema`).
# Text keys sort byte-wise (COLLATE "C"), as SQLite's do: page cursors and
# FIFO order do not depend on the server's locale.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id text COLLATE "C" PRIMARY KEY,
            owner text COLLATE "C" NOT NULL,
            status text NOT NULL,
            template text COLLATE "C" NOT NULL,
            created_at double precision NOT NULL,
            completed_at double precision,
            pinned boolean NOT NULL DEFAULT false,
            node text,
            data text NOT NULL
        )""",
        "CREATE INDEX jobs_by_created ON jobs (created_at, id)",
        "CREATE INDEX jobs_by_owner ON jobs (owner, created_at, id)",
        "CREATE INDEX jobs_by_status ON jobs (status, created_at, id)",
        "CREATE INDEX jobs_by_template ON jobs (template, created_at, id)",
        "CREATE INDEX jobs_expiring ON jobs (completed_at, id)"
        " WHERE completed_at IS NOT NULL AND NOT pinned",
        "CREATE INDEX jobs_expiring_by_template ON jobs (template, completed_at, id)"
        " WHERE completed_at IS NOT NULL AND NOT pinned",
        "CREATE INDEX jobs_queued ON jobs (created_at, id) WHERE status = 'QUEUED'",
        """CREATE TABLE events (
            job_id text COLLATE "C" NOT NULL,
            seq bigint NOT NULL,
            seq_end bigint NOT NULL,
            type text NOT NULL,
            ts double precision NOT NULL,
            data text NOT NULL,
            PRIMARY KEY (job_id, seq_end)
        )""",
        """CREATE TABLE idempotency_keys (
            owner text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            fingerprint text NOT NULL,
            job_id text COLLATE "C" NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            PRIMARY KEY (owner, key)
        )""",
        "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)",
        "CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id)",
        """CREATE TABLE nodes (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            state text NOT NULL DEFAULT 'up'
        )""",
        "CREATE TABLE shared_secrets (name text PRIMARY KEY, value text NOT NULL)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# Migrations of servers starting at once take turns on this advisory lock.
MIGRATION_LOCK = 0x6A6F6273  # "jobs"
# Seconds to connect; then TCP keepalives and a user timeout notice a dead
# server or a cut network within about TCP_USER_TIMEOUT_MS.
CONNECT_TIMEOUT = 10
TCP_USER_TIMEOUT_MS = 15_000
# A notification payload stays far below PostgreSQL's 8,000-byte limit.
NOTIFY_BYTES = 4000
# Rows of `events` fetched per round trip of `events_after` (a chunk is up to
# MAX_CHUNK_CHARS: fetching `limit` rows at once could be gigabytes).
READ_ROWS = 16

EVENTS_CHANNEL = "jobserver_events"
DELETED_CHANNEL = "jobserver_deleted"
QUEUE_CHANNEL = "jobserver_queue"

_UNFINISHED = [Status.QUEUED.value, Status.RUNNING.value]
_QUEUED = Status.QUEUED.value


# ---- connections ----------------------------------------------------------


def connect(url: str, *, writer: bool, node: str | None = None) -> Connection:
    """A connection in autocommit mode; the writer's creates or migrates the
    schema, and names `node` (the node whose jobs it writes: see `_fence`)."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               tcp_user_timeout=TCP_USER_TIMEOUT_MS,
                               application_name="jobserver", keepalives=1,
                               keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact_url(url)}: "
                                  f"{_reason(exc)}") from None
    try:
        if writer:
            migrate(conn)
            if node is not None:
                conn.execute("SELECT set_config('jobserver.node', %s, false)", (node,))
        else:
            conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        conn.close()
        raise
    return conn


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def _lost(conn: Connection, what: str) -> Iterator[None]:
    """A lost connection becomes `DatabaseUnavailable`; other errors pass."""
    try:
        yield
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            raise DatabaseUnavailable(f"lost the connection to PostgreSQL during {what}: "
                                      f"{_reason(exc)}") from exc
        raise


def migrate(conn: Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS jobserver_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version), count(*) FROM jobserver_schema").fetchone()
        assert row is not None
        version = 0 if row[0] is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise IncompatibleDatabase(
                f"the PostgreSQL database's schema version {version} is newer than this "
                f"server's ({SCHEMA_VERSION}): run a jobserver at least as new as the one "
                "that wrote it")
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if row[1] == 0:
            conn.execute("INSERT INTO jobserver_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE jobserver_schema SET version = %s", (SCHEMA_VERSION,))


def schema_version(conn: Connection) -> int | None:
    """The version a database records (None: no jobserver schema yet)."""
    exists = conn.execute("SELECT to_regclass('jobserver_schema')").fetchone()
    if exists is None or exists[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM jobserver_schema").fetchone()
    return None if row is None or row[0] is None else int(row[0])


# ---- writing --------------------------------------------------------------


@dataclass(slots=True)
class _Notes:
    """What a group's notifications will say, gathered as its rows are written."""

    events: dict[str, int] = field(default_factory=dict)  # job id -> last seq
    deleted: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    def send(self, conn: Connection) -> None:
        channels: list[str] = []
        payloads: list[str] = []
        for job_id, seq in self.events.items():
            channels.append(EVENTS_CHANNEL)
            payloads.append(f"{job_id} {seq}")
        for payload in _joined(self.deleted):
            channels.append(DELETED_CHANNEL)
            payloads.append(payload)
        for job_id in self.queued:
            channels.append(QUEUE_CHANNEL)
            payloads.append(job_id)
        if channels:
            conn.execute("SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)",
                         (channels, payloads))


def _joined(ids: Sequence[str]) -> Iterator[str]:
    """Space-separated ids, in payloads of at most NOTIFY_BYTES."""
    batch: list[str] = []
    size = 0
    for job_id in ids:
        if batch and size + 1 + len(job_id) > NOTIFY_BYTES:
            yield " ".join(batch)
            batch, size = [], 0
        size += len(job_id) + (1 if batch else 0)
        batch.append(job_id)
    if batch:
        yield " ".join(batch)


# Rows go as one array per column (one statement however many rows), in binary:
# a text array literal of megabytes of log lines is several times slower to
# quote and parse than the lines themselves are to write.


def _insert_rows(conn: Connection, rows: Sequence[Row]) -> None:
    conn.execute(
        "INSERT INTO events (job_id, seq, seq_end, type, ts, data)"
        " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[],"
        " %b::float8[], %b::text[]) ON CONFLICT DO NOTHING",
        [list(column) for column in zip(*rows, strict=True)],
    )


def _upsert_jobs(conn: Connection, jobs: Sequence[JobRow]) -> None:
    conn.execute(
        "INSERT INTO jobs (id, owner, status, template, created_at, completed_at, data)"
        " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[],"
        " %b::float8[], %b::text[]) ON CONFLICT (id) DO UPDATE SET"
        " owner = excluded.owner, status = excluded.status,"
        " template = excluded.template, created_at = excluded.created_at,"
        " completed_at = excluded.completed_at, data = excluded.data",
        [list(column) for column in zip(*jobs, strict=True)],
    )


def _fence(conn: Connection, rows: list[Row], jobs: list[JobRow]
           ) -> tuple[list[Row], list[JobRow]]:
    """The rows and records this node may write: raises `WriteFenced` when
    new events are for a job another node holds; drops a held job's rows when
    they are all stored already (a repeated group). The rows checked stay
    locked to the end of the transaction (a takeover waits for it)."""
    ids = sorted({r[0] for r in rows} | {j[0] for j in jobs})
    held: dict[str, int] = dict(conn.execute(
        "SELECT j.id, (SELECT coalesce(max(e.seq_end), 0) FROM events e WHERE e.job_id = j.id)"
        " FROM jobs j WHERE j.id = ANY(%s) AND j.node IS NOT NULL"
        " AND j.node <> current_setting('jobserver.node', true) FOR UPDATE OF j",
        (ids,)).fetchall()) if ids else {}
    if not held:
        return rows, jobs
    for job_id, stored in held.items():
        ours = max((r[2] for r in rows if r[0] == job_id), default=0)
        if ours > stored:
            raise WriteFenced(f"job {job_id} is another node's now (this node was declared "
                              "dead and its jobs taken over): nothing more is written")
    return [r for r in rows if r[0] not in held], [j for j in jobs if j[0] not in held]


def _flush(conn: Connection, group: Group, notes: _Notes) -> None:
    rows, jobs = group.take()
    if rows or jobs:
        rows, jobs = _fence(conn, rows, jobs)
    if rows:
        _insert_rows(conn, rows)
        last = notes.events
        for job_id, _, seq_end, _, _, _ in rows:
            if seq_end > last.get(job_id, 0):
                last[job_id] = seq_end
    if jobs:
        _upsert_jobs(conn, jobs)
        notes.queued.extend(j[0] for j in jobs if j[2] == _QUEUED)


def commit_group(conn: Connection, ops: Sequence[Op]) -> None:
    """Commit `ops`, in order, in one transaction (all or nothing), with its notifications."""
    group = Group()
    notes = _Notes()
    with _lost(conn, "a commit"), conn.transaction():
        for op in ops:
            if isinstance(op, WriteOp):
                group.add(op.events)
                if op.job is not None:
                    group.jobs[op.job.id] = op.job
                if op.key is not None:
                    _put_key(conn, op.key)
                continue
            _flush(conn, group, notes)
            if isinstance(op, DeleteOp):
                ids = list(op.job_ids)
                conn.execute("DELETE FROM events WHERE job_id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM jobs WHERE id = ANY(%s)", (ids,))
                conn.execute("DELETE FROM idempotency_keys WHERE job_id = ANY(%s)", (ids,))
                notes.deleted.extend(ids)
            elif isinstance(op, PinOp):
                conn.execute("UPDATE jobs SET pinned = %s WHERE id = %s", (op.pinned, op.job_id))
            else:
                trim_logs(conn, op)
        _flush(conn, group, notes)
        notes.send(conn)


def trim_logs(conn: Connection, op: TrimOp) -> None:
    """Remove the log lines of `op`'s range: whole chunks inside it go, a chunk
    that straddles an end is written again without those lines."""
    found = conn.execute(
        "SELECT seq, seq_end FROM events WHERE job_id = %s AND type = %s"
        " AND seq_end >= %s AND seq_end < %s",
        (op.job_id, LOG, op.low, op.high + codec.MAX_CHUNK_LINES),
    ).fetchall()
    whole = [seq_end for seq, seq_end in found if seq >= op.low and seq_end <= op.high]
    if whole:
        conn.execute("DELETE FROM events WHERE job_id = %s AND seq_end = ANY(%s)",
                     (op.job_id, whole))
    for seq, seq_end in found:
        if seq <= op.high and not (seq >= op.low and seq_end <= op.high):
            row = conn.execute("DELETE FROM events WHERE job_id = %s AND seq_end = %s"
                               " RETURNING seq, data", (op.job_id, seq_end)).fetchone()
            assert row is not None
            rewritten = codec.rows_without(op.job_id, row[0], row[1], op.low, op.high)
            if rewritten:
                _insert_rows(conn, rewritten)


def _put_key(conn: Connection, key: IdempotencyRecord) -> None:
    """Store `key` (replacing an expired one of the same name), dropping every
    key that expired by the time it was made."""
    conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= %s", (key.created_at,))
    conn.execute(
        "INSERT INTO idempotency_keys (owner, key, fingerprint, job_id, created_at, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (owner, key) DO UPDATE SET"
        " fingerprint = excluded.fingerprint, job_id = excluded.job_id,"
        " created_at = excluded.created_at, expires_at = excluded.expires_at",
        (key.owner, key.key, key.fingerprint, key.job_id, key.created_at, key.expires_at),
    )


# ---- reading --------------------------------------------------------------


def find_key(conn: Connection, owner: str, key: str) -> IdempotencyRecord | None:
    with _lost(conn, "a read"):
        row = conn.execute(
            "SELECT fingerprint, job_id, created_at, expires_at FROM idempotency_keys"
            " WHERE owner = %s AND key = %s", (owner, key)).fetchone()
    if row is None:
        return None
    fingerprint, job_id, created_at, expires_at = row
    return IdempotencyRecord(owner=owner, key=key, fingerprint=fingerprint,
                             job_id=JobId(job_id), created_at=created_at, expires_at=expires_at)


def get_job(conn: Connection, job_id: JobId) -> Job | None:
    with _lost(conn, "a read"):
        row = conn.execute("SELECT data, pinned FROM jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else decode_job(row[0], row[1])


def list_jobs(conn: Connection, query: JobFilter) -> tuple[list[Job], str | None]:
    clauses, params = codec.page_filter(query, "%s")
    limit = codec.page_limit(query.limit)
    where = " AND ".join(clauses) or "true"
    with _lost(conn, "a read"):
        rows = conn.execute(
            f"SELECT created_at, id, data, pinned FROM jobs WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT %s",
            (*params, limit + 1),
        ).fetchall()
    return codec.job_page(rows, limit)


def unfinished_jobs(conn: Connection) -> list[Job]:
    with _lost(conn, "a read"):
        rows = conn.execute(
            "SELECT data, pinned FROM jobs WHERE status = ANY(%s) ORDER BY created_at, id",
            (_UNFINISHED,),
        ).fetchall()
    return [decode_job(data, pinned) for data, pinned in rows]


def expired_jobs(conn: Connection, rule: RetentionRule, limit: int) -> list[Expired]:
    """Finished, unpinned jobs that `rule` removes, oldest first, at most `limit`."""
    clauses = ["completed_at IS NOT NULL", "NOT pinned"]
    params: list[Any] = []
    if rule.template is not None:
        clauses.append("template = %s")
        params.append(rule.template)
    if rule.exclude:
        clauses.append("NOT (template = ANY(%s))")
        params.append(list(rule.exclude))
    if rule.before is not None:
        clauses.append("completed_at < %s")
        params.append(rule.before)
    where = " AND ".join(clauses)
    columns = "id, owner, (data::json ->> 'last_seq')::bigint"
    if rule.keep is None:
        sql = f"SELECT {columns} FROM jobs WHERE {where} ORDER BY completed_at, id LIMIT %s"
        args: tuple[Any, ...] = (*params, limit)
    else:  # beyond the newest `keep`: skip them, newest first
        sql = (f"SELECT {columns} FROM jobs WHERE {where}"
               " ORDER BY completed_at DESC, id DESC LIMIT %s OFFSET %s")
        args = (*params, limit, rule.keep)
    with _lost(conn, "a read"):
        rows = conn.execute(sql, args).fetchall()
    return [Expired(job_id=JobId(i), owner=UserId(o), last_seq=int(n or 0)) for i, o, n in rows]


def events_but_lines_after(conn: Connection, job_id: JobId, after: int,
                           limit: int) -> list[ev.Event]:
    """Like `events_after`, output lines left out (they are most of a job's rows)."""
    out: list[ev.Event] = []
    with _lost(conn, "a read"):
        rows = conn.execute(
            "SELECT seq, type, ts, data FROM events WHERE job_id = %s AND seq_end > %s"
            " AND type <> %s ORDER BY seq_end LIMIT %s", (job_id, after, codec.LOG, limit),
        ).fetchall()
    codec.decode_rows(rows, job_id, after, limit, out)
    return out


def events_after(conn: Connection, job_id: JobId, after: int, limit: int) -> list[ev.Event]:
    out: list[ev.Event] = []
    cursor = after  # the seq_end the next round trip starts after
    with _lost(conn, "a read"):
        while len(out) < limit:
            rows = conn.execute(
                "SELECT seq, type, ts, data, seq_end FROM events"
                " WHERE job_id = %s AND seq_end > %s ORDER BY seq_end LIMIT %s",
                (job_id, cursor, min(limit - len(out), READ_ROWS)),
            ).fetchall()
            if codec.decode_rows([r[:4] for r in rows], job_id, after, limit, out):
                break
            if len(rows) < READ_ROWS:
                break
            cursor = rows[-1][4]
    return out
