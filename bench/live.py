"""Live-dialect fan-out: N subscribers of one chatty job, next to the logs dialect.

One jobserver process; per round one ad-hoc job that waits for its go file,
then for each of `count` steps prints a `BENCH <i>` line (a log event, what the
logs dialect sends) and reports a progress step on fd 3 with the message
`BENCH <i>` (a progress event, what the live dialect sends), one write each,
as fast as it can: a job as chatty as a progress reporter gets. N subscribers
follow it in one dialect: logs (`/api/v1/ws/jobs/{id}/logs`, one message per
line) or live (`/api/2/jobs/live`, `authorize` first, then event batches).
Rates, from the go file to the last marked event received: events/s delivered
(N x count / seconds; for live, events inside the batches) and packets/s
(WebSocket messages received). Rounds alternate dialects in the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from .jobserver_target import JobserverServer
from .loadgen import LoadClient
from .procs import http
from .targets import TargetUnavailable

ROUND_TIMEOUT = 120.0
CHATTY = (
    "import json, os, sys, time\n"
    "go, n = sys.argv[1], int(sys.argv[2])\n"
    "deadline = time.monotonic() + 120\n"
    "while not os.path.exists(go) and time.monotonic() < deadline: time.sleep(0.001)\n"
    "c = os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w', buffering=1)\n"
    "out = sys.stdout\n"
    "for i in range(n):\n"
    "    out.write('BENCH %d\\n' % i); out.flush()\n"
    "    c.write(json.dumps({'progress': {'at': i + 1, 'of': n}, 'message': 'BENCH %d' % i})"
    " + '\\n')\n"
)
MARKER = "BENCH "
# A logs-dialect log message of a step (the `info` message quotes the job's
# command, which has the marker in it too).
LOG_MARKER = '"message":"BENCH '


def run_live(*, n: int = 1000, count: int = 20_000, runs: int = 3,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """{"logs": {...}, "live": {...}}: per dialect the runs and medians of
    events/s and packets/s."""
    server = JobserverServer()
    out: dict[str, Any] = {"n": n, "count": count}
    try:
        server.start()
        rounds: dict[str, list[dict[str, float]]] = {"logs": [], "live": []}
        for i in range(runs):
            for dialect in ("logs", "live"):
                measured = _round(server, dialect, n, count, f"{dialect}-{i}")
                rounds[dialect].append(measured)
                say(f"  {dialect}: {measured['events_per_s']:,.0f} events/s, "
                    f"{measured['packets_per_s']:,.0f} packets/s "
                    f"({measured['events_per_packet']:,.1f} events per packet)")
        for dialect, values in rounds.items():
            out[dialect] = {"runs": values, **{
                key: statistics.median(v[key] for v in values)
                for key in ("events_per_s", "packets_per_s", "events_per_packet")}}
        return out
    except (TargetUnavailable, RuntimeError) as exc:  # reported, the suite goes on
        say(f"  live: skipped: {exc}")
        return {**out, "skipped": str(exc)}
    finally:
        server.stop()


def _round(server: JobserverServer, dialect: str, n: int, count: int,
           name: str) -> dict[str, float]:
    go = server.dir / f"go-{name}"
    status, job = http("POST", f"{server.url}/api/v1/jobs", token=server.token,
                       body={"command": [sys.executable, "-c", CHATTY, str(go), str(count)]})
    if status != 201 or not isinstance(job, dict):
        raise TargetUnavailable(f"POST /api/v1/jobs answered {status}: {job!r:.300}")
    job_id = job["id"]
    hello = None
    if dialect == "logs":
        url = server.logs_url(job_id)
    else:
        status, grant = http("GET", f"{server.url}/api/v1/jobs/{job_id}/progress-token",
                             token=server.token)
        if status != 200 or not isinstance(grant, dict):
            raise TargetUnavailable(f"progress-token answered {status}")
        url = f"{server.ws_base}/api/2/jobs/live"
        hello = json.dumps({"type": "authorize", "data": {"job_uid": job_id,
                                                          "jwt": grant["jwt"]}})
    with LoadClient(workers=2) as client:
        ready = client.connect(url, n, timeout=90, send=[hello] if hello else None)
        if ready.ready != n:
            raise TargetUnavailable(f"{dialect}: {ready.ready} of {n} ready: {ready.errors}")
        client.go(expect=count, latency=False, timeout=ROUND_TIMEOUT,
                  marker=LOG_MARKER if dialect == "logs" else MARKER,
                  count_all=dialect == "live", batch=0.02)
        start_ns = time.time_ns()
        go.touch()
        got = client.wait()
    finished = server.wait_finished(job_id, ROUND_TIMEOUT)
    if finished["status"] != "SUCCEEDED":
        raise RuntimeError(f"the chatty job ended {finished['status']}")
    if got.total != n * count:
        raise RuntimeError(f"{dialect}: {got.total:,} of {n * count:,} events delivered "
                           f"({got.errors})")
    seconds = (got.last_ns - start_ns) / 1e9
    return {"events_per_s": got.total / seconds, "packets_per_s": got.frames / seconds,
            "events_per_packet": got.total / max(got.frames, 1), "seconds": seconds}


def live_table(results: dict[str, Any]) -> str:
    """The text table of `run_live`'s medians (bench/report.py's style)."""
    from .report import table
    title = (f"Live vs logs dialect: N={results['n']:,} subscribers of one job reporting "
             f"{results['count']:,} steps, median run")
    if "skipped" in results:
        return f"{title}\n  skipped: {results['skipped']}"
    rows = [[d, f"{results[d]['events_per_s']:,.0f}", f"{results[d]['packets_per_s']:,.0f}",
             f"{results[d]['events_per_packet']:,.1f}"] for d in ("logs", "live") if d in results]
    return "\n".join([title, table(["dialect", "events/s", "packets/s", "events/packet"],
                                    rows, "lrrr")])


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = run_live(n=args.n, count=args.count, runs=args.runs)
    print(live_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
