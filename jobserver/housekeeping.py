"""Housekeeping: retention, the removal of finished jobs nobody keeps.

Rules:
- A finished job goes, with its events and its output directory, when it is
  older than `retention_days` (its template's, else the server's) or beyond
  the newest `retention_max_jobs` finished jobs (its template's count, and the
  server's over all jobs). A pinned job is never removed, nor counted. 0 (the
  default) switches a rule off.
- Removal is batched: at most `batch` jobs per store transaction, with a pause
  between batches, so the writer's other commits (the live jobs' output) wait
  for one small transaction at most; live streams never wait for it (they are
  published before commit). Each removed job's streams get a `deleted` event,
  as after `DELETE /api/v1/jobs/{id}` (`Engine.announce_deleted`).
- A job still in the engine's memory (it finished a moment ago) waits for the
  next sweep. `sweep(now=...)` takes the time to judge by, so tests need no clock.
"""

from __future__ import annotations

import logging
import time

import trio

from .engine import Engine
from .store import RetentionRule

log = logging.getLogger("jobserver.housekeeping")

DAY = 86_400.0
# Jobs removed per store transaction. Deleting 100,000 jobs of six events on a
# shared 2-core machine (`python -m bench.retention --batch N`), the worst wait
# for a commit was 85 ms at 100 (p99 46 ms, 4,400 jobs/s), 131 ms at 250 and
# 177 ms at 500 (p99 120 ms, 7,400 jobs/s): the small batch keeps the writer's
# other commits (live jobs' output, pins) waiting least.
BATCH = 100
# Between batches: the writer commits what queued meanwhile.
BATCH_PAUSE = 0.005


class Housekeeping:
    def __init__(self, engine: Engine, *, batch: int = BATCH,
                 pause: float = BATCH_PAUSE) -> None:
        self.engine = engine
        self.config = engine.config
        self.batch = batch
        self.pause = pause
        self.removed = 0  # jobs removed since start

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.config.retention_interval)
            await self.sweep()

    def rules(self, now: float) -> list[RetentionRule]:
        """What retention removes now, as store queries (none when it is off)."""
        templates = self.config.templates.values()
        own_days = [t for t in templates if t.retention_days]
        rules = [RetentionRule(template=t.name, before=now - t.retention_days * DAY)
                 for t in own_days if t.retention_days]
        if self.config.retention_days:
            rules.append(RetentionRule(exclude=tuple(t.name for t in own_days),
                                       before=now - self.config.retention_days * DAY))
        rules += [RetentionRule(template=t.name, keep=t.retention_max_jobs)
                  for t in templates if t.retention_max_jobs]
        if self.config.retention_max_jobs:
            rules.append(RetentionRule(keep=self.config.retention_max_jobs))
        return rules

    async def sweep(self, *, now: float | None = None) -> int:
        """Remove what retention removes at `now` (default: the engine's clock); how many."""
        when = self.engine.now() if now is None else now
        began = time.monotonic()
        removed = 0
        for rule in self.rules(when):
            removed += await self._apply(rule)
        if removed:
            self.removed += removed
            log.info("retention removed %d finished jobs in %.1f s", removed,
                     time.monotonic() - began)
        return removed

    async def _apply(self, rule: RetentionRule) -> int:
        engine, store = self.engine, self.engine.store
        removed = 0
        while True:
            await store.wait_flushed()  # judge by what is recorded
            found = await store.expired_jobs(rule, limit=self.batch)
            gone = [e for e in found if engine.live(e.job_id) is None]
            if gone:
                ids = [e.job_id for e in gone]
                await store.delete_jobs(ids)
                engine.announce_deleted(gone)
                await engine.remove_outputs(ids)
                removed += len(gone)
            if len(found) < self.batch or len(gone) < len(found):
                return removed
            await trio.sleep(self.pause)
