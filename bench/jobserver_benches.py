"""jobserver's side of the log-throughput and spawn-rate benchmarks.

Each function starts its own JobserverServer, runs once, returns a number and
stops the server; until jobserver can run them they raise TargetUnavailable,
whose message the suite prints as the skip reason.

- log_throughput: (on SQLite, or on a PostgreSQL database) one `bench-seq`
  job (`seq N`, held until its go file exists) streamed to one logs-dialect
  subscriber; lines/s from go to the later of the job's end and the last
  line received; every line must arrive and be persisted
  (`GET /api/v1/jobs/{id}/logs`), else it raises.
- spawn_rate: N `bench-true` jobs submitted one after another on one
  keep-alive connection; jobs/s from the first submit to the last job's
  `completed_at` (every job must be SUCCEEDED).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .jobserver_target import TERMINAL, JobserverServer, _toml_str
from .loadgen import LoadClient
from .procs import http
from .profile import Sampler
from .targets import TargetUnavailable

LOG_TIMEOUT = 300.0
SPAWN_TIMEOUT = 300.0
# A log message of the logs dialect, whatever the server's JSON spacing.
LOG_MARKER = '"log"'


def log_throughput(lines: int = 2_000_000, profile: Path | None = None, *,
                   database_url: str | None = None) -> float:
    """Lines/s; with `profile`, py-spy samples the server meanwhile into that file;
    with `database_url`, the server keeps its store in that PostgreSQL database."""
    server = JobserverServer(extra_server="" if database_url is None
                             else f"database_url = {_toml_str(database_url)}\n")
    try:
        server.start()
        go = server.dir / "go-seq"
        job_id = server.submit("bench-seq", {"count": lines, "go_file": str(go)})
        with LoadClient(workers=1) as client:
            ready = client.connect(server.logs_url(job_id), 1, timeout=30)
            if ready.ready != 1:
                raise TargetUnavailable(f"logs subscriber did not get in: {ready.errors}")
            client.go(expect=lines, latency=False, timeout=LOG_TIMEOUT, marker=LOG_MARKER)
            with Sampler(server.pid, profile) if profile else nullcontext() as sampler:
                if sampler is not None and sampler.problem:
                    print(f"  no profile: {sampler.problem}", flush=True)
                start_ns = time.time_ns()
                go.touch()
                job = server.wait_finished(job_id, LOG_TIMEOUT)
                job_end_ns = time.time_ns()
                got = client.wait()
        seconds = (max(job_end_ns, got.last_ns) - start_ns) / 1e9
        if job["status"] != "SUCCEEDED":
            raise RuntimeError(f"bench-seq job ended {job['status']}")
        status, text = http("GET", f"{server.url}/api/v1/jobs/{job_id}/logs",
                            token=server.token, timeout=LOG_TIMEOUT)
        persisted = len(text.splitlines()) if status == 200 and isinstance(text, str) else -1
        if got.total != lines or persisted != lines:
            raise RuntimeError(f"lines lost: {lines} printed, {got.total} delivered, "
                               f"{persisted} persisted")
        return lines / seconds
    finally:
        server.stop()


def spawn_rate(count: int = 2000, slots: int = 2, profile: Path | None = None) -> float:
    """Jobs/s from the first submit to the last job's completion, as the server
    recorded it (`completed_at`): the bench's own polling is not counted, as
    xargs and tsp are timed without any. With `profile`, py-spy samples the
    server meanwhile into that file."""
    server = JobserverServer(slots=slots)
    try:
        server.start()
        with Sampler(server.pid, profile) if profile else nullcontext() as sampler:
            if sampler is not None and sampler.problem:
                print(f"  no profile: {sampler.problem}", flush=True)
            return _spawn(server, count)
    finally:
        server.stop()


def _spawn(server: JobserverServer, count: int) -> float:
    start = time.time()
    ids = submit_jobs(server, count)
    return completed_rate(server, ids, start)


def _api(server: JobserverServer) -> tuple[HTTPConnection, Callable[..., dict[str, Any]]]:
    """A keep-alive connection to `server` and a JSON call on it (admin token)."""
    parts = urlsplit(server.url)
    conn = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {server.token}",
               "Content-Type": "application/json"}

    def call(method: str, path: str, body: str | None = None) -> dict[str, Any]:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        reply = response.read()
        if response.status not in (200, 201):
            raise TargetUnavailable(f"{method} {path} answered {response.status}")
        answer: dict[str, Any] = json.loads(reply)
        return answer

    return conn, call


def submit_jobs(server: JobserverServer, count: int) -> list[str]:
    """Submit `count` bench-true jobs one after another on one connection; their ids."""
    conn, call = _api(server)
    body = json.dumps({"template": "bench-true", "params": {}})
    try:
        return [call("POST", "/api/v1/jobs", body)["id"] for _ in range(count)]
    finally:
        conn.close()


def completed_rate(server: JobserverServer, ids: list[str], start: float) -> float:
    """Jobs/s from `start` to the last of `ids`' `completed_at` (all must be SUCCEEDED)."""
    conn, call = _api(server)
    count = len(ids)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while call("GET", f"/api/v1/jobs/{ids[-1]}")["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise RuntimeError("bench-true jobs did not finish in time")
        time.sleep(0.01)
    done: dict[str, dict[str, Any]] = {}
    while len(done) < count and time.monotonic() < deadline:
        cursor = ""
        while True:
            page = call("GET", f"/api/v1/jobs?template=bench-true&limit=500&cursor={cursor}")
            done.update((j["id"], j) for j in page["jobs"] if j["status"] in TERMINAL)
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        time.sleep(0.01)
    conn.close()
    failed = [j for j in done.values() if j["status"] != "SUCCEEDED"]
    if len(done) < count or failed:
        raise RuntimeError(f"{len(done)} of {count} bench-true jobs finished, "
                           f"{len(failed)} not SUCCEEDED")
    end = max(_epoch(j["completed_at"]) for j in done.values())
    return count / (end - start)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
