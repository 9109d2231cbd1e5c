"""A job as the engine holds it while it is live, what is submitted (an ad-hoc
command checked), and the events that end a run (its steps' fates, the log
cap's marker).

Rules: plain records and pure event makers, no I/O; each maker is a function
of the seq the engine gives it (`Engine.record`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from .core import events as ev
from .core.ids import JobId
from .core.job import Job
from .core.logcap import Dropped, LogCap
from .core.states import Status
from .core.topics import JobTopic, OwnerTopic
from .errors import ValidationFailed

MAX_ADHOC_ARGS = 1024
MAX_ADHOC_ARG_BYTES = 65536


@dataclass(eq=False, slots=True)
class LiveJob:
    """A QUEUED or RUNNING job's in-memory state (owned by the engine)."""

    job: Job  # with every recorded event, committed or not
    lock: trio.Lock = field(default_factory=trio.Lock)
    role: str = "user"
    cancel_scope: trio.CancelScope | None = None
    stop_reason: str | None = None  # "cancel" | "bounce"
    cap: LogCap | None = None  # the log cap of its run (set by the run)
    # What it adds to the system topic's counts, as published: QUEUED, RUNNING or None.
    counted: Status | None = None
    forgotten: bool = False  # done, to leave `_live` once all its events are published
    # The hub topics its events go to, made once (publishing runs per read of output).
    topic: JobTopic = field(init=False)
    owner_topic: OwnerTopic = field(init=False)
    # The record as of the last event committed and published: what clients see
    # (`job` runs ahead while a write is in flight).
    published: Job = field(init=False)

    def __post_init__(self) -> None:
        self.topic = JobTopic(self.job.id)
        self.owner_topic = OwnerTopic(self.job.owner)
        self.published = self.job


@dataclass(frozen=True, slots=True, kw_only=True)
class Submission:
    template: str | None = None
    command: Sequence[str] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    parent_id: JobId | None = None
    retry_of: JobId | None = None
    attempt: int = 1
    input: Mapping[str, Any] | None = None
    resume_from: int = 0
    # An Idempotency-Key to remember with the job, in the job's first write.
    claim: KeyClaim | None = None


@dataclass(frozen=True, slots=True)
class KeyClaim:
    key: str
    fingerprint: str  # of the route and the canonical body (idempotency.py)


def log_marker(live: LiveJob, ts: float) -> list[Callable[[int], ev.Event]]:
    """The `truncated` event of a run whose log passed its cap (none otherwise);
    the run's cap is done with."""
    cap, live.cap = live.cap, None
    dropped = None if cap is None else cap.marker()
    if dropped is None:
        return []
    return [partial(truncated, live.job.id, ts, dropped)]


def dropped_counts(cap: LogCap) -> dict[str, int] | None:
    """The cap's counts as the job record keeps them (`Job.log_dropped`)."""
    dropped = cap.marker()
    return None if dropped is None else {
        "lines": dropped.lines, "bytes": dropped.bytes, "first_seq": dropped.first_seq,
        "last_seq": dropped.last_seq}


def truncated(job_id: JobId, ts: float, dropped: Dropped, seq: int) -> ev.Event:
    return ev.Truncated(job_id=job_id, seq=seq, ts=ts, lines=dropped.lines, bytes=dropped.bytes,
                        first_seq=dropped.first_seq, last_seq=dropped.last_seq)


def closing_steps(job: Job, status: str, ts: float) -> list[Callable[[int], ev.Event]]:
    """Step events for the steps still running as `job` ends with `status`: each
    takes the job's fate as an event of its own, so that a client following the
    events sees the step end (the record alone would only show it afterwards)."""
    fate = "Succeeded" if status == Status.SUCCEEDED else "Failed"
    return [partial(_step_event, job.id, ts, step.name, fate)
            for step in job.steps if step.status == "Running"]


def _step_event(job_id: JobId, ts: float, name: str, status: str, seq: int) -> ev.Event:
    return ev.Step(job_id=job_id, seq=seq, ts=ts, name=name, status=status)


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if (not isinstance(argv, (list, tuple)) or not argv
            or not all(isinstance(a, str) for a in argv)):
        raise ValidationFailed("command must be a non-empty list of strings", field="command")
    if len(argv) > MAX_ADHOC_ARGS or sum(len(a) for a in argv) > MAX_ADHOC_ARG_BYTES:
        raise ValidationFailed("command is too long", field="command")
    if any("\x00" in a for a in argv):
        raise ValidationFailed("command must not contain NUL", field="command")
    return tuple(argv)
