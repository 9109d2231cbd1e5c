"""Multiplex fan-out: messages/s to N connections on `tasks` of one user, next
to N logs-dialect subscribers of one job, on the same server in the same run.

Multiplex: a `bench-progress` job of the user waits for its go file, then
reports `events` progress messages on fd 3 as fast as it can; N connections
to `/ws?token=` (the user's token) each send `subscribe` `tasks` and are ready
once the server answered a request sent after it (so the subscription is in
effect); every progress event is one `task_update` to each. Logs: a
`bench-emit` job prints `events` lines, one per event (burst 1), to N
subscribers of `/api/v1/ws/jobs/{id}/logs`. Rate = messages delivered (N x
events) / (last arrival - go). Each progress event is its own record (a store
write and a publish) while log lines are read and published in batches, so
the two differ by what one event costs as much as by the dialects.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .events import MARKER
from .jobserver_target import TERMINAL, JobserverServer, _toml_str
from .loadgen import LoadClient
from .targets import TargetUnavailable

CONNECT_TIMEOUT = 90.0
ROUND_TIMEOUT = 120.0
SUBSCRIBE = ['{"type":"subscribe","data":{"channel":"tasks"}}', "sync"]
# Counted: the task updates of the progress events (not the Started before them).
MULTIPLEX_MARKER = '"type":"task_update"'
USER = "bench-user"

TEMPLATES = """
[templates.bench-progress]
description = "Benchmark: wait for go_file, then report count progress messages on fd 3."
argv = [{python}, "-c", '''
import json, os, sys, time
go, count = sys.argv[1], int(sys.argv[2])
while not os.path.exists(go):
    time.sleep(0.001)
c = os.fdopen(int(os.environ["JOBSERVER_CONTROL_FD"]), "w")
for i in range(1, count + 1):
    c.write(json.dumps(dict(progress=dict(at=i, of=count))) + chr(10))
c.flush()
''', "{{go_file}}", "{{count}}"]
timeout = 900
[templates.bench-progress.params.count]
type = "int"
required = true
[templates.bench-progress.params.go_file]
type = "string"
required = true
"""


class MultiplexBench:
    def __init__(self, n: int, events: int) -> None:
        self.n = n
        self.events = events
        self.server = JobserverServer(
            slots=2, extra_server=f"multiplex_max_connections = {n + 10}\n"
                                  "multiplex_messages_per_minute = 1000",
            extra_templates=TEMPLATES.format(python=_toml_str(sys.executable)))
        self.user_token = ""
        self.rounds = 0

    def start(self) -> None:
        self.server.start()
        self.user_token = self.server.make_token(USER, "user")

    def stop(self) -> None:
        self.server.stop()

    def _go_file(self) -> Path:
        self.rounds += 1
        return self.server.dir / f"go-mx-{self.rounds}"

    def _round(self, url: str, job_id: str, go: Path, marker: str,
               send: list[str] | None, ready_frames: int) -> float:
        with LoadClient(workers=2) as client:
            ready = client.connect(url, self.n, timeout=CONNECT_TIMEOUT, send=send,
                                   ready_frames=ready_frames)
            if ready.ready < self.n:
                raise TargetUnavailable(f"only {ready.ready} of {self.n} connected: "
                                        f"{ready.errors}")
            client.go(expect=self.events, latency=False, timeout=ROUND_TIMEOUT, batch=0.02,
                      marker=marker)
            began = time.time_ns()
            go.touch()
            delivery = client.wait()
            client.close()
        job = self.server.wait_finished(job_id, ROUND_TIMEOUT)
        if job["status"] not in TERMINAL:
            raise TargetUnavailable(f"job {job_id} still {job['status']}")
        if delivery.complete < self.n:
            raise TargetUnavailable(f"{self.n - delivery.complete} connections missed events "
                                    f"(got {delivery.min_count}..{delivery.max_count} of "
                                    f"{self.events})")
        return delivery.total / max((delivery.last_ns - began) / 1e9, 1e-9)

    def multiplex_round(self) -> float:
        go = self._go_file()
        job_id = self.server.submit("bench-progress", {"count": self.events,
                                                       "go_file": str(go)},
                                    token=self.user_token)
        self._wait_running(job_id)
        return self._round(f"{self.server.ws_base}/ws?token={self.user_token}", job_id, go,
                           MULTIPLEX_MARKER, SUBSCRIBE, 2)

    def logs_round(self) -> float:
        go = self._go_file()
        job_id = self.server.submit("bench-emit", {"count": self.events, "burst": 1,
                                                   "rate": 0, "go_file": str(go)})
        self._wait_running(job_id)
        return self._round(self.server.logs_url(job_id), job_id, go, MARKER, None, 1)

    def _wait_running(self, job_id: str) -> None:
        deadline = time.monotonic() + 30
        while self.server.job(job_id)["status"] == "QUEUED":
            if time.monotonic() > deadline:
                raise TargetUnavailable(f"job {job_id} did not start")
            time.sleep(0.02)


def run_multiplex(*, n: int, events: int, runs: int,
                  repeat: Callable[[int, Callable[[], float], Callable[[str], None], str],
                                   dict[str, Any]],
                  say: Callable[[str], None]) -> dict[str, Any]:
    say(f"multiplex fan-out: {n:,} connections on `tasks` of one user, {events:,} progress "
        f"events; logs dialect, {n:,} subscribers, {events:,} lines, same server")
    bench = MultiplexBench(n, events)
    try:
        bench.start()
    except TargetUnavailable as exc:
        say(f"  skipped: {exc}")
        return {"multiplex tasks": {"skipped": str(exc)}, "logs": {"skipped": str(exc)}}
    try:
        return {"multiplex tasks": repeat(runs, bench.multiplex_round, say, "multiplex tasks"),
                "logs": repeat(runs, bench.logs_round, say, "logs")}
    finally:
        bench.stop()
