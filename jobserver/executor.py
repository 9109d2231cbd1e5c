"""The executor: run one command as a child process and report all it says.

Rules:
- The child runs in its own session (its pid is its process group id), with
  exactly `command.env` plus PYTHONUNBUFFERED=1 and JOBSERVER_CONTROL_FD=3;
  stdin is `stdin_data` or /dev/null; stdout, stderr and the control pipe (fd 3)
  are read by three pumps in the caller's task tree. No shell, no thread of ours.
- Timeout, cancellation, the idle watch (`Command.idle_timeout`: nothing read
  from any pipe for that long) and a `Stopper` (watchdog.py) end the whole
  group: SIGTERM, then SIGKILL after `kill_grace`. When the leader exits by
  itself, what is left of its group is ended the same way. However `execute`
  leaves, no live process of the group is left behind; the cleanup in
  `finally` is shielded and bounded.
- Output is read to its end before `execute` returns (no line lost). A pipe that
  something outside the group keeps open is abandoned after DRAIN_IDLE seconds of
  silence, and reading stops DRAIN_LIMIT after the group is gone, with a warning.
Starting the child (pipes on fds 0-3, posix_spawn) is spawning.py's.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from . import groups
from .core import control
from .core.lines import LineSplitter
from .groups import KILL_WAIT
from .spawning import CONTROL_FD, Child, Ends, spawn
from .watchdog import Activity, Stopper, watch_idle

CONTROL_ENV = "JOBSERVER_CONTROL_FD"
# Bytes per read from a pipe: the default pipe buffer, so one read empties it.
CHUNK = 65536
# After the group is gone, a pipe silent this long is held open by a process
# outside the group (it left the session): stop reading it ...
DRAIN_IDLE = 0.5
# ... and stop reading after this anyway, however chatty such a process is.
# (Only reads are cut short: lines already read always reach the sink.)
DRAIN_LIMIT = 5.0
# Polling for the group's last members (not our children, so no wait() for them).
GROUP_POLL_MIN = 0.002
GROUP_POLL_MAX = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None
    timeout: float | None
    stdin_data: bytes | None = None
    step: str | None = None
    # No output read and no control message for this long ends the group (the
    # idle-output watchdog), as the timeout does.
    idle_timeout: float | None = None
    # Blocking work the command needs done first (making its working
    # directory): run in the worker thread that spawns it, just before; an
    # OSError from it is a start error.
    prepare: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitInfo:
    exit_code: int | None  # negative signal number when killed by a signal
    signal: int | None
    timed_out: bool
    start_error: str | None
    # Why the server ended the group, when it did: "timeout", "idle", or the
    # reason given to `Stopper.stop`.
    ended_by: str | None = None


class ExecutionSink(Protocol):
    async def started(self, pid: int, command: str, step: str | None, *,
                      identity: groups.Identity | None) -> None: ...

    async def lines(self, stream: str, ts: float, lines: list[str]) -> None: ...

    async def control(self, messages: list[control.Message]) -> None:
        """The control messages of one read of the pipe, in order (never empty)."""

    async def warning(self, message: str) -> None: ...


async def execute(command: Command, sink: ExecutionSink, *, kill_grace: float = 5.0,
                  max_line: int = 65536, stopper: Stopper | None = None) -> ExitInfo:
    """Run `command` to its end, reporting to `sink`; see the module's rules."""
    argv = list(command.argv)
    env = {**command.env, "PYTHONUNBUFFERED": "1", CONTROL_ENV: str(CONTROL_FD)}
    problem = _check(argv, env, command.cwd)
    if problem is not None:
        await trio.lowlevel.checkpoint()
        return _not_started(problem)
    try:
        child, identity, ends = await spawn(argv, env, command.cwd, command.prepare,
                                             with_stdin=command.stdin_data is not None)
    except OSError as exc:  # no such program or directory, no permission, no fds
        return _not_started(_describe(exc, argv[0], command.cwd))
    with contextlib.ExitStack() as ours:  # no checkpoint until each fd has its owner here
        streams = _streams(ours, ends)
        ours.callback(child.close)
        try:
            await sink.started(child.pid, shlex.join(argv), command.step, identity=identity)
            return await _supervise(child, streams, command, sink, kill_grace, max_line,
                                    stopper or Stopper())
        finally:
            if not child.settled:
                with trio.CancelScope(shield=True), trio.move_on_after(kill_grace + KILL_WAIT):
                    await _end_group(child, kill_grace)


