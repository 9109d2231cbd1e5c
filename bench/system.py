"""Limits and baselines that need only system tools: seq | wc, xargs, tsp.

Each function runs once and returns a number (lines/s or jobs/s); the caller
repeats it and takes the median. `seq N | wc -l` is the log-throughput limit,
`seq N | xargs -P2 -n1 true` the spawn limit, and task-spooler (`tsp`, from
the system's packages: installed with apt-get if missing and allowed, else
skipped with a message) what a user might run jobs with instead. Every
subprocess has a timeout; tsp runs on a private socket and is killed after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

TIMEOUT = 300.0
INSTALL_TIMEOUT = 300.0
TSP_POLL = 0.02


class Skip(Exception):
    """This measurement cannot run here; str() says why."""


def _pipeline(first: list[str], second: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    with subprocess.Popen(first, stdout=subprocess.PIPE) as producer, \
            subprocess.Popen(second, stdin=producer.stdout, stdout=subprocess.PIPE) as consumer:
        assert producer.stdout is not None
        producer.stdout.close()
        out, _ = consumer.communicate(timeout=TIMEOUT)
        producer.wait(timeout=TIMEOUT)
    return time.perf_counter() - start, out


def seq_wc(lines: int = 2_000_000) -> float:
    """Lines/s through `seq N | wc -l` (the log-throughput limit)."""
    seconds, out = _pipeline(["seq", str(lines)], ["wc", "-l"])
    if int(out.split()[0]) != lines:
        raise RuntimeError(f"wc counted {out!r}, expected {lines}")
    return lines / seconds


def xargs_spawn(count: int = 2000, parallel: int = 2) -> float:
    """Jobs/s for `seq N | xargs -P2 -n1 true` (the spawn limit)."""
    seconds, _ = _pipeline(["seq", str(count)], ["xargs", f"-P{parallel}", "-n1", "true"])
    return count / seconds


def find_tool(binary: str, package: str, *, install: bool) -> str:
    """Path of a system tool, apt-get installing its package if allowed; or Skip."""
    found = shutil.which(binary)
    if found:
        return found
    if not install:
        raise Skip(f"{binary} ({package}) is not installed (--no-install given)")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise Skip(f"{binary} ({package}) is not installed and apt-get is not usable here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-qq", package]
    for attempt in ([], [["apt-get", "update", "-qq"]]):
        for command in [*attempt, install_cmd]:
            subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_TIMEOUT,
                           check=False)
        found = shutil.which(binary)
        if found:
            return found
    raise Skip(f"{binary} ({package}) could not be installed with apt-get")


def find_tsp(*, install: bool) -> str:
    """Path of task-spooler's `tsp` (see find_tool)."""
    return find_tool("tsp", "task-spooler", install=install)


def tsp_spawn(tsp: str, count: int = 2000, slots: int = 2) -> float:
    """Jobs/s from the first `tsp true` to the last one finished, `slots` at once."""
    with tempfile.TemporaryDirectory(prefix="bench-tsp-") as tmp:
        env = {**os.environ, "TS_SOCKET": os.path.join(tmp, "socket"), "TMPDIR": tmp,
               "TS_MAXFINISHED": str(count + 10)}

        def run(*args: str) -> str:
            done = subprocess.run([tsp, *args], env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT, check=True)
            return done.stdout

        run("-S", str(slots))
        try:
            start = time.perf_counter()
            for _ in range(count):
                run("true")
            deadline = start + TIMEOUT
            while time.perf_counter() < deadline:
                listing = run("-l").splitlines()[1:]
                if not any(" running " in row or " queued " in row for row in listing):
                    break
                time.sleep(TSP_POLL)
            seconds = time.perf_counter() - start
            finished = sum(1 for row in run("-l").splitlines()[1:] if " finished " in row)
        finally:
            subprocess.run([tsp, "-K"], env=env, capture_output=True, timeout=30, check=False)
    if finished != count:
        raise RuntimeError(f"tsp finished {finished} of {count} jobs")
    return count / seconds
