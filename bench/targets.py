"""Fan-out targets: one interface over the baselines and jobserver.

A round goes: `url = target.prepare(plan)`; the load client connects N
subscribers to `url` and waits for each one's first message; `trigger()`
makes the target publish `plan.count` events in bursts of `plan.burst` at
`plan.rate` events/s; the client counts; `settle()` waits until the target
is idle again. `start()` raises TargetUnavailable (the bench prints the reason
and goes on) when a target cannot run here. Baselines are driven through the
control surface in bench/servers/__init__.py; jobserver is in
bench/jobserver_target.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .procs import HOST, ServerProcess, free_port, http

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
SETTLE_POLL = 0.1


class TargetUnavailable(Exception):
    """This target cannot be measured here; str() says why (printed as a skip)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    count: int
    burst: int = 1
    # Events per second; 0 publishes as fast as the target can.
    rate: float = 0.0


class Target(ABC):
    key: str
    label: str

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def prepare(self, plan: Plan) -> str:
        """Set up one round; return the ws:// URL its subscribers connect to."""

    @abstractmethod
    def trigger(self) -> None:
        """Start publishing the prepared round's events; return at once."""

    @abstractmethod
    def settle(self, timeout: float) -> None:
        """Wait until the round's publishing is over and its subscribers are gone."""

    @property
    @abstractmethod
    def pid(self) -> int:
        """The server's process id (for RSS)."""

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class BaselineTarget(Target):
    """A baseline server process speaking the bench's control surface."""

    def __init__(self) -> None:
        self.server: ServerProcess | None = None
        self.port = 0
        self.job = ""
        self.plan = Plan(count=0)

    @abstractmethod
    def argv(self, port: int) -> list[str]: ...

    def start(self) -> None:
        self.port = free_port()
        self.server = ServerProcess(self.key, self.argv(self.port), cwd=ROOT)
        self.server.wait_listening(self.port)
        status, _ = http("GET", f"{self.base}/health")
        if status != 200:
            raise RuntimeError(f"{self.label}: /health answered {status}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def prepare(self, plan: Plan) -> str:
        self.job, self.plan = str(uuid.uuid4()), plan
        return f"ws://{HOST}:{self.port}/api/v1/ws/jobs/{self.job}/logs?token=x"

    def trigger(self) -> None:
        plan = self.plan
        query = f"job={self.job}&count={plan.count}&burst={plan.burst}&rate={plan.rate:g}"
        status, _ = http("POST", f"{self.base}/publish?{query}")
        if status != 202:
            raise RuntimeError(f"{self.label}: /publish answered {status}")

    def settle(self, timeout: float) -> None:
        """Wait for an idle server; restart it if it is still busy at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, stats = http("GET", f"{self.base}/stats", timeout=SETTLE_POLL * 10)
            except OSError:  # a flat-out C publisher answers only when done
                continue
            if isinstance(stats, dict) and stats["publishing"] == 0 \
                    and stats["subscribers"] == 0:
                return
            time.sleep(SETTLE_POLL)
        print(f"    {self.label}: still busy after {timeout:.0f} s, restarting it", flush=True)
        self.stop()
        self.start()


class UvicornTarget(BaselineTarget):
    key = "fastapi"
    label = "(a) FastAPI/uvicorn"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "bench.servers.fastapi_fanout:app",
                "--host", HOST, "--port", str(port), "--ws", "websockets",
                "--log-level", "warning", "--no-access-log"]


class QuartTarget(BaselineTarget):
    key = "quart"
    label = "(b) Quart-Trio/hypercorn"

    def argv(self, port: int) -> list[str]:
        return [sys.executable, "-m", "hypercorn", "--worker-class", "trio",
                "--bind", f"{HOST}:{port}", "bench.servers.quart_fanout:app"]


class CTarget(BaselineTarget):
    key = "c"
    label = "(c) C send() limit"
    source = ROOT / "bench" / "servers" / "fanout.c"
    binary = BUILD / "fanout"

    def start(self) -> None:
        self.build()
        super().start()

    def build(self) -> None:
        if self.binary.exists() and self.binary.stat().st_mtime >= self.source.stat().st_mtime:
            return
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise TargetUnavailable("no C compiler (cc) on this machine")
        BUILD.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([cc, "-O2", "-o", str(self.binary), str(self.source)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise TargetUnavailable(f"cc failed: {done.stderr.strip()[:500]}")

    def argv(self, port: int) -> list[str]:
        return [str(self.binary), str(port)]


class CBatchedTarget(CTarget):
    """The same C server doing what the data plane does: a producer's lines read
    from a pipe, each read's frames encoded once and joined, one non-blocking
    send() per subscriber per read, a bounded backlog per slow one."""

    key = "cbatch"
    label = "(d) C, one send() per subscriber per read"

    def argv(self, port: int) -> list[str]:
        return [str(self.binary), str(port), "batched"]


def baseline_targets() -> list[Target]:
    return [UvicornTarget(), QuartTarget(), CTarget(), CBatchedTarget()]
