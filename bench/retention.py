"""Retention's worst stall: delete 100,000 finished jobs while a job writes.

    .venv/bin/python -m bench.retention [--jobs N] [--batch N]

Fills a fresh SQLite store (in a temporary directory) with N finished jobs of
six events each (queued, started, three log lines, finished), then runs the
housekeeping sweep that removes them all (`retention_days`, judged a year on)
while a live job writes a batch of 20 log lines every 2 ms through the engine
(`record_logs`) and a hub subscriber follows that job. Prints, before and
during the deletion: the commit latency (every 10 ms, how long what is queued
waits to be committed: `wait_flushed`) and the subscriber's worst gap between
two deliveries (2 ms when nothing stalls); and how long the deletion took.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from jobserver.config import Config
from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, new_job_id
from jobserver.core.job import Job
from jobserver.core.states import Status
from jobserver.core.topics import JobTopic
from jobserver.engine import Engine
from jobserver.housekeeping import BATCH, DAY, Housekeeping
from jobserver.hub import Hub
from jobserver.livejob import LiveJob
from jobserver.store import codec
from jobserver.store import sqlite_blocking as db
from jobserver.store.sqlite import SqliteStore

WRITE_EVERY = 0.002
PROBE_EVERY = 0.01
LINES_PER_WRITE = 20
FILL_GROUP = 5000  # jobs per transaction while filling


def fill(path: Path, jobs: int) -> None:
    conn = db.connect(path, writer=True)
    try:
        now = time.time()
        for start in range(0, jobs, FILL_GROUP):
            ops: list[codec.Op] = []
            for _ in range(min(FILL_GROUP, jobs - start)):
                jid = new_job_id()
                job = Job(id=jid, owner=UserId("bench"), template="t",
                          status=Status.SUCCEEDED, created_at=now, completed_at=now, last_seq=6)
                events: list[ev.Event] = [
                    ev.Queued(job_id=jid, seq=1, ts=now),
                    ev.Started(job_id=jid, seq=2, ts=now, pid=1, command="x"),
                    *ev.make_logs(jid, 3, now, "stdout", ["a line of output"] * 3),
                    ev.Finished(job_id=jid, seq=6, ts=now, status="SUCCEEDED",
                                outcome="succeeded", exit_code=0)]
                ops.append(codec.WriteOp(events=events, job=job))
            db.commit_group(conn, ops)
    finally:
        conn.close()


class Gaps:
    """A hub subscriber: the longest time between two deliveries."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.worst = 0.0

    def deliver(self, events: Sequence[Any]) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.worst = max(self.worst, now - self.last)
        self.last = now


async def writer(engine: Engine, live: LiveJob, stop: trio.Event) -> None:
    """The live job: a batch every WRITE_EVERY, published once queued (as always)."""
    lines = ["a live line of output, as a chatty job prints"] * LINES_PER_WRITE
    while not stop.is_set():
        await engine.record_logs(live, "stdout", time.time(), lines)
        await trio.sleep(WRITE_EVERY)


async def prober(engine: Engine, latencies: list[float], stop: trio.Event) -> None:
    """How long what was just queued waits to be committed (a read-your-writes wait)."""
    while not stop.is_set():
        began = time.perf_counter()
        await engine.store.wait_flushed()
        latencies.append(time.perf_counter() - began)
        await trio.sleep(PROBE_EVERY)


async def measure(path: Path, jobs: int, batch: int) -> dict[str, float]:
    store = SqliteStore(path)
    config = Config(data_dir=path.parent, retention_days=1)
    out: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        engine = Engine(config, store, Hub())
        job = Job(id=new_job_id(), owner=UserId("bench"), template="t", status=Status.RUNNING)
        live = LiveJob(job)
        await store.write([], job)
        gaps = Gaps()
        engine.hub.subscribe(JobTopic(JobId(job.id)), gaps)
        for phase in ("before", "during"):
            latencies: list[float] = []
            stop = trio.Event()
            gaps.last, gaps.worst = None, 0.0
            async with trio.open_nursery() as inner:
                inner.start_soon(writer, engine, live, stop)
                inner.start_soon(prober, engine, latencies, stop)
                began = time.perf_counter()
                if phase == "before":
                    await trio.sleep(2.0)
                else:
                    removed = await Housekeeping(engine, batch=batch).sweep(
                        now=time.time() + 365 * DAY)
                    out["removed"] = removed
                    out["seconds"] = time.perf_counter() - began
                stop.set()
            latencies.sort()
            out[f"{phase}_commit_max_ms"] = latencies[-1] * 1000
            out[f"{phase}_commit_p99_ms"] = latencies[int(len(latencies) * 0.99)] * 1000
            out[f"{phase}_commit_median_ms"] = statistics.median(latencies) * 1000
            out[f"{phase}_gap_max_ms"] = gaps.worst * 1000
        nursery.cancel_scope.cancel()
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.retention",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="jobs per delete transaction")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        path = Path(tmp) / "jobserver.db"
        began = time.perf_counter()
        fill(path, args.jobs)
        print(f"filled {args.jobs:,} finished jobs in {time.perf_counter() - began:.1f} s",
              flush=True)
        out = trio.run(measure, path, args.jobs, args.batch)
    print(f"removed {out['removed']:,.0f} jobs in {out['seconds']:.1f} s "
          f"({out['removed'] / out['seconds']:,.0f} jobs/s), batches of {args.batch}")
    for phase in ("before", "during"):
        print(f"  {phase:6} deletion: commit latency median {out[f'{phase}_commit_median_ms']:.1f}"
              f" ms, p99 {out[f'{phase}_commit_p99_ms']:.1f} ms, worst "
              f"{out[f'{phase}_commit_max_ms']:.1f} ms; subscriber's worst gap "
              f"{out[f'{phase}_gap_max_ms']:.1f} ms")
    return out


if __name__ == "__main__":
    main()
