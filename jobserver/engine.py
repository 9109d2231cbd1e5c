"""The engine: jobs' front office. Submit, cancel, delete, look up, follow.

Rules: every change to a job is an event recorded through `record`, which
numbers it (seq), folds it into the job record, queues both for the store and
then publishes to the hub, in that order, under the job's own lock, so the
store and every subscriber see one sequence. Jobs that are QUEUED or RUNNING
live in memory (`_live`); finished ones are read from the store. Access is
checked here: a user sees only their own jobs, and others' look absent. A
submit's Idempotency-Key (`Submission.claim`) is written with the job's first
event, in one transaction; `record` hands the events to the server's metrics
after publishing (`record_logs`, the output hot path, does not).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from .auth import Principal
from .config import Config
from .core import events as ev
from .core.ids import JobId, new_job_id
from .core.job import Job, StepState, apply
from .core.states import Status
from .core.templates import ParamError, Template
from .core.topics import ALL_JOBS, SYSTEM, JobTopic, OwnerTopic, SystemStatus, Topic
from .errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from .hub import Hub
from .metrics import Metrics
from .store import IdempotencyRecord, JobFilter, Store

log = logging.getLogger("jobserver.engine")

ADHOC_TEMPLATE = "adhoc"
MAX_ADHOC_ARGS = 1024
MAX_ADHOC_ARG_BYTES = 65536
# Events that change what the system topic reports (queue depth, running count).
_SYSTEM_CHANGES = (ev.Queued, ev.Started, ev.Finished, ev.Bounce)


@dataclass(eq=False, slots=True)
class LiveJob:
    """A QUEUED or RUNNING job's in-memory state (owned by the engine)."""

    job: Job
    lock: trio.Lock = field(default_factory=trio.Lock)
    role: str = "user"
    cancel_scope: trio.CancelScope | None = None
    stop_reason: str | None = None  # "cancel" | "bounce"
    # The hub topics its events go to, made once (publishing runs per read of output).
    topic: JobTopic = field(init=False)
    owner_topic: OwnerTopic = field(init=False)

    def __post_init__(self) -> None:
        self.topic = JobTopic(self.job.id)
        self.owner_topic = OwnerTopic(self.job.owner)


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


