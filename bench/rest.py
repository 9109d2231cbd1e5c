"""REST benchmark: requests/s of `GET /api/v1/jobs/{id}` and `POST /api/v1/jobs`.

jobserver against two baselines running the same handlers minus persistence
(bench/servers/rest_handlers.py): uvicorn + Starlette (starlette_rest.py) and
hypercorn + Quart-Trio (quart_rest.py), jobserver's own server and framework
with none of jobserver around them; all loaded by `wrk` (from the
system's packages: apt-get installed if missing and allowed, else skipped) with
one thread and `connections` keep-alive connections for `seconds`, then with
one connection (one request at a time: each figure is then one round trip, as
a script submitting jobs one after another sees it). jobserver runs with one
slot held by a job that waits, so POSTed jobs stay QUEUED and the figure is
the submit path, not process spawning. Report only, no target.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from .jobserver_target import JobserverServer
from .procs import HOST, ServerProcess, free_port, http
from .targets import ROOT, TargetUnavailable

POST_BODY = '{"template": "bench-true", "params": {}}'
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class BaselineRest:
    """A baseline server process running bench/servers/rest_handlers.py."""
    key = ""
    label = ""

    def __init__(self) -> None:
        self.server: ServerProcess | None = None
        self.secret = secrets.token_hex(32)
        now = int(time.time())
        self.token = jwt.encode({"sub": "bench", "role": "admin", "iat": now, "exp": now + 3600},
                                self.secret, algorithm="HS256")
        self.url = ""
        self.job_id = ""

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        port = free_port()
        self.server = ServerProcess(f"{self.key}-rest", self.argv(port), cwd=ROOT,
                                    env={**os.environ, "BENCH_JWT_SECRET": self.secret})
        self.server.wait_listening(port)
        self.url = f"http://{HOST}:{port}"
        status, body = http("POST", f"{self.url}/api/v1/jobs", token=self.token,
                            body={"template": "bench-true", "params": {}})
        if status != 201 or not isinstance(body, dict):
            raise RuntimeError(f"{self.label} baseline: POST answered {status}")
        self.job_id = body["id"]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class StarletteRest(BaselineRest):
    key = "starlette"
    label = "uvicorn + Starlette"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "bench.servers.starlette_rest:app",
                "--host", HOST, "--port", str(port), "--log-level", "warning",
                "--no-access-log"]


class QuartRest(BaselineRest):
    key = "quart"
    label = "hypercorn + Quart-Trio"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "hypercorn", "--worker-class", "trio",
                "--workers", "0",  # served in this process, as jobserver serves
                "--bind", f"{HOST}:{port}", "bench.servers.quart_rest:app"]


class JobserverRest:
    key = "jobserver"
    label = "jobserver"

    def __init__(self) -> None:
        self.server = JobserverServer(slots=1)
        self.url = ""
        self.token = ""
        self.job_id = ""

    def start(self) -> None:
        try:
            self.server.start()
            # Holds the only slot (it waits for a go file that never comes).
            self.job_id = self.server.submit("bench-emit", {
                "count": 1, "go_file": str(self.server.dir / "never")})
        except BaseException:
            self.server.stop()
            raise
        self.url, self.token = self.server.url, self.server.token

    def stop(self) -> None:
        self.server.stop()


def _ms(found: re.Match[str] | None) -> float | None:
    """Milliseconds from a wrk duration such as `812.00us`, `2.31ms` or `1.02s`."""
    parsed = re.fullmatch(r"([\d.]+)(us|ms|s)", found.group(1)) if found else None
    return float(parsed.group(1)) * _UNITS[parsed.group(2)] if parsed else None


def wrk_once(wrk: str, url: str, token: str, *, post: bool, seconds: float,
             connections: int) -> dict[str, Any]:
    """One wrk run: requests/s, p50/p99 ms and error counts."""
    lines = [f'wrk.headers["Authorization"] = "Bearer {token}"']
    if post:
        lines += ['wrk.method = "POST"', f"wrk.body = '{POST_BODY}'",
                  'wrk.headers["Content-Type"] = "application/json"']
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text("\n".join(lines) + "\n")
        done = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
             url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or out.strip()}"[:300])
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.+)", out)
    return {"requests_per_s": float(rate.group(1)), "p50_ms": _ms(p50), "p99_ms": _ms(p99),
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


PROFILED = ("quart", "jobserver")


def _profiled(wrk: str, url: str, target: BaselineRest | JobserverRest, raw: Path, *,
              post: bool, seconds: float, connections: int,
              say: Callable[[str], None]) -> dict[str, Any]:
    from .profile import Sampler, by_layer, print_summary, summary

    pid = target.server.pid if target.server is not None else 0
    with Sampler(pid, raw) as sampler:
        if sampler.problem:
            say(f"  no profile: {sampler.problem}")
            return {"skipped": sampler.problem}
        wrk_once(wrk, url, target.token, post=post, seconds=seconds, connections=connections)
    found = {"main thread's busy samples by layer": by_layer(raw),
             "inclusive": summary(raw)["inclusive"]}
    say(f"  profile ({raw.name}):")
    print_summary(found, say)
    return {**found, "raw": raw.name}


def run_rest(wrk: str, *, targets: list[str], runs: int, seconds: float, connections: int,
             profile: Path | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """For each target and endpoint, `runs` wrk runs; medians in "median". With
    `profile` (a directory), one more run per endpoint of the targets on
    hypercorn + Quart with py-spy sampling the server: raw stacks in
    `rest-profile-KEY-get.txt` / `-post.txt` there, the shares in "profile"."""
    makers: dict[str, Callable[[], BaselineRest | JobserverRest]] = {
        "starlette": StarletteRest, "quart": QuartRest, "jobserver": JobserverRest}
    results: dict[str, Any] = {}
    for key in targets:
        target = makers[key]()
        say(f"rest: {target.label}")
        try:
            target.start()
        except TargetUnavailable as exc:
            say(f"  skipped: {exc}")
            results[key] = {"skipped": str(exc)}
            continue
        try:
            results[key] = {}
            for name, post, load in (
                    ("GET /api/v1/jobs/{id}", False, connections),
                    ("POST /api/v1/jobs", True, connections),
                    ("GET /api/v1/jobs/{id}, 1 connection", False, 1),
                    ("POST /api/v1/jobs, 1 connection", True, 1)):
                url = f"{target.url}/api/v1/jobs" + ("" if post else f"/{target.job_id}")
                tries = []
                for _ in range(runs):
                    tries.append(wrk_once(wrk, url, target.token, post=post, seconds=seconds,
                                          connections=load))
                    t = tries[-1]
                    say(f"  {name}: {t['requests_per_s']:,.0f} req/s  p50 {t['p50_ms']} ms  "
                        f"p99 {t['p99_ms']} ms  non-2xx {t['non_2xx']}")
                ordered = sorted(tries, key=lambda t: t["requests_per_s"])
                results[key][name] = {"runs": tries, "median": ordered[len(ordered) // 2]}
                if profile is not None and key in PROFILED and load == connections:
                    raw = profile / f"rest-profile-{key}-{'post' if post else 'get'}.txt"
                    results[key][name]["profile"] = _profiled(
                        wrk, url, target, raw, post=post, seconds=seconds,
                        connections=connections, say=say)
        finally:
            target.stop()
    return results