# ---- the run ------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class _Streams:
    stdout: _PipeReader
    stderr: _PipeReader
    control: _PipeReader
    stdin: trio.lowlevel.FdStream | None


class _Readable(Protocol):
    async def receive_some(self, max_bytes: int) -> bytes: ...


class _PipeReader:
    """Our end of a pipe from the child, made non-blocking and close-on-exec when
    it was opened: trio.lowlevel.FdStream's reading, without its fcntl calls on
    wrapping and on closing. A read that did not wait yields once afterwards
    (shielded: what was read is not lost to a cancel), so a pipe that never
    runs dry cannot keep the other tasks from running."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def receive_some(self, max_bytes: int) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                waited = True
                continue
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def close(self) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


async def _supervise(child: Child, streams: _Streams, command: Command, sink: ExecutionSink,
                     kill_grace: float, max_line: int, stopper: Stopper) -> ExitInfo:
    activity = Activity()
    pumps = [
        _Pump("stdout", streams.stdout, _lines_to(sink, "stdout"), max_line, activity),
        _Pump("stderr", streams.stderr, _lines_to(sink, "stderr"), max_line, activity),
        _Pump("control", streams.control, _control_to(sink), max_line, activity),
    ]
    feeding = trio.CancelScope()
    watching = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        for pump in pumps:
            nursery.start_soon(pump.run)
        if streams.stdin is not None and command.stdin_data:
            nursery.start_soon(_feed, streams.stdin, command.stdin_data, feeding)
        elif streams.stdin is not None:
            streams.stdin.close()
        with trio.CancelScope() as waiting:
            stopper.scope = waiting
            if command.timeout is not None:
                waiting.deadline = trio.current_time() + command.timeout
            if command.idle_timeout is not None:
                nursery.start_soon(watch_idle, activity, command.idle_timeout, stopper, watching)
            if stopper.reason is None:
                await child.wait()
        stopper.scope, stopper.over = None, True
        watching.cancel()
        feeding.cancel()
        await _end_group(child, kill_grace)
        until = trio.current_time() + DRAIN_LIMIT
        for pump in pumps:
            pump.drain(DRAIN_IDLE, until)
    abandoned = [p.name for p in pumps if p.abandoned]
    if abandoned:
        await sink.warning(f"stopped reading {', '.join(abandoned)}: still held open by a process "
                           "that left the job's process group")
    code = child.returncode
    ended_by = stopper.reason or ("timeout" if waiting.cancelled_caught else None)
    return ExitInfo(exit_code=code, signal=-code if code is not None and code < 0 else None,
                    timed_out=ended_by == "timeout", start_error=None, ended_by=ended_by)


def _lines_to(sink: ExecutionSink, stream: str) -> _Handler:
    async def handle(ts: float, lines: list[str]) -> None:
        await sink.lines(stream, ts, lines)
    return handle


def _control_to(sink: ExecutionSink) -> _Handler:
    """One read's control messages go on together (one record, one write, for a
    job reporting progress in a tight loop); a bad line's warning keeps its place."""
    async def handle(ts: float, lines: list[str]) -> None:
        messages: list[control.Message] = []
        for line in lines:
            if not line or line.isspace():
                continue
            try:
                messages.append(control.parse(line))
            except control.ControlError as exc:
                if messages:
                    await sink.control(messages)
                    messages = []
                await sink.warning(exc.reason)
        if messages:
            await sink.control(messages)
    return handle


_Handler = Callable[[float, list[str]], Awaitable[None]]


