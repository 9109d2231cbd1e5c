"""The multiplex dialect's renderers: task, workflow and system messages.

Rules: every message is `{"type", "data"}`; times are ISO 8601 UTC with
milliseconds and `Z`. Statuses map QUEUED → `pending`, RUNNING →
`in_progress`, SUCCEEDED → `completed`, FAILED → `failed`, CANCELLED →
`cancelled` (a `task_error`). A task's events render as:

- `Queued`, `Bounce` → `task_update` pending (progress 0);
- `Started` → `task_update` in_progress, once per run (not per pipeline step);
- `Progress` → `task_update` in_progress with `progress` = pct / 100 (0..1);
- `Result` → nothing, remembered for the completion (its number `cost`, if
  any, becomes the completion's `cost`);
- `Finished` → `task_completion` (completed, with `result` and `cost`) or
  `task_error` (failed / cancelled, with the job's message);
- everything else → nothing.

A workflow renders `workflow_execution_update` each time its status or its
running step (`current_step_id`, from `Started`/`Step` of a step) changes.

Renderers are shared by every subscriber of a channel, so they hold only what
the topic's history determines: one job's state (`JobRenderer`, inferred by
`after(e)` from `e` and, for what `e` does not tell, from the job record it
was made from, or `placed` from the record as published), or a bounded table
of per-job state for an aggregate topic (`TasksRenderer`, a new channel's
placed from the records of the owner's live jobs). Nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core import events as ev
from ..core.ids import JobId
from ..core.job import Job
from ..core.states import Status
from ..core.timefmt import iso_ms
from ..core.topics import SystemStatus, TopicEvent
from . import NOTHING, Rendered, dumps

DIALECT = "multiplex"
STATUS_WORDS = {
    Status.QUEUED: "pending",
    Status.RUNNING: "in_progress",
    Status.SUCCEEDED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}
# Health verdicts (Engine.health) as the spec's component statuses.
HEALTH_WORDS = {"up": "operational", "down": "down", "degraded": "degraded"}
# Jobs an aggregate renderer remembers (progress, result) at once; the oldest
# go first. A job leaves when it finishes.
MAX_TRACKED_JOBS = 10_000


def message(type_: str, data: Mapping[str, Any]) -> str:
    return dumps({"type": type_, "data": data})


@dataclass(slots=True)
class TaskState:
    """What a task's next message needs that its event alone does not say."""

    status: str = "pending"
    progress: float = 0.0
    result: Mapping[str, Any] | None = None
    step: str | None = None

    @classmethod
    def of(cls, job: Job) -> TaskState:
        pct = (job.progress or {}).get("pct")
        step = next((s.name for s in job.steps if s.status == "Running"), None)
        return cls(status=STATUS_WORDS[job.status],
                   progress=_fraction(pct) if isinstance(pct, (int, float)) else 0.0,
                   result=job.result, step=step)

    def copy(self) -> TaskState:
        return TaskState(self.status, self.progress, self.result, self.step)


def _fraction(pct: float) -> float:
    return round(min(max(pct / 100.0, 0.0), 1.0), 4)


def cost_of(result: Mapping[str, Any] | None) -> float | None:
    cost = None if result is None else result.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        return None
    return cost


# ---- one message from a job record (a subscription to a finished task) ------


def final_task_message(job: Job) -> str:
    """The terminal message of a finished job, from its record."""
    state = TaskState.of(job)
    finished = ev.Finished(job_id=job.id, seq=job.last_seq, ts=job.completed_at or 0.0,
                           status=job.status.value, outcome=job.outcome or "",
                           message=job.error_message if job.status is Status.FAILED
                           else job.result_message)
    return _terminal(finished, state)


def task_update(job_id: str, status: str, progress: float, ts: float) -> str:
    return message("task_update", {"task_id": job_id, "status": status, "progress": progress,
                                   "updated_at": iso_ms(ts)})


