"""The event model: everything that happens to a job, append-only, by `seq`.

Each job's events are numbered from 1 by `seq`; the persisted event log is the
source of truth and every client view is a rendering of it. Events are frozen
and carry plain data only. `to_data` / `from_data` turn one into the
(type, dict) pair the store keeps and back; nothing else knows the layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .ids import JobId


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Event):
    TYPE: ClassVar[str] = "log"
    stream: str  # "stdout" | "stderr"
    line: str


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
class Deleted(Event):
    TYPE: ClassVar[str] = "deleted"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        Queued, Started, Log, Progress, Step, Spawned, Result, Error, Warning,
        Bounce, Finished, Deleted,
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


def from_data(type_: str, *, job_id: JobId, seq: int, ts: float, data: Mapping[str, Any]) -> Event:
    """Rebuild an event from what `to_data` made; unknown keys are ignored."""
    cls = EVENT_TYPES[type_]
    names = _FIELDS[cls]
    kwargs = {k: v for k, v in data.items() if k in names}
    return cls(job_id=job_id, seq=seq, ts=ts, **kwargs)


def with_seq(event: Event, seq: int) -> Event:
    return dataclasses.replace(event, seq=seq)
