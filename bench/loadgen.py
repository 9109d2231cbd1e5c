"""Driver side of the load client: a few bench.wsclient processes as one client.

Rules: subscribers are split evenly over the worker processes (two on a
2-core machine); every wait on a worker has a deadline; workers are killed on
exit whatever happened. `Delivery` merges the workers' reports.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .events import MARKER

ROOT = Path(__file__).resolve().parent.parent
# Slack on top of a command's own timeout before a worker is declared stuck.
REPLY_SLACK = 30.0


class LoadClientError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    ready: int
    seconds: float
    errors: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    subscribers: int
    total: int
    complete: int
    min_count: int
    max_count: int
    first_ns: int
    last_ns: int
    timed_out: bool
    errors: dict[str, int]
    latencies_ns: list[int] = field(repr=False)
    frames: int = 0  # data frames received while measuring


def _merge_errors(parts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for reason, times in part["errors"].items():
            out[reason] = out.get(reason, 0) + times
    return out


class LoadClient:
    def __init__(self, *, workers: int = 2) -> None:
        self._timeout = 0.0
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(max(workers, 1)):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.wsclient"], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def _send(self, proc: subprocess.Popen[bytes], command: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(command).encode() + b"\n")
        proc.stdin.flush()

    def _read(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise LoadClientError(f"load client worker {proc.pid} gave no reply in {timeout} s")
        line = proc.stdout.readline()
        if not line:
            raise LoadClientError(f"load client worker {proc.pid} exited ({proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _all(self, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for proc, command in zip(self.procs, commands, strict=True):
            self._send(proc, command)
        deadline = time.monotonic() + timeout
        return [self._read(p, max(deadline - time.monotonic(), 0.1)) for p in self.procs]

    def connect(self, url: str, n: int, *, timeout: float = 60.0, send: list[str] | None = None,
                ready_frames: int = 1) -> Ready:
        """Open `n` subscribers to `url`; return once each is ready or failed (each
        sends the `send` texts once open, and is ready after `ready_frames` messages)."""
        share = [n // len(self.procs) + (i < n % len(self.procs)) for i in range(len(self.procs))]
        replies = self._all(
            [{"op": "connect", "url": url, "n": k, "timeout": timeout, "send": send,
              "ready_frames": ready_frames} for k in share],
            timeout + REPLY_SLACK)
        return Ready(ready=sum(r["ready"] for r in replies),
                     seconds=max(r["seconds"] for r in replies),
                     errors=_merge_errors(replies))

    def go(self, *, expect: int, latency: bool, timeout: float, idle: float = 10.0,
           batch: float = 0.0, marker: str = MARKER, count_all: bool = False) -> None:
        """Start measuring: each subscriber waits for `expect` marked messages.

        `batch` > 0 makes the workers read in batches (see Worker.measure);
        only messages containing `marker` are counted (with `count_all`, every
        occurrence of it in a message).
        """
        self._timeout = timeout
        command = {"op": "go", "expect": expect, "latency": latency, "timeout": timeout,
                   "idle": idle, "batch": batch, "marker": marker, "count_all": count_all}
        self._all([command] * len(self.procs), REPLY_SLACK)

    def wait(self) -> Delivery:
        """The merged report, once every worker is done or out of time."""
        deadline = time.monotonic() + self._timeout + REPLY_SLACK
        replies = [self._read(p, max(deadline - time.monotonic(), 0.1)) for p in self.procs]
        firsts = [r["first_ns"] for r in replies if r["first_ns"]]
        latencies: list[int] = []
        for reply in replies:
            latencies.extend(reply["latencies_ns"])
        return Delivery(
            subscribers=sum(r["subscribers"] for r in replies),
            total=sum(r["total"] for r in replies),
            complete=sum(r["complete"] for r in replies),
            min_count=min(r["min_count"] for r in replies),
            max_count=max(r["max_count"] for r in replies),
            first_ns=min(firsts) if firsts else 0,
            last_ns=max(r["last_ns"] for r in replies),
            timed_out=any(r["timed_out"] for r in replies),
            errors=_merge_errors(replies),
            latencies_ns=latencies,
            frames=sum(r.get("frames", 0) for r in replies))

    def close(self) -> None:
        """Close every subscriber (abortively, so no TIME_WAIT is left)."""
        self._all([{"op": "close"}] * len(self.procs), REPLY_SLACK)

    def shutdown(self) -> None:
        for proc in self.procs:
            try:
                self._send(proc, {"op": "exit"})
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