def workflow_update(job_id: str, status: str, step: str | None, ts: float) -> str:
    return message("workflow_execution_update", {
        "execution_id": job_id, "status": status, "current_step_id": step,
        "updated_at": iso_ms(ts)})


def _terminal(event: ev.Finished, state: TaskState) -> str:
    status = STATUS_WORDS[Status(event.status)]
    if status == "completed":
        data: dict[str, Any] = {"task_id": event.job_id, "status": status, "progress": 1.0,
                                "result": dict(state.result or {})}
        cost = cost_of(state.result)
        if cost is not None:
            data["cost"] = cost
        data["completed_at"] = iso_ms(event.ts)
        return message("task_completion", data)
    text = event.message or ("Task cancelled." if status == "cancelled" else "Task failed.")
    return message("task_error", {"task_id": event.job_id, "status": status, "error": text,
                                  "updated_at": iso_ms(event.ts)})


# ---- one job's events ------------------------------------------------------


def task_messages(event: ev.Event, state: TaskState) -> str | None:
    """The task message `event` makes (if any), moving `state` past it."""
    kind = type(event)
    if kind is ev.Log:
        return None
    if kind is ev.Progress:
        assert isinstance(event, ev.Progress)
        state.status = "in_progress"
        state.progress = _fraction(event.pct)
        return task_update(event.job_id, "in_progress", state.progress, event.ts)
    if kind is ev.Started:
        if state.status == "in_progress":
            return None  # the next step of a pipeline: still the same run
        state.status = "in_progress"
        return task_update(event.job_id, "in_progress", state.progress, event.ts)
    if kind is ev.Queued or kind is ev.Bounce:
        state.status, state.progress = "pending", 0.0
        return task_update(event.job_id, "pending", 0.0, event.ts)
    if kind is ev.Result:
        assert isinstance(event, ev.Result)
        state.result = event.data
        return None
    if kind is ev.Finished:
        assert isinstance(event, ev.Finished)
        state.status = STATUS_WORDS[Status(event.status)]
        return _terminal(event, state)
    return None


def workflow_messages(event: ev.Event, state: TaskState) -> str | None:
    """The workflow message `event` makes (if any), moving `state` past it."""
    kind = type(event)
    status, step = state.status, state.step
    if kind is ev.Log or kind is ev.Progress:
        return None
    if kind is ev.Started:
        assert isinstance(event, ev.Started)
        status, step = "in_progress", event.step or step
    elif kind is ev.Step:
        assert isinstance(event, ev.Step)
        if event.status == "Running":
            status, step = "in_progress", event.name
    elif kind is ev.Queued or kind is ev.Bounce:
        status, step = "pending", None
    elif kind is ev.Finished:
        assert isinstance(event, ev.Finished)
        status = STATUS_WORDS[Status(event.status)]
    else:
        return None
    if (status, step) == (state.status, state.step):
        return None
    state.status, state.step = status, step
    return workflow_update(event.job_id, status, step, event.ts)


def _state_after(event: ev.Event, known: TaskState) -> TaskState:
    """`known` (from the job record) corrected by what `event` says for sure."""
    state = known.copy()
    if isinstance(event, (ev.Queued, ev.Bounce)):
        state.status, state.progress, state.step = "pending", 0.0, None
    elif isinstance(event, ev.Finished):
        state.status = STATUS_WORDS[Status(event.status)]
    elif not isinstance(event, ev.Deleted):
        state.status = "in_progress"
        if isinstance(event, ev.Progress):
            state.progress = _fraction(event.pct)
        elif isinstance(event, ev.Result):
            state.result = event.data
        elif isinstance(event, ev.Started) and event.step is not None:
            state.step = event.step
        elif isinstance(event, ev.Step) and event.status == "Running":
            state.step = event.name
    return state


