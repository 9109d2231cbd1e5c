"""The mirror: the jobs other nodes run, published into this node's hub.

With several nodes on one PostgreSQL database, a job's events are recorded by
the node that runs it; a client of this node following that job gets them
from here as if the job ran here. The writing node notifies, at each commit,
`jobserver_events "<job_id> <last_seq>"` (a cursor, never the events); this
module, a consumer of the LISTEN service (store/postgres_listen.py), keeps the
highest seq notified per job, and its worker tasks read the committed events
after this node's position for the job and hand them to the engine
(`Engine.publish_mirrored`), which publishes them exactly as it does its own:
the job's topic, then (output lines aside) the owner's, all jobs' and the
system counts. So the dialects and the data plane need no change: a mirrored
job is live (`Engine.live`) at the position this node's hub has published.

Rules:
- A job's events reach the hub in seq order, contiguously from the position
  the engine reports for it (`published_seq`), while its topic has
  subscribers here. While it has none, only the events other than output
  lines are read (`events_but_lines_after`: the aggregate topics and the
  record need no more) and the position jumps to the notified seq. A
  follower arriving during such a read makes it read again, lines included.
- One worker at a time per job (`_busy`); `WORKERS` of them for all jobs, so
  one job's long backlog delays no other. Reads are pages of `PAGE` events.
- Notifications are coalesced per job (the highest seq): memory is O(jobs
  notified), nothing queues per event. The callbacks never block or raise.
- This node's own notifications are ignored (`Engine.ran_here`), and so are
  deletions it announced itself (`Engine.deleted_here`).
- A read that meets a lost database is not an error of the node's (the store
  waits `database_lost_after` for it): the worker logs it, waits
  `RETRY_DELAY` and reads everything again as after a reconnection.
- After the listener (re)connects, notifications may have been lost: every
  mirrored job is read again from its position, and the store's unfinished
  jobs that are not ours are mirrored (a job deleted meanwhile is announced).
- `jobserver_deleted "<id> <id> ..."` ends the streams of a mirrored job, or
  of one that finished lately (mirrored, or run here), with its `deleted`
  event (`announce_deleted`); older ones no client here follows any more
  (their job topics ended at their end), and the store no longer knows
  their owners.

Without PostgreSQL there is no mirror at all: the single-node path is as it was.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass

import trio

from .core import events as ev
from .core.ids import JobId
from .core.job import Job, apply
from .core.states import InvalidTransition
from .engine import Engine
from .store import DatabaseUnavailable, Expired
from .store.postgres_blocking import DELETED_CHANNEL, EVENTS_CHANNEL

log = logging.getLogger("jobserver.mirror")

CHANNELS = (EVENTS_CHANNEL, DELETED_CHANNEL)
PAGE = 1000  # events per store read (like a catch-up page: bounded memory per worker)
WORKERS = 4  # jobs read at once
# After a read met a lost database, the workers wait this long and read again.
RETRY_DELAY = 0.5
# Mirrored jobs that finished lately, remembered for their `deleted` event.
FINISHED_KEPT = 8192


@dataclass(frozen=True, slots=True)
class MirrorStatistics:
    mirrored: int  # jobs of other nodes live here now
    notifications: int
    reads: int
    events: int  # published into the hub, since start


class Mirror:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.mirroring = True
        self._targets: dict[JobId, int] = {}  # the highest seq notified; 0: ask the store
        self._dirty: dict[JobId, None] = {}  # to read, oldest first
        self._busy: set[JobId] = set()
        self._released = trio.Event()  # set (and replaced) when a worker is done with a job
        self._changed = trio.Event()
        self._resync = False
        self._finished: OrderedDict[JobId, Expired] = OrderedDict()
        self._notifications = 0
        self._reads = 0
        self._events = 0

    # ---- the listener's consumer (trio thread, never blocks or raises) ----

    def notify(self, channel: str, payload: str) -> None:
        self._notifications += 1
        if channel == EVENTS_CHANNEL:
            job, _, seq = payload.partition(" ")
            if not seq.isdigit():
                log.warning("malformed %s notification ignored", channel)
                return
            job_id = JobId(job)
            if not self.engine.ran_here(job_id):
                self._targets[job_id] = max(self._targets.get(job_id, 0), int(seq))
                self._mark(job_id)
        elif channel == DELETED_CHANNEL:
            for job in payload.split():
                self._deleted(JobId(job))

    def connected(self) -> None:
        self._resync = True
        self._wake()

    def _mark(self, job_id: JobId) -> None:
        self._dirty[job_id] = None
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _deleted(self, job_id: JobId) -> None:
        engine = self.engine
        self._targets.pop(job_id, None)
        self._dirty.pop(job_id, None)
        if engine.deleted_here(job_id):
            return
        live = engine.remote(job_id)
        if live is not None:
            gone = Expired(job_id=job_id, owner=live.job.owner,
                           last_seq=live.published.last_seq)
            engine.unmirror(job_id)
        else:
            found = self._finished.pop(job_id, None) or engine.finished_here(job_id)
            if found is None:
                return  # not a job this node has shown anyone lately
            gone = found
        engine.announce_deleted([gone])

    # ---- the workers -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._work)
            task_status.started()

    async def _work(self) -> None:
        while True:
            try:
                await self._work_until_lost()
            except DatabaseUnavailable as exc:
                log.warning("mirror: reading failed (%s); again in %g s", exc, RETRY_DELAY)
                self._resync = True
                await trio.sleep(RETRY_DELAY)

    async def _work_until_lost(self) -> None:
        """A worker's loop, until a read meets a lost database."""
        while True:
            if self._resync:
                self._resync = False
                await self._resync_all()
            job_id = self._take()
            if job_id is None:
                await self._changed.wait()
                continue
            try:
                await self._sync(job_id)
            finally:
                self._busy.discard(job_id)
                self._released.set()
                self._released = trio.Event()
                if job_id in self._dirty:
                    self._wake()

    def _take(self) -> JobId | None:
        for job_id in self._dirty:
            if job_id not in self._busy:
                del self._dirty[job_id]
                self._busy.add(job_id)
                return job_id
        return None

    async def _resync_all(self) -> None:
        """Read again what may have been missed: every mirrored job from its
        position (asking the store how far it is), and the unfinished jobs of
        other nodes not mirrored yet."""
        engine = self.engine
        for job_id in engine.mirrored_ids():
            self._targets[job_id] = 0
            self._mark(job_id)
        for job in await engine.store.unfinished_jobs():
            if not engine.ran_here(job.id) and engine.remote(job.id) is None:
                self._targets.setdefault(job.id, 0)
                self._mark(job.id)

    async def _sync(self, job_id: JobId) -> None:
        """Publish the job's committed events after this node's position, up to
        at least the seq notified."""
        engine = self.engine
        store = engine.store
        if engine.ran_here(job_id):
            engine.unmirror(job_id)  # ours now (claimed here)
            return
        target = self._targets.pop(job_id, 0)
        live = engine.remote(job_id)
        if live is None or target == 0:
            self._reads += 1
            record = await store.get_job(job_id)
            if engine.ran_here(job_id) or engine.remote(job_id) is not live:
                return
            if record is None:  # deleted while we were not listening
                if live is not None:
                    self._deleted(job_id)
                return
            target = max(target, record.last_seq)
            if live is None:
                # Its story from seq 1: the record as it is now, at position 0.
                live = engine.mirror_job(record)
        pos = live.published.last_seq
        fold_after = live.job.last_seq if pos == 0 else 0  # the record has what precedes
        while pos < target:
            topic = live.topic
            full = engine.hub.subscriber_count(topic) > 0
            read = store.events_after if full else store.events_but_lines_after
            self._reads += 1
            page = await read(job_id, pos, limit=PAGE)
            if engine.remote(job_id) is not live or engine.ran_here(job_id):
                return  # deleted, or taken over here, meanwhile
            if not full and engine.hub.subscriber_count(topic):
                continue  # a follower came: read its lines too
            end = page[-1].seq if len(page) == PAGE else \
                max(target, page[-1].seq if page else pos)
            job = _fold(live.published, page, fold_after, end)
            self._events += len(page)
            engine.publish_mirrored(live, page, job)
            pos = end
            if engine.remote(job_id) is not live:  # it finished
                self._remember(job)
                return

    async def settle(self, job_id: JobId, upto: int) -> None:
        """Before this node takes on a job another node ran (it claimed or rescued
        it; `upto` its last seq in the store): publish here what is not yet of its
        events up to `upto`, then stop mirroring it, so that its subscribers here
        miss nothing when this node's own events follow. Call it just before the
        job enters the engine's `_live`, with no await in between (a notification
        meanwhile would start mirroring it again)."""
        while job_id in self._busy:  # a worker reads it now: let it finish
            await self._released.wait()
        self._busy.add(job_id)
        try:
            self._dirty.pop(job_id, None)
            self._targets[job_id] = max(self._targets.get(job_id, 0), upto)
            await self._sync(job_id)
        finally:
            self._busy.discard(job_id)
        self.engine.unmirror(job_id)

    def _remember(self, job: Job) -> None:
        self._finished[job.id] = Expired(job_id=job.id, owner=job.owner, last_seq=job.last_seq)
        if len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def statistics(self) -> MirrorStatistics:
        return MirrorStatistics(mirrored=len(self.engine.mirrored_ids()),
                                notifications=self._notifications, reads=self._reads,
                                events=self._events)


def _fold(job: Job, events: list[ev.Event], after: int, end: int) -> Job:
    """The record after `events` (those up to `after` are in it already), at `end`."""
    for event in events:
        if event.seq > after and type(event) is not ev.Log:
            try:
                job = apply(job, event)
            except InvalidTransition:
                log.warning("job %s: event %d does not apply to its record", job.id, event.seq)
    return dataclasses.replace(job, last_seq=max(end, job.last_seq))

