"""The event model: everything that happens to a job, append-only, by `seq`.

Each job's events are numbered from 1 by `seq`; the persisted event log is the
source of truth and every client view is a rendering of it. Events are frozen
and carry plain data only. `to_data` / `from_data` turn one into the
(type, dict) pair the store keeps and back; nothing else knows the layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .ids import JobId
from .timefmt import iso_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    TYPE: ClassVar[str] = ""
    job_id: JobId
    seq: int
    ts: float  # seconds since the epoch, UTC


@dataclass(frozen=True, slots=True, kw_only=True)
class Queued(Event):
    TYPE: ClassVar[str] = "queued"
    reason: str = "submitted"  # submitted | retry | restart | bounce


@dataclass(frozen=True, slots=True, kw_only=True)
class Started(Event):
    TYPE: ClassVar[str] = "started"
    pid: int
    command: str
    step: str | None = None
    # What proves a live process is this one after a restart (pid, pgid,
    # start_time, boot_id: see groups.py); None where the system cannot tell.
    process: Mapping[str, Any] | None = None
    # The node running it, with several nodes on one database (None: one node).
    node: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Event):
    TYPE: ClassVar[str] = "log"
    stream: str  # "stdout" | "stderr"
    line: str


# The hot path builds a Log per output line: filling the slots directly costs
# a third of the frozen __init__ (which goes through object.__setattr__).
def _slot_setter(name: str) -> Callable[[Log, Any], None]:
    slot: Any = getattr(Log, name)  # the member descriptor __slots__ made
    setter: Callable[[Log, Any], None] = slot.__set__
    return setter


_new = object.__new__
_SET_JOB, _SET_SEQ, _SET_TS, _SET_STREAM, _SET_LINE = (
    _slot_setter(name) for name in ("job_id", "seq", "ts", "stream", "line"))


def make_logs(job_id: JobId, first: int, ts: float, stream: str,
              lines: list[str]) -> list[Log]:
    """`Log` events for `lines` numbered from `first`, equal to the ones __init__ makes."""
    out: list[Log] = []
    append = out.append
    for seq, line in enumerate(lines, first):
        event = _new(Log)
        _SET_JOB(event, job_id)
        _SET_SEQ(event, seq)
        _SET_TS(event, ts)
        _SET_STREAM(event, stream)
        _SET_LINE(event, line)
        append(event)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    TYPE: ClassVar[str] = "progress"
    pct: float
    at: float | None = None
    of: float | None = None
    message: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Step(Event):
    TYPE: ClassVar[str] = "step"
    name: str
    status: str  # Pending | Running | Succeeded | Failed | Skipped


@dataclass(frozen=True, slots=True, kw_only=True)
class Spawned(Event):
    TYPE: ClassVar[str] = "spawned"
    child_id: str
    template: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result(Event):
    TYPE: ClassVar[str] = "result"
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Event):
    """An error the job (or the server, for it) reported; the job may go on."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    remediation: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Warning(Event):
    TYPE: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounce(Event):
    TYPE: ClassVar[str] = "bounce"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished(Event):
    TYPE: ClassVar[str] = "finished"
    status: str  # SUCCEEDED | FAILED | CANCELLED
    outcome: str  # an OutcomeKind value
    exit_code: int | None = None
    message: str | None = None
    log_snippet: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncated(Event):
    """The log passed its cap (core/logcap.py): `lines` log lines of `bytes`
    bytes, every log line with a seq in first_seq..last_seq, are not kept (they
    were published live; on replay those seqs are absent). One per run, after
    the run's last line."""

    TYPE: ClassVar[str] = "truncated"
    lines: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Deleted(Event):
    TYPE: ClassVar[str] = "deleted"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        Queued, Started, Log, Progress, Step, Spawned, Result, Error, Warning,
        Bounce, Finished, Truncated, Deleted,
    )
}

_BASE_FIELDS = frozenset({"job_id", "seq", "ts"})
_FIELDS: dict[type[Event], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS)
    for cls in EVENT_TYPES.values()
}


def to_data(event: Event) -> dict[str, Any]:
    """The event's own fields (not job_id/seq/ts), as JSON-ready data."""
    out: dict[str, Any] = {}
    for name in _FIELDS[type(event)]:
        value = getattr(event, name)
        if value is not None:
            out[name] = dict(value) if isinstance(value, Mapping) else value
    return out


def event_view(event: Event) -> dict[str, Any]:
    """An event as the native API shows it (`/events`, `/stream`)."""
    return {"seq": event.seq, "type": event.TYPE, "ts": iso_ms(event.ts), **to_data(event)}


def from_data(type_: str, *, job_id: JobId, seq: int, ts: float, data: Mapping[str, Any]) -> Event:
    """Rebuild an event from what `to_data` made; unknown keys are ignored."""
    cls = EVENT_TYPES[type_]
    names = _FIELDS[cls]
    kwargs = {k: v for k, v in data.items() if k in names}
    return cls(job_id=job_id, seq=seq, ts=ts, **kwargs)


def with_seq(event: Event, seq: int) -> Event:
    return dataclasses.replace(event, seq=seq)
