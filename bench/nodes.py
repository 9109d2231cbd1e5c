"""Spawn rate by backend, in one run: SQLite, PostgreSQL with one node, and two
nodes sharing one PostgreSQL database (half the jobs submitted to each, at once).

Each measure is `spawn_rate`'s (jobserver_benches.py): N `bench-true` jobs,
from the first submit to the last job's recorded `completed_at`, every job
SUCCEEDED; every node has the same slots. The PostgreSQL server is the test
suite's own kind (tests/pg.py: initdb into a temp dir, loopback only, fsync
off), started here and stopped at the end; without its binaries the
PostgreSQL rows are skipped, saying why.

    .venv/bin/python -m bench.nodes [--count 1000] [--slots 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from .jobserver_benches import completed_rate, submit_jobs
from .jobserver_target import JobserverServer


def _server(slots: int, url: str | None) -> JobserverServer:
    extra = "" if url is None else f'database_url = "{url}"\n'
    server = JobserverServer(slots=slots, extra_server=extra)
    server.start()
    return server


def one_node(count: int, slots: int, url: str | None) -> float:
    server = _server(slots, url)
    try:
        start = time.time()
        return completed_rate(server, submit_jobs(server, count), start)
    finally:
        server.stop()


def two_nodes(count: int, slots: int, url: str) -> float:
    servers = [_server(slots, url), _server(slots, url)]
    try:
        ids: list[list[str]] = [[], []]

        def submit(i: int) -> None:
            ids[i] = submit_jobs(servers[i], count // 2)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return completed_rate(servers[0], ids[0] + ids[1], start)
    finally:
        for server in servers:
            server.stop()


def run(count: int, slots: int, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    from tests.pg import PgServer, Unavailable

    out: dict[str, Any] = {}

    def measure(name: str, once: Callable[[], float]) -> None:
        rates = [once() for _ in range(runs)]
        out[name] = {"runs": rates, "median": statistics.median(rates)}
        say(f"  {name}: {statistics.median(rates):,.0f} jobs/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")

    say(f"spawn rate by backend, {count:,} jobs of `true`, {slots} slots a node")
    measure("sqlite, 1 node", lambda: one_node(count, slots, None))
    try:
        pg = PgServer()
        pg.start()
    except Unavailable as exc:
        say(f"  postgresql: skipped: {exc}")
        out["postgresql"] = {"skipped": str(exc)}
        return out
    try:
        measure("postgresql, 1 node", lambda: one_node(count, slots, pg.create_database()))
        measure("postgresql, 2 nodes", lambda: two_nodes(count, slots, pg.create_database()))
    finally:
        pg.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nodes")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    run(args.count, args.slots, args.runs, lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
