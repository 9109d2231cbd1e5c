"""The health-check service: probes components and tells the engine each verdict.

Rules: one task per check, all inside this service's nursery (a child of the
engine nursery); each probe runs under the check's own timeout (a probe that
has not answered in time is down, and a command still running is killed by
trio's `run_process` as its scope is cancelled); the verdict, "up" or "down",
goes to `Engine.set_health`, which publishes a SystemStatus only on a change.
Two checks are the server's own: `database` (the store answers a query) and
`api` (the server answers GET /healthz on its own port). Configured checks
(core/health.py) run commands without a shell, with the same inherited
environment as jobs (no server secrets). Only components checked here are
ever reported: nothing claims "up" that was not probed.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import trio

from .core.health import HealthCheck
from .core.ids import JobId
from .engine import Engine
from .supervisor import INHERITED_ENV

log = logging.getLogger("jobserver.health")

UP = "up"
DOWN = "down"
# The most of an HTTP answer read: its status line is all a probe needs.
HTTP_HEAD_BYTES = 4096
# A job id no job has: the database probe's query finds nothing, quickly.
NO_JOB = JobId("00000000-0000-0000-0000-000000000000")

Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Scheduled:
    name: str
    probe: Probe
    interval: float
    timeout: float


class HealthService:
    def __init__(self, engine: Engine, checks: Sequence[HealthCheck], *,
                 api: tuple[str, int]) -> None:
        config = engine.config
        interval, timeout = config.health_interval, config.health_timeout
        self.engine = engine
        self.scheduled = [
            Scheduled("database", partial(database_probe, engine), interval, timeout),
            Scheduled("api", partial(http_probe, api[0], api[1], "/healthz"), interval, timeout),
            *(Scheduled(c.name, probe_for(c), c.interval, c.timeout) for c in checks),
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            for check in self.scheduled:
                nursery.start_soon(self._every, check)
            task_status.started()

    async def _every(self, check: Scheduled) -> None:
        while True:
            verdict = DOWN
            with trio.move_on_after(check.timeout):
                verdict = await run_probe(check.probe)
            if self.engine.health.get(check.name) != verdict:
                log.info("health: %s is %s", check.name, verdict)
            self.engine.set_health(check.name, verdict)
            await trio.sleep(check.interval)


async def run_probe(probe: Probe) -> str:
    """"up" when `probe` says so, "down" when it says otherwise or fails (the
    caller bounds it: not answering in time is down too)."""
    try:
        return UP if await probe() else DOWN
    except Exception as exc:  # a probe that fails in any way says "down"
        log.debug("health probe failed: %r", exc)
        return DOWN


def probe_for(check: HealthCheck) -> Probe:
    if check.command:
        return partial(command_probe, check.command)
    if check.tcp is not None:
        return partial(tcp_probe, *check.tcp)
    assert check.http is not None
    url = urlsplit(check.http)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return partial(http_probe, url.hostname or "", url.port or 80, path)


async def command_probe(argv: Sequence[str]) -> bool:
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    done = await trio.run_process(list(argv), check=False, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


async def tcp_probe(host: str, port: int) -> bool:
    stream = await trio.open_tcp_stream(host, port)
    await stream.aclose()
    return True


async def http_probe(host: str, port: int, path: str) -> bool:
    """A GET answered with a 2xx or 3xx status."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\n"
                              "Connection: close\r\n\r\n".encode("ascii", "replace"))
        head = b""
        while b"\r\n" not in head and len(head) < HTTP_HEAD_BYTES:
            data = await stream.receive_some(HTTP_HEAD_BYTES)
            if not data:
                break
            head += data
    parts = head.split(b"\r\n", 1)[0].split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3")


async def database_probe(engine: Engine) -> bool:
    """The store answers a query (a look-up that finds nothing)."""
    return await engine.store.get_job(NO_JOB) is None
