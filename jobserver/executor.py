"""The executor: run one command as a child process and report all it says.

Rules:
- The child runs in its own session (its pid is its process group id), with
  exactly `command.env` plus PYTHONUNBUFFERED=1 and JOBSERVER_CONTROL_FD=3;
  stdin is `stdin_data` or /dev/null; stdout, stderr and the control pipe (fd 3)
  are read by one task (`_Pumps`) in the caller's task tree, each pipe's lines
  in the order written. No shell, no thread of ours.
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
import select
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from . import groups, syscalls
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
    stdout: int  # our ends, non-blocking; closed by `execute`'s exit stack
    stderr: int
    control: int
    stdin: trio.lowlevel.FdStream | None


async def _supervise(child: Child, streams: _Streams, command: Command, sink: ExecutionSink,
                     kill_grace: float, max_line: int, stopper: Stopper) -> ExitInfo:
    activity = Activity()
    pumps = _Pumps([("stdout", streams.stdout, _lines_to(sink, "stdout")),
                    ("stderr", streams.stderr, _lines_to(sink, "stderr")),
                    ("control", streams.control, _control_to(sink))], max_line, activity)
    feeding = trio.CancelScope()
    watching = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pumps.run)
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
        pumps.drain(DRAIN_IDLE, trio.current_time() + DRAIN_LIMIT)
    abandoned = pumps.abandoned
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


class _Pipe:
    __slots__ = ("fd", "handle", "name", "since", "splitter")

    def __init__(self, name: str, fd: int, handle: _Handler, max_line: int) -> None:
        self.name, self.fd, self.handle = name, fd, handle
        self.splitter = LineSplitter(max_line)
        self.since = 0.0  # trio time its current wait for data began


class _Pumps:
    """Reads the child's pipes (non-blocking fds, not ours to close) to their
    ends in one task, handing each read's complete lines on, pipe by pipe in the
    order read. First every pipe is read as it is (a job that is already over
    never waits); then the ones that would block are waited for together on an
    epoll set of our own, the one fd trio waits on. One read per ready pipe per
    round, so none starves the others; a round that did not wait yields once."""

    def __init__(self, pipes: Sequence[tuple[str, int, _Handler]], max_line: int,
                 activity: Activity | None = None) -> None:
        self._pipes = [_Pipe(name, fd, handle, max_line) for name, fd, handle in pipes]
        self._order = [p.name for p in self._pipes]
        self._activity = activity or Activity()
        self._abandoned: list[str] = []  # given up on: held open from outside the group
        self.done = False
        self._idle = math.inf  # once draining: how long a pipe may stay silent,
        self._until = math.inf  # and when reading stops
        self._waiting: trio.CancelScope | None = None
        self._epoll: select.epoll | None = None

    @property
    def abandoned(self) -> list[str]:
        return sorted(self._abandoned, key=self._order.index)

    async def run(self) -> None:
        try:
            ready = list(self._pipes)
            while True:
                blocked = False
                for pipe in ready:
                    blocked |= await self._read(pipe)
                if not self._pipes:
                    break
                if trio.current_time() >= self._until:
                    await self._give_up(list(self._pipes))
                    break
                if blocked:
                    ready = await self._wait()
                else:  # everything was readable: let the others run, then read on
                    await trio.lowlevel.checkpoint()
                    ready = list(self._pipes)
            self.done = True
        finally:
            if self._epoll is not None:
                trio.lowlevel.notify_closing(self._epoll.fileno())
                self._epoll.close()

    def drain(self, idle: float, until: float) -> None:
        """From now on, give up on a pipe after `idle` seconds without data, and
        on all at `until` (trio time)."""
        now = trio.current_time()
        self._idle, self._until = idle, until
        for pipe in self._pipes:
            pipe.since = now
        if self._waiting is not None:
            self._waiting.deadline = self._deadline()

    def _deadline(self) -> float:
        return min([p.since + self._idle for p in self._pipes] + [self._until])

    async def _read(self, pipe: _Pipe) -> bool:
        """One read of `pipe`, its lines handed on; True if it would block."""
        try:
            data = syscalls.read(pipe.fd, CHUNK)
        except BlockingIOError:
            if self._epoll is None:  # from now on, every pipe left is waited for
                self._epoll = select.epoll(len(self._pipes))
                for open_pipe in self._pipes:
                    self._epoll.register(open_pipe.fd, select.EPOLLIN)
            return True
        if data:
            self._activity.last = trio.current_time()
            lines = pipe.splitter.feed(data)
            if lines:
                await pipe.handle(time.time(), lines)
            pipe.since = trio.current_time()
            return False
        await self._end(pipe)
        return False

    async def _wait(self) -> list[_Pipe]:
        """The pipes that are readable (or at their end), once some are; the
        pipes past their drain deadline are given up on."""
        assert self._epoll is not None
        with trio.CancelScope(deadline=self._deadline()) as scope:
            self._waiting = scope
            try:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
            finally:
                self._waiting = None
        if scope.cancelled_caught:
            now = trio.current_time()
            await self._give_up([p for p in self._pipes
                                 if p.since + self._idle <= now or now >= self._until])
        fds = {fd for fd, _ in self._epoll.poll(0)}
        return [p for p in self._pipes if p.fd in fds]

    async def _give_up(self, pipes: list[_Pipe]) -> None:
        for pipe in pipes:
            self._abandoned.append(pipe.name)
            await self._end(pipe)

    async def _end(self, pipe: _Pipe) -> None:
        """No more reads of `pipe`; what is left of its last line goes on."""
        self._pipes.remove(pipe)
        if self._epoll is not None:
            self._epoll.unregister(pipe.fd)
        lines = pipe.splitter.close()
        if lines:
            await pipe.handle(time.time(), lines)


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
    """Our ends, each closed by `ours`; no checkpoint. The pipes' fds are never
    waited on by trio itself (only `_Pumps`' own epoll is), so a plain close
    (one that keeps the GIL, syscalls.py)."""
    for fd in (ends.stdout, ends.stderr, ends.control):
        ours.callback(syscalls.close, fd)
    stdin = None
    if ends.stdin is not None:
        stdin = trio.lowlevel.FdStream(ends.stdin)
        ours.callback(stdin.close)
    return _Streams(stdout=ends.stdout, stderr=ends.stderr, control=ends.control, stdin=stdin)