class JobRenderer:
    """One job's topic as task messages, workflow messages, or both (the variant)."""

    __slots__ = ("_known", "_state", "_wf", "job_id", "task", "workflow")

    def __init__(self, job_id: JobId, known: TaskState, *, task: bool, workflow: bool) -> None:
        self.job_id = job_id
        self.task = task
        self.workflow = workflow
        self._known = known  # the record's state this renderer was made from
        self._state = known.copy()
        self._wf = known.copy() if workflow else None

    @property
    def key(self) -> tuple[str, bool, bool]:
        return (DIALECT, self.task, self.workflow)

    def placed(self, job: Job) -> JobRenderer:
        return JobRenderer(self.job_id, TaskState.of(job), task=self.task,
                           workflow=self.workflow)

    def after(self, event: ev.Event | None) -> JobRenderer:
        known = self._known if event is None else _state_after(event, self._known)
        return JobRenderer(self.job_id, known, task=self.task, workflow=self.workflow)

    def advance(self, event: ev.Event) -> None:
        self.render(event)

    def render(self, event: ev.Event) -> Rendered:
        kind = type(event)
        if kind is ev.Log:
            return NOTHING
        out = []
        if self.workflow:
            wf = workflow_messages(event, self._wf_state())
            if wf is not None:
                out.append(wf)
        if self.task:
            text = task_messages(event, self._state)
            if text is not None:
                out.append(text)
        elif kind is ev.Result:
            assert isinstance(event, ev.Result)
            self._state.result = event.data
        end = kind is ev.Finished or kind is ev.Deleted
        return Rendered(tuple(out), end) if out or end else NOTHING

    def _wf_state(self) -> TaskState:
        # The workflow's own status/step, apart from the task's (each dedupes itself).
        if self._wf is None:
            self._wf = self._known.copy()
        return self._wf


class TasksRenderer:
    """An owner's (or every) job's task messages, on an aggregate topic."""

    __slots__ = ("_jobs",)

    def __init__(self) -> None:
        self._jobs: OrderedDict[JobId, TaskState] = OrderedDict()

    @property
    def key(self) -> tuple[str, str]:
        return (DIALECT, "tasks")

    def placed_all(self, jobs: Sequence[Job]) -> TasksRenderer:
        renderer = TasksRenderer()
        for job in jobs[-MAX_TRACKED_JOBS:]:
            renderer._jobs[job.id] = TaskState.of(job)
        return renderer

    def after(self, event: TopicEvent | None) -> TasksRenderer:
        return TasksRenderer()

    def advance(self, event: TopicEvent) -> None:
        self.render(event)

    def render(self, event: TopicEvent) -> Rendered:
        job_event = event.event
        job_id = job_event.job_id
        jobs = self._jobs
        state = jobs.get(job_id)
        if state is None:
            state = TaskState(status="" if type(job_event) is not ev.Queued else "pending")
            jobs[job_id] = state
            if len(jobs) > MAX_TRACKED_JOBS:
                jobs.popitem(last=False)
        text = task_messages(job_event, state)
        if isinstance(job_event, (ev.Finished, ev.Deleted)):
            jobs.pop(job_id, None)
        return NOTHING if text is None else Rendered((text,))


class SystemRenderer:
    """The system topic as `system_status_update`: stateless."""

    __slots__ = ()

    @property
    def key(self) -> tuple[str, str]:
        return (DIALECT, "system")

    def after(self, event: SystemStatus | None) -> SystemRenderer:
        return self

    def advance(self, event: SystemStatus) -> None:
        pass

    def render(self, event: SystemStatus) -> Rendered:
        return Rendered((system_message(event),))


def system_message(status: SystemStatus) -> str:
    """Only components actually checked appear; `api` and `database` first."""
    health = status.health
    names = [n for n in ("api", "database") if n in health]
    names += sorted(n for n in health if n not in ("api", "database"))
    data: dict[str, Any] = {f"{n}_status": HEALTH_WORDS.get(health[n], health[n]) for n in names}
    data.update(active_tasks=status.running, pending_tasks=status.queued,
                updated_at=iso_ms(status.ts))
    return message("system_status_update", data)