class Engine:
    def __init__(self, config: Config, store: Store, hub: Hub, *,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.clock = clock
        self.metrics = metrics
        self._live: dict[JobId, LiveJob] = {}
        self._queue: dict[JobId, None] = {}  # FIFO of queued job ids
        self._queue_changed = trio.Event()
        self.accepting = True
        # component -> "up" | "down" | ..., from the health checks that are configured.
        self.health: dict[str, str] = {}

    # ---- recording --------------------------------------------------------

    async def record(self, live: LiveJob, make: Sequence[Callable[[int], ev.Event]], *,
                     key: IdempotencyRecord | None = None) -> Job:
        """Number, fold, persist (with `key`, in the same transaction) and publish
        events built by `make(seq)`."""
        async with live.lock:
            job = live.job
            seq = job.last_seq
            out: list[ev.Event] = []
            for build in make:
                seq += 1
                event = build(seq)
                job = apply(job, event)
                out.append(event)
            live.job = job
            await self.store.write(out, job, key=key)
            self._publish(live, out)
            if self.metrics is not None:
                self.metrics.job_events(job, out)
            return job

    def _publish(self, live: LiveJob, events: list[ev.Event]) -> None:
        """To the job's topic, then (output lines aside) its owner's, all jobs' and,
        when the counts moved, the system topic."""
        hub = self.hub
        hub.publish(live.topic, events)
        summary = [e for e in events if type(e) is not ev.Log]
        if summary:
            hub.publish_aggregate(live.owner_topic, summary)
            hub.publish_aggregate(ALL_JOBS, summary)
            if any(isinstance(e, _SYSTEM_CHANGES) for e in summary):
                self.publish_system_status()

    def system_status(self) -> SystemStatus:
        """The system topic's state now (its seq: the hub's position when read)."""
        running = sum(1 for live in self._live.values() if live.job.status is Status.RUNNING)
        return SystemStatus(seq=self.hub.position(), ts=self.now(), queued=len(self._queue),
                            running=running, health=dict(self.health))

    def publish_system_status(self) -> None:
        if self.hub.subscriber_count(SYSTEM):
            status = self.system_status()
            self.hub.publish_system(
                SystemStatus(seq=self.hub.next_position(), ts=status.ts, queued=status.queued,
                             running=status.running, health=status.health))

    def set_health(self, component: str, state: str) -> None:
        """A health check's verdict; the system topic hears of a change."""
        if self.health.get(component) != state:
            self.health[component] = state
            self.publish_system_status()

    async def record_logs(self, live: LiveJob, stream: str, ts: float, lines: list[str]) -> None:
        """The hot path: a batch of log lines, one event each, no reducer."""
        async with live.lock:
            job = live.job
            first = job.last_seq + 1
            jid = job.id
            out = ev.make_logs(jid, first, ts, stream, lines)
            job = dataclasses.replace(job, last_seq=first + len(lines) - 1)
            live.job = job
            await self.store.write(out, job)
            self.hub.publish(live.topic, out)

    def now(self) -> float:
        return self.clock()

    # ---- submitting -------------------------------------------------------

    def template_for(self, principal: Principal, name: str) -> Template:
        template = self.config.templates.get(name)
        if template is None or principal.role not in template.roles:
            raise ValidationFailed(f"unknown template {name!r}", field="template",
                                   code="unknown_template")
        return template

    async def submit(self, principal: Principal, sub: Submission) -> Job:
        if not self.accepting:
            raise Unavailable("the server is shutting down")
        kind = "adhoc"
        steps: tuple[StepState, ...] = ()
        if sub.command is not None:
            if not principal.is_admin:
                raise Forbidden("ad-hoc commands are for admins only", code="adhoc_forbidden")
            if not self.config.allow_adhoc:
                raise Forbidden("ad-hoc commands are switched off", code="adhoc_disabled")
            command = _check_argv(sub.command)
            template_name, params = ADHOC_TEMPLATE, {}
        else:
            if sub.template is None:
                raise ValidationFailed("give a template or a command", field="template")
            template = self.template_for(principal, sub.template)
            try:
                params = template.validate(sub.params)
            except ParamError as exc:
                raise ValidationFailed(exc.message, field=exc.field, code="invalid_param") from None
            command, template_name, kind = (), template.name, template.kind
            steps = tuple(StepState(name=s.name) for s in template.steps)
        job_id = new_job_id()
        job = Job(
            id=job_id,
            owner=principal.sub,
            template=template_name,
            kind=kind,
            params=params,
            command=command,
            created_at=self.now(),
            steps=steps,
            parent_id=sub.parent_id,
            retry_of=sub.retry_of,
            correlation_id=sub.correlation_id or str(uuid.uuid4()),
            attempt=sub.attempt,
            input=sub.input,
            resume_from=sub.resume_from,
        )
        live = LiveJob(job, role=principal.role)
        self._live[job_id] = live
        reason = "retry" if sub.retry_of else "submitted"
        key = None if sub.claim is None else IdempotencyRecord(
            owner=principal.sub, key=sub.claim.key, fingerprint=sub.claim.fingerprint,
            job_id=job_id, created_at=job.created_at,
            expires_at=job.created_at + self.config.idempotency_ttl)
        job = await self.record(live, [lambda s: ev.Queued(job_id=job_id, seq=s, ts=self.now(),
                                                            reason=reason)], key=key)
        self.enqueue(job_id)
        log.info("job %s queued: template=%s owner=%s correlation=%s", job_id, template_name,
                 principal.sub, job.correlation_id)
        return job

    def enqueue(self, job_id: JobId) -> None:
        self._queue[job_id] = None
        self._queue_changed.set()

    def take_queued(self) -> LiveJob | None:
        for job_id in self._queue:
            del self._queue[job_id]
            return self._live[job_id]
        return None

    def kick(self) -> None:
        """Wake the supervisor: a slot freed or the queue changed."""
        self._queue_changed.set()

    async def wait_queue_changed(self) -> None:
        self._queue_changed = trio.Event()
        await self._queue_changed.wait()

    def queued_ids(self) -> list[JobId]:
        return list(self._queue)

    async def recover(self) -> None:
        """Take over jobs a previous run left QUEUED or RUNNING."""
        for job in await self.store.unfinished_jobs():
            await self._recover(job)

    async def _recover(self, job: Job) -> None:
        live = LiveJob(job)
        self._live[job.id] = live
        jid = job.id
        if job.status is Status.QUEUED:
            self.enqueue(jid)
        else:
            template = self.config.templates.get(job.template)
            if template is not None and template.requeue_on_restart:
                await self.record(live, [lambda s: ev.Bounce(
                    job_id=jid, seq=s, ts=self.now(), reason="server restarted")])
                self.enqueue(jid)
            else:
                await self.record(live, [lambda s: ev.Finished(
                    job_id=jid, seq=s, ts=self.now(), status=Status.FAILED.value, outcome="lost",
                    message="server stopped while running")])
                self.forget(jid)

    # ---- looking up -------------------------------------------------------

    def live(self, job_id: JobId) -> LiveJob | None:
        return self._live.get(job_id)

    def published_seq(self, topic: Topic) -> int:
        """The position up to which `topic`'s events are published now. A job topic:
        its seq, 0 when unknown (the job is not live, or a write is in flight:
        `record` publishes after it); an aggregate topic: the hub's position."""
        if type(topic) is not JobTopic:
            return self.hub.position()
        live = self._live.get(topic.job_id)
        if live is None or live.lock.locked():
            return 0
        return live.job.last_seq

    async def events_after(self, job_id: JobId, after: int, *, limit: int) -> list[ev.Event]:
        """A job's stored events with seq > `after`, including everything recorded
        before this call (read-your-writes: it waits for the group commit)."""
        await self.store.wait_flushed()
        return await self.store.events_after(job_id, after, limit=limit)

    def forget(self, job_id: JobId) -> None:
        self._live.pop(job_id, None)

    async def get_any(self, job_id: JobId) -> Job | None:
        live = self._live.get(job_id)
        if live is not None:
            return live.job
        # A job that just finished left `_live` before the store committed it.
        await self.store.wait_flushed()
        return await self.store.get_job(job_id)

    async def get(self, principal: Principal, job_id: JobId) -> Job:
        job = await self.get_any(job_id)
        if job is None or not (principal.is_admin or job.owner == principal.sub):
            raise NotFound("job not found", code="job_not_found")
        return job

    async def list(self, principal: Principal, query: JobFilter) -> tuple[list[Job], str | None]:
        if not principal.is_admin:
            query = dataclasses.replace(query, owner=principal.sub)
        await self.store.wait_flushed()  # read your writes: a job just submitted is listed
        jobs, cursor = await self.store.list_jobs(query)
        # The store's copy of a live job can lag by a group commit: prefer ours.
        return [self._live[j.id].job if j.id in self._live else j for j in jobs], cursor

    # ---- cancelling and deleting -----------------------------------------

    async def cancel(self, principal: Principal, job_id: JobId) -> Job:
        job = await self.get(principal, job_id)
        live = self._live.get(job_id)
        if live is None or job.status.terminal:
            raise Conflict(f"job is already {job.status.value}", code="job_finished")
        await self.stop(live, "cancel")
        return live.job

    async def stop(self, live: LiveJob, reason: str) -> None:
        """Cancel a queued job at once, or ask a running one to stop."""
        if live.job.id in self._queue:
            del self._queue[live.job.id]
            await self.finish_cancelled(live)
            self.forget(live.job.id)
        elif live.cancel_scope is not None:
            live.stop_reason = live.stop_reason or reason
            live.cancel_scope.cancel()

    async def finish_cancelled(self, live: LiveJob) -> Job:
        now = self.now()
        return await self.record(live, [
            *closing_steps(live.job, Status.CANCELLED.value, now),
            lambda s: ev.Finished(
                job_id=live.job.id, seq=s, ts=now, status=Status.CANCELLED.value,
                outcome="cancelled", exit_code=-100, message="Job cancelled by user request.")])

    async def delete(self, principal: Principal, job_id: JobId) -> None:
        job = await self.get(principal, job_id)
        if not job.status.terminal or job_id in self._live:
            raise Conflict("only finished jobs can be deleted; cancel it first",
                           code="job_not_finished")
        await self.store.delete_job(job_id)
        gone: list[ev.Event] = [ev.Deleted(job_id=job_id, seq=job.last_seq + 1, ts=self.now())]
        self.hub.publish(JobTopic(job_id), gone)
        self.hub.publish_aggregate(OwnerTopic(job.owner), gone)
        self.hub.publish_aggregate(ALL_JOBS, gone)

def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if (not isinstance(argv, (list, tuple)) or not argv
            or not all(isinstance(a, str) for a in argv)):
        raise ValidationFailed("command must be a non-empty list of strings", field="command")
    if len(argv) > MAX_ADHOC_ARGS or sum(len(a) for a in argv) > MAX_ADHOC_ARG_BYTES:
        raise ValidationFailed("command is too long", field="command")
    if any("\x00" in a for a in argv):
        raise ValidationFailed("command must not contain NUL", field="command")
    return tuple(argv)


def closing_steps(job: Job, status: str, ts: float) -> list[Callable[[int], ev.Event]]:
    """Step events for the steps still running as `job` ends with `status`: each
    takes the job's fate as an event of its own, so that a client following the
    events sees the step end (the record alone would only show it afterwards)."""
    fate = "Succeeded" if status == Status.SUCCEEDED else "Failed"
    return [partial(_step_event, job.id, ts, step.name, fate)
            for step in job.steps if step.status == "Running"]


def _step_event(job_id: JobId, ts: float, name: str, status: str, seq: int) -> ev.Event:
    return ev.Step(job_id=job_id, seq=seq, ts=ts, name=name, status=status)
