"""Cross-node delivery latency: a line printed by a job on node A, received by a
logs-dialect client on node B, next to a client of node A itself, same run.

    .venv/bin/python -m bench.cross_node [--lines N] [--rate R] [--rounds K]
                                         [--database-url URL]

On a throw-away PostgreSQL server (bench/postgres.py; or the server
`--database-url` names, in a database of the bench's own) starts two
jobserver processes on one database (each
its own data directory, node B given node A's signing key), submits to A a job
that waits for its gate file and then prints N lines, each the wall-clock time
it was printed, R lines a second; one WebSocket client follows the job on A
and one on B (`/api/v1/ws/jobs/{id}/logs`), both live before the gate opens.
Each received line's latency is the receive time minus the time in the line
(one machine, one clock). Prints p50 / p99 / max for both; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .jobserver_target import JobserverServer
from .postgres import postgres_databases
from .procs import http

# Waits for its gate, then prints `n` lines of time.time() at `rate` a second.
TIMED = (
    "import os, sys, time\n"
    "gate, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])\n"
    "while not os.path.exists(gate): time.sleep(0.001)\n"
    "start = time.monotonic()\n"
    "for i in range(n):\n"
    "    pause = start + i / rate - time.monotonic()\n"
    "    if pause > 0: time.sleep(pause)\n"
    "    print('%.6f' % time.time(), flush=True)\n"
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def follow(url: str, got: list[float], ready: trio.Event) -> None:
    """The job's log from now on: each line's latency in ms, until its end."""
    async with open_websocket_url(url) as ws:
        ready.set()
        try:
            while True:
                message = json.loads(await ws.get_message())
                now = time.time()
                if message["type"] == "log":
                    got.append((now - float(message["payload"]["message"])) * 1000)
                elif message["type"] == "status" and \
                        message["payload"]["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    return
        except ConnectionClosed:
            return


def start_job(a: JobserverServer, b: JobserverServer, lines: int, rate: float,
              gate: Path) -> str:
    """The timed job, submitted to A, running (as both nodes say) at its gate."""
    status, body = http("POST", f"{a.url}/api/v1/jobs", token=a.token, body={
        "command": [sys.executable, "-c", TIMED, str(gate), str(lines), str(rate)]})
    assert status == 201, body
    job_id: str = body["id"]
    deadline = time.monotonic() + 30
    while any(http("GET", f"{s.url}/api/v1/jobs/{job_id}", token=a.token)[1]["status"]
              != "RUNNING" for s in (a, b)):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    return job_id


async def one_round(a: JobserverServer, b: JobserverServer, job_id: str,
                    gate: Path) -> tuple[list[float], list[float]]:
    same: list[float] = []
    cross: list[float] = []
    async with trio.open_nursery() as nursery:
        for server, got in ((a, same), (b, cross)):
            ready = trio.Event()
            url = f"{server.ws_base}/api/v1/ws/jobs/{job_id}/logs?token={a.token}"
            nursery.start_soon(follow, url, got, ready)
            await ready.wait()
        await trio.sleep(0.2)  # both are live
        await trio.Path(gate).touch()
    return same, cross


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(percentile(values, 0.99), 2), "max_ms": round(max(values), 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0, help="lines a second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server to use (default: "
                        "a throw-away one)")
    args = parser.parse_args(argv)
    with postgres_databases(args.database_url) as new_database:
        return measure(args, new_database())


def measure(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    a, b = JobserverServer(), JobserverServer()
    try:
        os.environ["JOBSERVER_DATABASE_URL"] = database_url
        a.start()
        (b.dir / "data").mkdir(parents=True)
        shutil.copy2(a.dir / "data" / "signing.key", b.dir / "data" / "signing.key")
        b.start()
        same: list[float] = []
        cross: list[float] = []
        for round_ in range(args.rounds):
            gate = a.dir / f"gate-{round_}"
            job_id = start_job(a, b, args.lines, args.rate, gate)
            s, c = trio.run(one_round, a, b, job_id, gate)
            same += s
            cross += c
        result = {"same_node": summary(same), "cross_node": summary(cross),
                  "lines": args.lines, "rate": args.rate, "rounds": args.rounds}
        print(f"delivery latency, {args.rounds} x {args.lines} lines at {args.rate:g}/s "
              f"(a line printed on node A -> received by a logs-dialect client)")
        for name in ("same_node", "cross_node"):
            r = result[name]
            print(f"  {name:<10}  n={r['n']:<6} p50 {r['p50_ms']:7.2f} ms   "
                  f"p99 {r['p99_ms']:7.2f} ms   max {r['max_ms']:7.2f} ms")
        return result
    finally:
        os.environ.pop("JOBSERVER_DATABASE_URL", None)
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
