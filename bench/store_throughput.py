"""How fast each store backend commits a chatty job's log lines, and reads them back.

    .venv/bin/python bench/store_throughput.py [--events N] [--batch N] [--line-bytes N] [--runs N]
        [--backends sqlite,postgres] [--database-url postgresql://...]

Writes N Log events of one job in batches (as the engine's `record_logs` does:
one `write(events, job)` per batch, one timestamp and stream per batch) into a
fresh database in a temporary directory, waits until all are committed, and
prints events/s committed; then pages through them with `events_after` as a
follower replaying history would. Repeats on a fresh database `--runs` times
and prints the median, per backend, in one run: SQLite in a temporary
directory; PostgreSQL in a fresh database per run, on a throwaway server of
the bench's own (tests/pg.py: initdb + pg_ctl, loopback, fsync off) or, with
`--database-url`, on that server (the bench creates and drops databases
named jobserver_bench_N there). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, new_job_id
from jobserver.core.job import Job
from jobserver.core.states import Status
from jobserver.store.committer import QueuedStore
from jobserver.store.postgres import PostgresStore
from jobserver.store.sqlite import SqliteStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from bench.postgres import database_size, postgres_databases

REPLAY_PAGE = 2000
BACKENDS = ("sqlite", "postgres")


async def bench(store: QueuedStore[Any], size: Callable[[], int], total: int, batch: int,
                line_bytes: int) -> float:
    job_id: JobId = new_job_id()
    job = Job(id=job_id, owner=UserId("bench"), template="chatty", status=Status.RUNNING,
              created_at=time.time())
    pad = "x" * max(0, line_bytes - 12)
    # Build the batches first: the figure is the store's, not the producer's.
    batches: list[tuple[list[ev.Event], Job]] = []
    seq = 0
    for first in range(0, total, batch):
        n = min(batch, total - first)
        ts = time.time()
        stream = "stdout" if (first // batch) % 4 else "stderr"
        events: list[ev.Event] = [
            ev.Log(job_id=job_id, seq=seq + 1 + i, ts=ts, stream=stream,
                   line=f"{seq + 1 + i:010d} {pad}")
            for i in range(n)
        ]
        seq += n
        batches.append((events, dataclasses.replace(job, last_seq=seq)))

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        t0 = time.perf_counter()
        for events, j in batches:
            await store.write(events, j)
        queued = time.perf_counter() - t0
        await store.wait_flushed()
        write_elapsed = elapsed = time.perf_counter() - t0
        stats = store.statistics()
        print(f"write:  {total:,} Log events in batches of {batch:,}, lines of {line_bytes} B")
        print(f"        {elapsed:.3f} s  ->  {total / elapsed:,.0f} events/s committed"
              f"  ({stats.commits} commits; all queued after {queued:.3f} s)")

        t0 = time.perf_counter()
        after = 0
        read = 0
        while True:
            page = await store.events_after(job_id, after, limit=REPLAY_PAGE)
            if not page:
                break
            read += len(page)
            after = page[-1].seq
        elapsed = time.perf_counter() - t0
        print(f"replay: {read:,} events in pages of {REPLAY_PAGE:,}"
              f"  {elapsed:.3f} s  ->  {read / elapsed:,.0f} events/s")
        nursery.cancel_scope.cancel()
    used = size()
    print(f"disk:   {used / 1e6:,.1f} MB ({used / total:.1f} B per event)")
    return total / write_elapsed


def sqlite_runs(args: argparse.Namespace) -> Iterator[float]:
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            path = Path(tmp) / "jobserver.db"

            def size(path: Path = path) -> int:
                return sum(p.stat().st_size for p in path.parent.iterdir())

            yield trio.run(bench, SqliteStore(path), size, args.events, args.batch,
                           args.line_bytes)


def postgres_runs(args: argparse.Namespace) -> Iterator[float]:
    with postgres_databases(args.database_url) as new_database:
        for _ in range(args.runs):
            url = new_database()
            yield trio.run(bench, PostgresStore(url), functools.partial(database_size, url),
                           args.events, args.batch, args.line_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--line-bytes", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the SQLite database")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated, of: " + ", ".join(BACKENDS))
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to use instead of a throwaway one")
    args = parser.parse_args()
    medians: dict[str, float] = {}
    for backend in args.backends.split(","):
        print(f"--- {backend}")
        runs = {"sqlite": sqlite_runs, "postgres": postgres_runs}[backend]
        medians[backend] = statistics.median(runs(args))
    for backend, rate in medians.items():
        print(f"{backend}: median of {args.runs}: {rate:,.0f} events/s committed")


if __name__ == "__main__":
    main()
