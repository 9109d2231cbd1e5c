"""The job record and the reducer that folds events into it.

Rules: `apply(job, event)` is pure and total over the event types; status
changes go through `states.transition` (an invalid one raises and the job is
left as it was). Log events do not change the record, so the hot path skips
the reducer for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .ids import JobId, UserId
from .states import Move, Status, transition

STEP_STATUSES = ("Pending", "Running", "Succeeded", "Failed", "Skipped")


@dataclass(frozen=True, slots=True, kw_only=True)
class StepState:
    name: str
    status: str = "Pending"
    progress_pct: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    errors: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "progress_pct": self.progress_pct,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "errors": [dict(e) for e in self.errors],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepState:
        return cls(
            name=d["name"],
            status=d.get("status", "Pending"),
            progress_pct=d.get("progress_pct", 0.0),
            started_at=d.get("started_at"),
            completed_at=d.get("completed_at"),
            errors=tuple(d.get("errors", ())),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: JobId
    owner: UserId
    template: str
    kind: str = "job"
    params: Mapping[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] = ()  # the argv of an ad-hoc job
    input: Mapping[str, Any] | None = None  # a document handed to the job whole
    resume_from: int = 0  # steps before this index are skipped (a retry)
    status: Status = Status.QUEUED
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    pid: int | None = None
    process: Mapping[str, Any] | None = None  # the running process's identity (groups.py)
    # The node that runs it or ran it last (its `started` event's; None on one node).
    node: str | None = None
    command_line: str | None = None
    exit_code: int | None = None
    outcome: str | None = None
    result_message: str | None = None
    error_message: str | None = None
    log_snippet: str | None = None
    progress: Mapping[str, Any] | None = None
    steps: tuple[StepState, ...] = ()
    result: Mapping[str, Any] | None = None
    errors: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    parent_id: JobId | None = None
    retry_of: JobId | None = None
    correlation_id: str | None = None
    attempt: int = 1
    last_seq: int = 0
    # Kept from retention (not an event: the store keeps it beside the record).
    pinned: bool = False
    # The `truncated` event's counts, once the log passed its cap.
    log_truncated: Mapping[str, int] | None = None
    # What the cap has dropped of this run so far (logcap.Dropped's fields),
    # until its `truncated` event records it: recovery records that event from
    # here when the server died first. Older records have none (None).
    log_dropped: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The native API's view of the job (also what the store keeps)."""
        return {
            "id": self.id,
            "owner": self.owner,
            "template": self.template,
            "kind": self.kind,
            "params": dict(self.params),
            "command": self.command_line,
            "argv": list(self.command) if self.command else None,
            "input": dict(self.input) if self.input is not None else None,
            "resume_from": self.resume_from,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "pid": self.pid,
            "process": dict(self.process) if self.process is not None else None,
            "node": self.node,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "result_message": self.result_message,
            "error_message": self.error_message,
            "log_snippet": self.log_snippet,
            "progress": dict(self.progress) if self.progress is not None else None,
            "steps": [s.to_dict() for s in self.steps],
            "result": dict(self.result) if self.result is not None else None,
            "errors": [dict(e) for e in self.errors],
            "warnings": list(self.warnings),
            "parent_id": self.parent_id,
            "retry_of": self.retry_of,
            "correlation_id": self.correlation_id,
            "attempt": self.attempt,
            "last_seq": self.last_seq,
            "pinned": self.pinned,
            "log_truncated": dict(self.log_truncated) if self.log_truncated else None,
            "log_dropped": dict(self.log_dropped) if self.log_dropped else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        return cls(
            id=JobId(d["id"]),
            owner=UserId(d["owner"]),
            template=d["template"],
            kind=d.get("kind", "job"),
            params=d.get("params") or {},
            command=tuple(d.get("argv") or ()),
            input=d.get("input"),
            resume_from=d.get("resume_from", 0),
            status=Status(d["status"]),
            created_at=d.get("created_at", 0.0),
            started_at=d.get("started_at"),
            completed_at=d.get("completed_at"),
            pid=d.get("pid"),
            process=d.get("process"),
            node=d.get("node"),
            command_line=d.get("command"),
            exit_code=d.get("exit_code"),
            outcome=d.get("outcome"),
            result_message=d.get("result_message"),
            error_message=d.get("error_message"),
            log_snippet=d.get("log_snippet"),
            progress=d.get("progress"),
            steps=tuple(StepState.from_dict(s) for s in d.get("steps", ())),
            result=d.get("result"),
            errors=tuple(d.get("errors", ())),
            warnings=tuple(d.get("warnings", ())),
            parent_id=d.get("parent_id"),
            retry_of=d.get("retry_of"),
            correlation_id=d.get("correlation_id"),
            attempt=d.get("attempt", 1),
            last_seq=d.get("last_seq", 0),
            pinned=bool(d.get("pinned", False)),
            log_truncated=d.get("log_truncated"),
            log_dropped=d.get("log_dropped"),
        )


MAX_WARNINGS = 50
MAX_ERRORS = 50


def apply(job: Job, event: ev.Event) -> Job:
    """The job after `event`. Raises InvalidTransition for an illegal status change."""
    changes: dict[str, Any] = {"last_seq": max(job.last_seq, event.seq)}
    match event:
        case ev.Log():
            pass
        case ev.Queued():
            if job.status is not Status.QUEUED:
                raise_invalid(job.status)
        case ev.Started(pid=pid, command=command, step=step, process=process, node=node):
            if job.status is Status.QUEUED:
                changes["status"] = transition(job.status, Move.START)
                changes["started_at"] = event.ts
            elif job.status is not Status.RUNNING:
                transition(job.status, Move.START)  # raises
            changes["pid"] = pid
            changes["process"] = process
            changes["node"] = node
            changes["command_line"] = command
            if step is not None:
                changes["steps"] = _step(job.steps, step, "Running", event.ts)
        case ev.Progress(pct=pct, step=step):
            changes["progress"] = {
                k: v for k, v in (("pct", pct), ("at", event.at), ("of", event.of),
                                  ("message", event.message), ("step", step)) if v is not None
            }
            if step is not None:
                changes["steps"] = _step(job.steps, step, None, event.ts, pct=pct)
        case ev.Step(name=name, status=status):
            changes["steps"] = _step(job.steps, name, status, event.ts)
        case ev.Result(data=data):
            changes["result"] = dict(data)
        case ev.Error():
            err = {k: v for k, v in ev.to_data(event).items() if k != "step"}
            if len(job.errors) < MAX_ERRORS:
                changes["errors"] = (*job.errors, err)
            if event.step is not None:
                steps = _step(job.steps, event.step, None, event.ts)
                changes["steps"] = tuple(
                    dataclasses.replace(s, errors=(*s.errors, err)) if s.name == event.step else s
                    for s in steps
                )
        case ev.Warning(message=message):
            if len(job.warnings) < MAX_WARNINGS:
                changes["warnings"] = (*job.warnings, message)
        case ev.Bounce():
            changes["status"] = transition(job.status, Move.BOUNCE)
            changes["pid"] = None
            changes["process"] = None
            changes["node"] = None  # queued again: no node runs it
            changes["steps"] = tuple(
                dataclasses.replace(s, status="Pending") if s.status == "Running" else s
                for s in job.steps
            )
        case ev.Finished():
            status = Status(event.status)
            move = {Status.SUCCEEDED: Move.SUCCEED, Status.FAILED: Move.FAIL,
                    Status.CANCELLED: Move.CANCEL}[status]
            changes["status"] = transition(job.status, move)
            changes["completed_at"] = event.ts
            changes["process"] = None
            changes["exit_code"] = event.exit_code
            changes["outcome"] = event.outcome
            if status is Status.FAILED:
                changes["error_message"] = event.message
                changes["log_snippet"] = event.log_snippet
            else:
                changes["result_message"] = event.message
            changes["steps"] = _close_steps(job.steps, status, event.ts)
        case ev.Truncated():
            changes["log_truncated"] = {k: v for k, v in ev.to_data(event).items()}
            changes["log_dropped"] = None  # recorded: nothing left to recover
        case ev.Spawned() | ev.Deleted():
            pass
    return dataclasses.replace(job, **changes)


def raise_invalid(status: Status) -> None:
    transition(status, Move.START if status.terminal else Move.BOUNCE)


def _step(
    steps: tuple[StepState, ...], name: str, status: str | None, ts: float, *,
    pct: float | None = None,
) -> tuple[StepState, ...]:
    if status is not None and status not in STEP_STATUSES:
        status = None
    found = False
    out: list[StepState] = []
    for s in steps:
        if s.name == name:
            found = True
            s = _update_step(s, status, ts, pct)
        out.append(s)
    if not found:
        out.append(_update_step(StepState(name=name), status, ts, pct))
    return tuple(out)


def _update_step(s: StepState, status: str | None, ts: float, pct: float | None) -> StepState:
    changes: dict[str, Any] = {}
    if pct is not None:
        changes["progress_pct"] = pct
    if status is not None and status != s.status:
        changes["status"] = status
        if status == "Running" and s.started_at is None:
            changes["started_at"] = ts
        if status in ("Succeeded", "Failed", "Skipped"):
            changes["completed_at"] = ts
            if status == "Succeeded":
                changes["progress_pct"] = 100.0
    return dataclasses.replace(s, **changes) if changes else s


def _close_steps(steps: tuple[StepState, ...], status: Status, ts: float) -> tuple[StepState, ...]:
    """At the end of a job a still-running step takes the job's fate."""
    fate = {Status.SUCCEEDED: "Succeeded", Status.FAILED: "Failed", Status.CANCELLED: "Failed"}
    return tuple(
        _update_step(s, fate[status], ts, None) if s.status == "Running" else s for s in steps
    )
