"""The engine: jobs' front office. Submit, cancel, delete, look up, follow.

Rules: every change to a job is an event recorded through `record`, which
numbers it (seq), folds it into the job record and queues both for the store,
under the job's own lock; the hub gets the events once the store has committed
them (in commit order, which is seq order), so the store and every subscriber
see one sequence, and no client sees a seq that a crash could take back
(DESIGN.md, "What a seq promises"). What clients are shown of a live job is
its record as of its last committed event (`LiveJob.published`). Jobs that
are QUEUED or RUNNING live in memory (`_live`); finished ones are read from
the store. With several nodes on one database, the jobs another node runs are
mirrored (`_remote`, fed by mirror.py from that node's commits through
`publish_mirrored`): the lookups (`live`, `published_seq`, `published_jobs`,
`get_any`, `list`) show them as running, at the position this node's hub has
published, exactly like local ones. Access is checked here: a user sees only their own jobs, and
others' look absent. A
submit's Idempotency-Key (`Submission.claim`) is written with the job's first
event, in one transaction; the server's metrics get a batch's events as it is
published (`record_logs`, the output hot path, hands them none).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from . import groups
from .auth import Principal
from .config import Config
from .core import events as ev
from .core.ids import JobId, UserId, new_job_id
from .core.job import Job, StepState, apply
from .core.logcap import Dropped
from .core.states import Status
from .core.templates import ParamError, Template
from .core.topics import ALL_JOBS, SYSTEM, JobTopic, OwnerTopic, SystemStatus, Topic
from .errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from .hub import Hub
from .livejob import (
    LiveJob,
    Submission,
    check_argv,
    closing_steps,
    dropped_counts,
    log_marker,
    truncated,
)
from .metrics import Metrics
from .queueing import Claims, LocalQueue
from .store import Expired, IdempotencyRecord, JobFilter, Store

log = logging.getLogger("jobserver.engine")

ADHOC_TEMPLATE = "adhoc"
# Events that change what the system topic reports (queue depth, running count).
_SYSTEM_CHANGES = (ev.Queued, ev.Started, ev.Finished, ev.Bounce)
# How many job ids the engine remembers as done here / deleted here, so that the
# mirror ignores this node's own notifications arriving after the fact (they
# come within milliseconds of the commit; this is thousands of jobs of margin).
_RECENT_IDS = 8192


class Engine:
    def __init__(self, config: Config, store: Store, hub: Hub, *,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.clock = clock
        self.metrics = metrics
        self._live: dict[JobId, LiveJob] = {}
        # Jobs other nodes run, as this node's hub has published them (mirror.py).
        self._remote: dict[JobId, LiveJob] = {}
        # Jobs that left `_live` lately (finished here): what their `deleted` needs.
        self._done_here: OrderedDict[JobId, Expired | None] = OrderedDict()
        self._deleted_here: OrderedDict[JobId, None] = OrderedDict()  # announced lately
        self.mirroring = False  # a mirror (mirror.py) follows the other nodes' jobs
        self._queue = LocalQueue()  # the QUEUED jobs this node holds (queueing.py)
        # Several nodes: the database's queue; None: the local queue is the queue.
        self.claims: Claims | None = None
        self.node_id: str | None = None  # this node's, on its `started` events (cluster.py)
        self.accepting = True
        self._counts = {Status.QUEUED: 0, Status.RUNNING: 0}  # see system_status
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

            def publish() -> None:  # once committed
                self._publish(live, job, out)
                if self.metrics is not None:
                    self.metrics.job_events(job, out)

            await self.store.write(out, job, on_commit=publish, key=key)
            return job

    def _publish(self, live: LiveJob, job: Job, events: list[ev.Event]) -> None:
        """Once committed: to the job's topic, then (output lines aside) its
        owner's, all jobs' and, when the counts moved, the system topic."""
        hub = self.hub
        live.published = job
        self._count(live, job.status)
        if live.forgotten and job.last_seq >= live.job.last_seq:
            self._leave(live)
        hub.publish(live.topic, events)
        summary = [e for e in events if type(e) is not ev.Log]
        if summary:
            hub.publish_aggregate(live.owner_topic, summary)
            hub.publish_aggregate(ALL_JOBS, summary)
            if any(isinstance(e, _SYSTEM_CHANGES) for e in summary):
                self.publish_system_status()

    def _count(self, live: LiveJob, status: Status) -> None:
        """Move `live` between the system topic's counts, as its published status
        says (a job that ended, even one already forgotten, leaves them)."""
        new = status if status in (Status.QUEUED, Status.RUNNING) else None
        if live.counted is not new:
            if live.counted is not None:
                self._counts[live.counted] -= 1
            if new is not None:
                self._counts[new] += 1
            live.counted = new

    def system_status(self) -> SystemStatus:
        """The system topic's state now (its seq: the hub's position when read),
        counted as published (committed): a job's Queued event counts it as queued
        in the status that event publishes, its Started as running."""
        return SystemStatus(seq=self.hub.position(), ts=self.now(),
                            queued=self._counts[Status.QUEUED],
                            running=self._counts[Status.RUNNING], health=dict(self.health))

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
            cap = live.cap
            cut = cap.add(first, lines) if cap is not None else None
            if cap is not None and cut is not None:
                # The record carries the counts (for recovery), written before the cut.
                job = dataclasses.replace(job, log_dropped=dropped_counts(cap))
            live.job = job
            await self.store.write(out, job, on_commit=partial(self._publish_logs, live, job, out))
            if cut is not None:
                await self.store.trim_logs(jid, *cut)

    def _publish_logs(self, live: LiveJob, job: Job, out: list[ev.Log]) -> None:
        live.published = job
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
            command = check_argv(sub.command)
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
        if self.claims is None:
            self.enqueue(job_id)
        else:  # the database is the queue: whichever node claims it runs it
            self.hand_over(job_id)
        # DEBUG: one INFO line per submit cost 2-3% of a short job's server time
        # (bench --only spawn --profile); the job's events record all of it.
        log.debug("job %s queued: template=%s owner=%s correlation=%s", job_id, template_name,
                  principal.sub, job.correlation_id)
        await self.store.wait_flushed()  # a job acknowledged is a job that survives a crash
        return job

    def enqueue(self, job_id: JobId) -> None:
        self._queue.put(job_id)

    def take_queued(self) -> LiveJob | None:
        job_id = self._queue.take()
        return None if job_id is None else self._live[job_id]

    def kick(self) -> None:
        """Wake the supervisor (and the claims): a slot freed or the queue changed."""
        self._queue.kick()
        if self.claims is not None:
            self.claims.wake()

    async def wait_queue_changed(self) -> None:
        await self._queue.wait_changed()

    def queued_ids(self) -> list[JobId]:
        return self._queue.ids()

    def adopt(self, job: Job) -> LiveJob:
        """A job this node claimed from the database: live here from now on."""
        self.unmirror(job.id)
        live = self._live.get(job.id)
        if live is None or live.job.last_seq != job.last_seq:
            live = LiveJob(job)
            self._live[job.id] = live
        live.forgotten = False
        self._count(live, job.status)
        return live

    async def recover(self) -> None:
        """Take over jobs a previous run of this node left QUEUED or RUNNING."""
        if self.claims is None:
            jobs = await self.store.unfinished_jobs()
        else:
            jobs = await self.claims.own_unfinished()
        await self.take_over(jobs, lost="server stopped while running",
                             bounced="server restarted")
        # A graceful stop leaves the jobs it bounced QUEUED with a start behind them.
        bounced = sum(job.status is Status.QUEUED and job.started_at is not None for job in jobs)
        if bounced:
            log.info("re-queued %d job%s bounced at the last stop", bounced,
                     "" if bounced == 1 else "s")

    async def take_over(self, jobs: Sequence[Job], *, lost: str, bounced: str) -> None:
        """End jobs left QUEUED or RUNNING by a run that is gone (this node's
        previous one, or a dead node's). The processes of those left RUNNING are
        ended first, all at once, each within kill_grace + groups.KILL_WAIT (only
        the provable ones: never another machine's), and each job's events say
        what was done. RUNNING jobs fail with `lost` as their message, or (with
        `requeue_on_restart`) bounce with `bounced` as the reason."""
        reports: dict[JobId, str] = {}
        async with trio.open_nursery() as nursery:
            for job in jobs:
                if job.status is Status.RUNNING:
                    nursery.start_soon(self._end_left_over, job, reports)
        requeued = [job.id for job in jobs
                    if await self._recover(job, reports.get(job.id), lost=lost, bounced=bounced)]
        if self.claims is None:
            for job_id in requeued:
                self.enqueue(job_id)
        elif requeued:  # the database is the queue: back to it, for any node's free slot
            await self.store.wait_flushed()
            await self.claims.release(requeued)
            for job_id in requeued:
                self.hand_over(job_id)

    async def _end_left_over(self, job: Job, reports: dict[JobId, str]) -> None:
        if job.process is None:
            if job.pid is not None:
                reports[job.id] = (f"pid {job.pid} was not signalled: nothing recorded "
                                   "proves which process it is now")
            return
        report = await groups.end_orphans(groups.Identity.from_dict(dict(job.process)),
                                          job.id, grace=self.config.kill_grace)
        log.warning("job %s: %s", job.id, report)
        reports[job.id] = report

    async def _recover(self, job: Job, report: str | None, *, lost: str, bounced: str) -> bool:
        """True when the job is QUEUED again."""
        self.unmirror(job.id)  # a dead node's job: ours from now on
        live = LiveJob(job)
        self._live[job.id] = live
        jid = job.id
        now = self.now()
        restart = partial(ev.Queued, job_id=jid, ts=now, reason="restart")
        if job.status is Status.QUEUED:
            self._count(live, Status.QUEUED)
            if job.started_at is not None:  # bounced as the server stopped: a new attempt
                await self.record(live, [lambda s: restart(seq=s)])
            return True
        notes: list[Callable[[int], ev.Event]] = []
        if report is not None:
            notes.append(lambda s: ev.Warning(job_id=jid, seq=s, ts=now, message=report))
        if job.log_dropped:
            # The run's log passed its cap and the server died before its marker:
            # the record's counts are it (the last cut again, should it not have
            # been committed: removing a removed range removes nothing).
            dropped = Dropped(**job.log_dropped)
            await self.store.trim_logs(jid, dropped.first_seq, dropped.last_seq)
            notes.append(partial(truncated, jid, now, dropped))
        template = self.config.templates.get(job.template)
        if template is not None and template.requeue_on_restart:
            await self.record(live, [*notes, lambda s: ev.Bounce(
                job_id=jid, seq=s, ts=now, reason=bounced),
                lambda s: restart(seq=s)])
            return True
        await self.record(live, [*notes, *closing_steps(job, Status.FAILED.value, now),
                                 lambda s: ev.Finished(
            job_id=jid, seq=s, ts=now, status=Status.FAILED.value, outcome="lost",
            message=lost)])
        self.forget(jid)
        return False

    # ---- looking up -------------------------------------------------------

    def local(self, job_id: JobId) -> LiveJob | None:
        """The job's live state if it is QUEUED or RUNNING on this node."""
        return self._live.get(job_id)

    def live(self, job_id: JobId) -> LiveJob | None:
        """The job's live state if it is QUEUED or RUNNING, here or (mirrored) on
        another node."""
        return self._live.get(job_id) or self._remote.get(job_id)

    def published_seq(self, topic: Topic) -> int:
        """The position up to which `topic`'s events are published now. A job topic:
        the last seq handed to the hub (a write in flight is not counted), 0 when
        the job is not live; an aggregate topic: the hub's position."""
        if type(topic) is not JobTopic:
            return self.hub.position()
        live = self.live(topic.job_id)
        return 0 if live is None else live.published.last_seq

    def published_jobs(self, topic: Topic) -> list[Job]:
        """The records, as published, of the live jobs whose events `topic` carries."""
        every = [*self._live.values(), *self._remote.values()]
        if type(topic) is OwnerTopic:
            return [live.published for live in every if live.job.owner == topic.owner]
        if topic is ALL_JOBS:
            return [live.published for live in every]
        return []

    # ---- jobs of other nodes (mirror.py) ---------------------------------

    def ran_here(self, job_id: JobId) -> bool:
        """The job is live here, or was lately (its last notifications are ours)."""
        return job_id in self._live or job_id in self._done_here

    def remote(self, job_id: JobId) -> LiveJob | None:
        return self._remote.get(job_id)

    def mirrored_ids(self) -> list[JobId]:
        return list(self._remote)

    def mirror_job(self, job: Job) -> LiveJob:
        """Start mirroring `job`, another node's, from its record as read now: none
        of its events is published here yet (position 0)."""
        live = LiveJob(job)
        live.published = dataclasses.replace(job, last_seq=0)
        self._remote[job.id] = live
        self._count(live, job.status)
        return live

    def publish_mirrored(self, live: LiveJob, events: Sequence[ev.Event], job: Job) -> None:
        """Another node's committed events, published here as `_publish` does for
        ours (with its output lines, or only the rest when nobody here follows the
        job), `job` the record after them. `live.job` is the newest record known:
        a finished job stops being mirrored once published up to it."""
        if job.last_seq >= live.job.last_seq:
            live.job = job
        live.forgotten = live.job.status.terminal
        done = live.published.last_seq  # anything up to it was published already
        self._publish(live, job, [e for e in events if e.seq > done])

    def hand_over(self, job_id: JobId) -> None:
        """A job of ours another node takes on (it claimed it): mirrored from now,
        from the position published here."""
        live = self._live.get(job_id)
        if live is not None:
            self._leave(live)

    def unmirror(self, job_id: JobId) -> None:
        """Stop mirroring a job (it is ours now, or gone); it leaves the counts."""
        live = self._remote.pop(job_id, None)
        if live is not None:
            self._count(live, Status.CANCELLED)

    def finished_here(self, job_id: JobId) -> Expired | None:
        """A job that finished here lately, as its `deleted` event needs it."""
        return self._done_here.get(job_id)

    def deleted_here(self, job_id: JobId) -> bool:
        """This node announced the job's deletion lately (its own notification)."""
        return job_id in self._deleted_here

    def _leave(self, live: LiveJob) -> None:
        """`live` is done here: a finished job leaves (remembered a while, so that
        its own late notifications are ignored); an unfinished one, with a mirror,
        is another node's from now on (the database's queue gives it to whichever
        node claims it) and is mirrored from the position published here."""
        job_id = live.job.id
        if self._live.get(job_id) is live:
            del self._live[job_id]
            if live.published.status.terminal or not self.mirroring:
                job = live.published
                _remember(self._done_here, job_id,
                          Expired(job_id=job_id, owner=job.owner, last_seq=job.last_seq))
            else:
                live.forgotten = False
                live.cancel_scope = None
                self._remote[job_id] = live
        elif self._remote.get(job_id) is live:
            del self._remote[job_id]

    async def events_after(self, job_id: JobId, after: int, *, limit: int) -> list[ev.Event]:
        """A job's stored events with seq > `after`, including everything recorded
        before this call (read-your-writes: it waits for the group commit)."""
        await self.store.wait_flushed()
        return await self.store.events_after(job_id, after, limit=limit)

    def forget(self, job_id: JobId) -> None:
        """The job is done here. It leaves once its last events are published (they
        commit after `record` returns): until then a subscriber joining "from now"
        still finds it live and gets its end."""
        live = self._live.get(job_id)
        if live is None:
            return
        if live.published.last_seq >= live.job.last_seq:
            self._leave(live)
        else:
            live.forgotten = True

    async def get_any(self, job_id: JobId) -> Job | None:
        live = self.live(job_id)
        if live is not None:
            return live.published
        # A job that just finished left `_live` before the store committed it.
        await self.store.wait_flushed()
        return await self.store.get_job(job_id)

    async def get(self, principal: Principal, job_id: JobId) -> Job:
        job = await self.get_any(job_id)
        if job is None or not may_see(principal, job):
            raise NotFound("job not found", code="job_not_found")
        return job

    async def list(self, principal: Principal, query: JobFilter) -> tuple[list[Job], str | None]:
        if not principal.is_admin:
            query = dataclasses.replace(query, owner=principal.sub)
        await self.store.wait_flushed()  # read your writes: a job just submitted is listed
        jobs, cursor = await self.store.list_jobs(query)
        # The store's copy of a live job can lag by a group commit (or, another
        # node's, run ahead of what this node published): prefer ours.
        return [live.published if (live := self.live(j.id)) is not None else j
                for j in jobs], cursor

    # ---- cancelling and deleting -----------------------------------------

    async def cancel(self, principal: Principal, job_id: JobId) -> Job:
        job = await self.get(principal, job_id)
        live = self._live.get(job_id)
        if live is None and self.claims is not None and not job.status.terminal:
            ended = await self.claims.cancel_elsewhere(job)
            if ended is not None:
                return ended
            live = self._live.get(job_id)
        if live is None or job.status.terminal:
            raise Conflict(f"job is already {job.status.value}", code="job_finished")
        await self.stop(live, "cancel")
        await self.store.wait_flushed()
        return live.published

    async def stop(self, live: LiveJob, reason: str) -> None:
        """Cancel a queued job at once, or ask a running one to stop."""
        if self._queue.remove(live.job.id):
            await self.finish_cancelled(live)
            self.forget(live.job.id)
        elif live.cancel_scope is not None:
            live.stop_reason = live.stop_reason or reason
            live.cancel_scope.cancel()

    async def finish_cancelled(self, live: LiveJob) -> Job:
        now = self.now()
        return await self.record(live, [
            *log_marker(live, now),
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
        self.announce_deleted([Expired(job_id=job_id, owner=job.owner, last_seq=job.last_seq)])
        await self.remove_outputs([job_id])

    def announce_deleted(self, jobs: Sequence[Expired]) -> None:
        """Tell the streams of jobs the store no longer has: a `deleted` event each
        (its seq after the job's last), which ends them in each dialect's way."""
        now = self.now()
        by_owner: dict[UserId, list[ev.Event]] = {}
        everyone: list[ev.Event] = []
        for job in jobs:
            _remember(self._deleted_here, job.job_id)
            gone: list[ev.Event] = [ev.Deleted(job_id=job.job_id, seq=job.last_seq + 1, ts=now)]
            self.hub.publish(JobTopic(job.job_id), gone)
            by_owner.setdefault(job.owner, []).extend(gone)
            everyone.extend(gone)
        for owner, events in by_owner.items():
            self.hub.publish_aggregate(OwnerTopic(owner), events)
        if everyone:
            self.hub.publish_aggregate(ALL_JOBS, everyone)

    async def remove_outputs(self, job_ids: Sequence[JobId]) -> None:
        """Remove deleted jobs' output directories (in a worker thread)."""
        root = self.config.data_dir / "output"

        def remove() -> None:
            for job_id in job_ids:
                shutil.rmtree(root / job_id, ignore_errors=True)

        await trio.to_thread.run_sync(remove)

    # ---- pinning ---------------------------------------------------------

    async def pin(self, principal: Principal, job_id: JobId, pinned: bool) -> Job:
        """Keep a job from retention (or let it go again); the job as it is then."""
        job = await self.get(principal, job_id)
        await self.store.set_pinned(job_id, pinned)
        live = self._live.get(job_id)
        if live is not None:
            async with live.lock:  # `record` writes live.job back under it
                live.job = dataclasses.replace(live.job, pinned=pinned)
                live.published = dataclasses.replace(live.published, pinned=pinned)
                return live.published
        return dataclasses.replace(job, pinned=pinned)


def _remember(ids: OrderedDict[JobId, Any], job_id: JobId, what: Any = None) -> None:
    ids[job_id] = what
    if len(ids) > _RECENT_IDS:
        ids.popitem(last=False)


def may_see(principal: Principal, job: Job) -> bool:
    """Admins see every job, users their own; a progress token's principal only its job."""
    if principal.job is not None:
        return principal.job == job.id
    return principal.is_admin or job.owner == principal.sub