class _Pump:
    """Reads one pipe to its end, handing each read's complete lines on."""

    def __init__(self, name: str, stream: _Readable, handle: _Handler,
                 max_line: int, activity: Activity | None = None) -> None:
        self.name = name
        self._activity = activity or Activity()
        self.abandoned = False  # given up on: held open from outside the group
        self.done = False
        self._stream = stream
        self._handle = handle
        self._max_line = max_line
        self._idle = math.inf  # once draining: how long a read may wait,
        self._until = math.inf  # and when reading stops
        self._receiving: trio.CancelScope | None = None

    async def run(self) -> None:
        splitter = LineSplitter(self._max_line)
        activity = self._activity
        while data := await self._receive():
            activity.last = trio.current_time()
            lines = splitter.feed(data)
            if lines:
                await self._handle(time.time(), lines)
        lines = splitter.close()
        if lines:
            await self._handle(time.time(), lines)
        self.done = True

    def drain(self, idle: float, until: float) -> None:
        """From now on, give up on the pipe after `idle` seconds without data,
        or at `until` (trio time)."""
        self._idle, self._until = idle, until
        if self._receiving is not None:
            self._receiving.deadline = self._deadline()

    def _deadline(self) -> float:
        return min(trio.current_time() + self._idle, self._until)

    async def _receive(self) -> bytes:
        with trio.CancelScope(deadline=self._deadline()) as scope:
            self._receiving = scope
            try:
                return await self._stream.receive_some(CHUNK)
            finally:
                self._receiving = None
        self.abandoned = True
        return b""


async def _feed(stream: trio.lowlevel.FdStream, data: bytes, scope: trio.CancelScope) -> None:
    with scope:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the child closed its stdin: it did not want the rest
        finally:
            stream.close()


# ---- ending the process group ---------------------------------------------------

async def _end_group(child: Child, grace: float) -> None:
    """SIGTERM the child's group, SIGKILL it `grace` seconds later; return when
    the leader is reaped and no live process is left in the group (or when not
    even SIGKILL got there within KILL_WAIT). Called again, it carries on."""
    if child.returncode is None or groups.group_alive(child.pid):
        if child.kill_at is None:
            groups.signal_group(child.pid, signal.SIGTERM)
            child.kill_at = trio.current_time() + grace
        with trio.move_on_at(child.kill_at) as term:
            await _wait_group(child)
        if term.cancelled_caught:
            groups.signal_group(child.pid, signal.SIGKILL)
            with trio.move_on_after(KILL_WAIT):
                await _wait_group(child)
    child.settled = True


async def _wait_group(child: Child) -> None:
    await child.wait()
    delay = GROUP_POLL_MIN
    while groups.group_alive(child.pid):
        await trio.sleep(delay)
        delay = min(delay * 2, GROUP_POLL_MAX)


# ---- starting the child -----------------------------------------------------------

def _check(argv: list[str], env: Mapping[str, str], cwd: str | None) -> str | None:
    if not argv or not argv[0]:
        return "empty command"
    if any("\0" in a for a in argv) or (cwd is not None and "\0" in cwd):
        return "the command or its working directory contains a NUL character"
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            return f"invalid environment variable {key!r}"
    return None


def _not_started(reason: str) -> ExitInfo:
    return ExitInfo(exit_code=None, signal=None, timed_out=False, start_error=reason)


def _describe(exc: OSError, program: str, cwd: str | None) -> str:
    what = exc.filename if exc.filename is not None else program
    if cwd is not None and os.fsdecode(what) == cwd:
        return f"working directory {cwd}: {exc.strerror}"
    return f"{os.fsdecode(what)}: {exc.strerror or exc}"


def _streams(ours: contextlib.ExitStack, ends: Ends) -> _Streams:
    """Our ends, each closed by `ours`; no checkpoint."""
    def reader(fd: int) -> _PipeReader:
        stream = _PipeReader(fd)
        ours.callback(stream.close)
        return stream

    stdin = None
    if ends.stdin is not None:
        stdin = trio.lowlevel.FdStream(ends.stdin)
        ours.callback(stdin.close)
    return _Streams(stdout=reader(ends.stdout), stderr=reader(ends.stderr),
                    control=reader(ends.control), stdin=stdin)
