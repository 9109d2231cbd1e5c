"""What every store backend writes and reads the same way: the queued operations,
the log-chunk codec, job rows and the page cursor. No SQL and no connections.

Rules: plain data in, plain data out (nothing here imports trio or a driver).
Log lines are stored in chunks, not a row per line: a run of Log events of one
job with contiguous seqs becomes ONE `events` row covering `seq..seq_end`,
whose `data` is a JSON array of segments `[ts, stream, [line, ...]]` (lines
sharing a timestamp and stream share a segment; a batch from one read of a
pipe is one segment). Every other event is one row, `data` being
`events.to_data(event)` as JSON. Rows never overlap, so ordering by `seq_end`
is ordering by seq, and `(job_id, seq_end)` is the key of the range scan
`seq_end > after` that `events_after` does. JSON is written with
`ensure_ascii` (the default), so a row's text is ASCII whatever the lines held.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

from ..core import events as ev
from ..core.ids import JobId
from ..core.job import Job
from ..errors import ValidationFailed
from .base import IdempotencyRecord, JobFilter

# A chunk holds at most this many lines: a reader resuming inside a chunk
# decodes it whole, so chunks stay near a replay page (the engine reads 2,000).
MAX_CHUNK_LINES = 1000
# ... and at most about this many characters of line text.
MAX_CHUNK_CHARS = 1 << 20
# A page of `list_jobs` never has more rows than this, whatever was asked.
MAX_PAGE = 1000

LOG = ev.Log.TYPE


# ---- queued operations ------------------------------------------------------


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

# job_id, seq, seq_end, type, ts, data
Row = tuple[str, int, int, str, float, str]
# id, owner, status, template, created_at, completed_at, data
JobRow = tuple[str, str, str, str, float, float | None, str]


# ---- job rows ---------------------------------------------------------------


def job_row(job: Job) -> JobRow:
    return (job.id, job.owner, job.status.value, job.template, job.created_at,
            job.completed_at, json.dumps(job.to_dict(), separators=(",", ":")))


def decode_job(data: str, pinned: object) -> Job:
    """A job record; whether it is pinned is the column's say (`data` may be older)."""
    job = Job.from_dict(json.loads(data))
    return job if job.pinned == bool(pinned) else dataclasses.replace(job, pinned=bool(pinned))


# ---- log chunks ---------------------------------------------------------------


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
class Group:
    """The rows and job records of one group commit, built in op order; a
    backend writes what `take` hands it whenever an op needs the rows so far
    in the database (a delete, a pin, a trim) and at the end."""

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
                self.add_lines(e.job_id, e.seq, e.ts, e.stream, [x.line for x in run])
                i = j
                continue
            self._close(e.job_id)
            data = json.dumps(ev.to_data(e), separators=(",", ":"))
            self.rows.append((e.job_id, e.seq, e.seq, e.TYPE, e.ts, data))
            i += 1

    def add_lines(self, job_id: str, seq: int, ts: float, stream: str, lines: list[str]) -> None:
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

    def take(self) -> tuple[list[Row], list[JobRow]]:
        """The event rows and job rows gathered so far (then empty again)."""
        rows = self.rows
        rows.extend(c.row() for c in self.open.values())
        jobs = [job_row(j) for j in self.jobs.values()]
        self.rows = []
        self.open.clear()
        self.jobs.clear()
        return rows, jobs


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


def rows_without(job_id: str, seq: int, data: str, low: int, high: int) -> list[Row]:
    """A log chunk starting at `seq` written again without its lines low..high
    (the log cap's trim of a chunk that straddles an end of the range)."""
    group = Group()
    for ts, stream, lines in json.loads(data):
        for line in lines:
            if not low <= seq <= high:
                group.add_lines(job_id, seq, ts, stream, [line])
            seq += 1
    rows, _ = group.take()
    return rows


def decode_rows(rows: Iterable[tuple[int, str, float, str]], job_id: JobId, after: int,
                limit: int, out: list[ev.Event]) -> bool:
    """Append the events of `events` rows (seq, type, ts, data), in seq_end order,
    with seq > after; True once `out` holds `limit`."""
    for seq, type_, ts, data in rows:
        if type_ == LOG:
            if _expand(out, job_id, seq, json.loads(data), after, limit):
                return True
        else:
            out.append(ev.from_data(type_, job_id=job_id, seq=seq, ts=ts, data=json.loads(data)))
            if len(out) >= limit:
                return True
    return False


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


# ---- pages of jobs ----------------------------------------------------------------


def job_page(rows: Sequence[tuple[float, str, str, object]],
             limit: int) -> tuple[list[Job], str | None]:
    """A page from up to `limit + 1` rows (created_at, id, data, pinned), newest
    first, and the next page's cursor (None if there is no row beyond it)."""
    jobs = [decode_job(data, pinned) for _, _, data, pinned in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        created_at, job_id, _, _ = rows[limit - 1]
        cursor = encode_cursor(created_at, job_id)
    return jobs, cursor


def page_filter(query: JobFilter, mark: str) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a `list_jobs` page and their parameters, `mark` being
    the backend's placeholder ("?" or "%s")."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("owner", query.owner),
        ("status", None if query.status is None else query.status.value),
        ("template", query.template),
    ):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if query.cursor is not None:
        clauses.append(f"(created_at, id) < ({mark}, {mark})")
        params.extend(decode_cursor(query.cursor))
    return clauses, params


def page_limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))




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
