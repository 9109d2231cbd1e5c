"""Processes, ports and HTTP for the benchmarks: start servers, always kill them.

Rules: every server runs in its own session (process group) with its output in
a log file, and is registered so `kill_all` (called on exit and on SIGTERM by
bench/__main__.py) ends the whole group: SIGTERM, then SIGKILL after a grace
period. Should the bench itself be killed outright, the kernel sends each
server SIGKILL (PR_SET_PDEATHSIG). Everything listens on and talks to
127.0.0.1 only. Every wait has a deadline.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STOP_GRACE = 5.0
PR_SET_PDEATHSIG = 1
_live: set[ServerProcess] = set()


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server process group, its output captured in a temporary log file."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_output(self, needle: str, timeout: float) -> str:
        """The first output line containing `needle`; raise if none in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text("utf-8", "replace").splitlines():
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {needle!r}:\n{self.output_tail()}")

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output_tail()}")
            try:
                socket.create_connection((HOST, port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {port} in {timeout} s")

    def stop(self) -> None:
        _live.discard(self)
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the job processes of a server, say).
        _signal_group(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_GRACE)
        self.log.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the bench dies without cleaning up (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """Stop every server still running (at exit, on SIGTERM, after an error)."""
    for server in list(_live):
        server.stop()


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def group_rss_bytes(pgid: int) -> int:
    """Resident set size of a server's whole process group, from /proc."""
    total = 0
    for pid in _group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _stat(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def foreign_cpu_ticks(server_pgid: int, client_pids: list[int]) -> dict[int, int]:
    """CPU ticks (with reaped children's) of every user-space process that is not
    the bench, its load client, the server's process group or a child of it."""
    ours = {os.getpid(), *client_pids}
    fields_of = {int(e.name): _stat(e.name) for e in Path("/proc").iterdir()
                 if e.name.isdigit()}
    server = {pid for pid, f in fields_of.items() if f is not None and int(f[2]) == server_pgid}
    out = {}
    for pid, f in fields_of.items():
        if f is None or pid in ours or pid in server or pid == 2:
            continue
        if int(f[1]) == 2 or int(f[1]) in server:  # kernel threads; the server's jobs
            continue
        out[pid] = sum(int(x) for x in f[11:15])
    return out


def foreign_cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds other processes used between two foreign_cpu_ticks snapshots."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return max(ticks, 0) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system, with reaped children's) used by a process group."""
    ticks = 0
    for pid in _group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def http(method: str, url: str, *, body: Any = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """One request to 127.0.0.1; returns (status, decoded JSON or text or None)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, ctype = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers
    if not raw:
        return status, None
    if "json" in (ctype.get("Content-Type") or ""):
        return status, json.loads(raw)
    return status, raw.decode("utf-8", "replace")
