"""Jobs' process groups: who is in one, whose it provably is, and ending it.

Rules:
- A job's process is known by its `Identity`: pid, process group, start time
  (field 22 of /proc/<pid>/stat, clock ticks since boot) and the boot id. A
  pid alone names nothing: once its process is gone the number is reused.
- `claim` finds the live processes that provably belong to a recorded
  identity, and none other: none at all under another boot id. The leader
  counts only with the recorded start time; while it lives its group id
  cannot be reused (the kernel keeps a pid number while it names a group),
  so then every member of the group is the job's. With the leader gone, a
  member counts only if it started no earlier than the leader and its
  environment names the job (JOBSERVER_JOB_ID, set by the supervisor). A
  group id that someone else got since is never signalled.
- Claimed processes are held by pidfds opened *before* they were checked,
  and signalled through them: a process that exits and has its pid reused
  between the check and the signal is not hit.
- `end_orphans` is TERM, `grace`, KILL, bounded by `grace + KILL_WAIT`, and
  says in one sentence what it did. Everything else here is synchronous.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
JOB_ID_ENV = "JOBSERVER_JOB_ID"
# After SIGKILL the kernel needs moments; a process still there after this is
# stuck in the kernel (D state) and waiting longer does not help.
KILL_WAIT = 2.0
# Field 22 of /proc/<pid>/stat (starttime), counted from field 3 (state),
# the first one after the parenthesised command name.
_STARTTIME = 22 - 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What proves a process is the one a job started."""

    pid: int
    pgid: int
    start_time: int  # clock ticks after boot
    boot_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "pgid": self.pgid, "start_time": self.start_time,
                "boot_id": self.boot_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Identity:
        return cls(pid=int(d["pid"]), pgid=int(d["pgid"]), start_time=int(d["start_time"]),
                   boot_id=str(d["boot_id"]))


@dataclass(frozen=True, slots=True)
class _Stat:
    state: bytes
    pgrp: int
    start_time: int

    @property
    def live(self) -> bool:
        return self.state not in (b"Z", b"X")  # a zombie is dead, only not reaped


def _stat(pid: int | str) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return _Stat(fields[0], int(fields[2]), int(fields[_STARTTIME]))
    except (IndexError, ValueError):
        return None


def boot_id() -> str | None:
    """This boot's id: read once (it cannot change under a running process),
    so that each job's `identify` is one read of /proc, not two."""
    global _boot_id
    if _boot_id is None:
        try:
            with open(BOOT_ID_FILE) as f:
                _boot_id = f.read().strip() or None
        except OSError:
            return None
    return _boot_id


_boot_id: str | None = None


def identify(pid: int) -> Identity | None:
    """The identity of live process `pid`, or None where /proc cannot tell."""
    boot, stat = boot_id(), _stat(pid)
    if boot is None or stat is None:
        return None
    return Identity(pid=pid, pgid=stat.pgrp, start_time=stat.start_time, boot_id=boot)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_members(pgid: int) -> Iterator[int]:
    """Pids of the live (not zombie) processes in group `pgid`, from /proc."""
    try:
        names = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return
    for name in names:
        stat = _stat(name)
        if stat is not None and stat.pgrp == pgid and stat.live:
            yield int(name)


def group_alive(pgid: int) -> bool:
    """Is a live process left in the group? Zombies (dead, waiting for a parent
    that reaps lazily, like some containers' init) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True  # no /proc to look closer
    return next(group_members(pgid), None) is not None


# ---- processes a previous run of the server left behind -----------------------


@dataclass(frozen=True, slots=True)
class _Held:
    pid: int
    pidfd: int


def _names_job(pid: int, job_id: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{JOB_ID_ENV}={job_id}".encode() in env


def claim(identity: Identity, job_id: str) -> list[_Held]:
    """Pidfds of the live processes that provably are `job_id`'s (see the rules);
    the caller closes them (`release`). Raises OSError where pidfds are missing."""
    if boot_id() != identity.boot_id:
        return []
    held: list[_Held] = []
    leader = False
    doubtful: list[_Held] = []
    for pid in group_members(identity.pgid):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone already
        except OSError:
            release(held)
            release(doubtful)
            raise
        stat = _stat(pid)  # checked after the pidfd is open: it names this process
        if stat is None or stat.pgrp != identity.pgid or not stat.live \
                or stat.start_time < identity.start_time:
            os.close(fd)
        elif pid == identity.pid and stat.start_time == identity.start_time:
            leader = True
            held.append(_Held(pid, fd))
        else:
            doubtful.append(_Held(pid, fd))
    for member in doubtful:
        if leader or _names_job(member.pid, job_id):
            held.append(member)
        else:
            os.close(member.pidfd)
    return held


def release(held: list[_Held]) -> None:
    for member in held:
        os.close(member.pidfd)
    held.clear()


def _send(held: list[_Held], sig: int) -> None:
    for member in held:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(member.pidfd, sig)


async def _wait_gone(held: list[_Held]) -> None:
    """Return once every held process has exited (its pidfd turns readable)."""
    for member in held:
        await trio.lowlevel.wait_readable(member.pidfd)


def _forget(held: list[_Held]) -> None:
    for member in held:
        trio.lowlevel.notify_closing(member.pidfd)
    release(held)


async def end_orphans(identity: Identity, job_id: str, *, grace: float) -> str:
    """End what is left of a job's process group after the server that ran it died:
    TERM, `grace`, KILL. Says what it did, for the job's events."""
    group = f"process group {identity.pgid}"
    if boot_id() != identity.boot_id:
        return f"{group} is gone: the machine restarted since the job started"
    try:
        held = claim(identity, job_id)
    except OSError as exc:  # no pidfds (Linux < 5.3): nothing can be signalled safely
        return f"{group} was not signalled: {exc.strerror or exc}"
    try:
        if not held:
            return f"{group} had already ended"
        count = len(held)
        _send(held, signal.SIGTERM)
        with trio.move_on_after(grace):
            await _wait_gone(held)
        _forget(held)
        held = claim(identity, job_id)  # also what forked meanwhile
        if not held:
            return f"{group} ({_processes(count)}) ended with SIGTERM after the server restarted"
        _send(held, signal.SIGKILL)
        with trio.move_on_after(KILL_WAIT):
            await _wait_gone(held)
        _forget(held)
        held = claim(identity, job_id)
        if held:
            return (f"{group}: {_processes(len(held))} still alive after SIGKILL "
                    "(stuck in the kernel)")
        return (f"{group} ({_processes(count)}) ended with SIGKILL after the server restarted: "
                f"SIGTERM left it running for {grace:g} s")
    finally:
        _forget(held)


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"
