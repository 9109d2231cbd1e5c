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

Putting the control pipe on fd 3: `subprocess` places only fds 0-2, and the usual
trick (`preexec_fn` doing `os.dup2`) makes it fork the whole server and run Python
in the child before exec: unsafe with threads, say the docs (and trio spawns from
a worker thread), and slow: `true` through `execute` took 3.4 ms with 27 MB of
server memory and 17 ms with 330 MB, against 0.8 ms for a plain spawn. So on
glibc (>= 2.34) we call posix_spawn(3) through ctypes: clone(CLONE_VFORK), no
Python in the child, thread-safe; file actions dup2 the pipes onto 0-3, chdir and
close the rest, and the process is waited for on a pidfd. `execute` of `true`
costs 0.83 ms that way, whatever the server's size. Elsewhere we fall back to
`trio.lowlevel.open_process` with `preexec_fn`. posix_spawn returns once the
child has exec'd (or failed to), so the spawn, with the `Command.prepare` work
before it, the program's lookup and the /proc read after it, is one trip to a
worker thread: the trio thread never waits for an exec or a disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from . import groups
from .core import control
from .core.lines import LineSplitter
from .groups import KILL_WAIT
from .watchdog import Activity, Stopper, watch_idle

CONTROL_ENV = "JOBSERVER_CONTROL_FD"
CONTROL_FD = 3
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
        child, identity, ends = await _spawn(argv, env, command.cwd, command.prepare,
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


async def _supervise(child: _Child, streams: _Streams, command: Command, sink: ExecutionSink,
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

async def _end_group(child: _Child, grace: float) -> None:
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


async def _wait_group(child: _Child) -> None:
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


@dataclass(frozen=True, slots=True)
class _Ends:
    """Our ends of the child's pipes (stdin's only when it is given data)."""

    stdout: int
    stderr: int
    control: int
    stdin: int | None


def _open_pipes(ours: contextlib.ExitStack, theirs: contextlib.ExitStack, *,
                with_stdin: bool) -> tuple[_Ends, tuple[int, int, int, int]]:
    """Our ends (closed by `ours` unless it is emptied) and the child's fds 0-3
    (by `theirs`). Every fd has exactly one owner, so none is closed twice.
    Blocking (a pipe or /dev/null can take a while under load): worker thread."""
    def our_end(fd: int, *, reader: bool) -> int:
        ours.callback(os.close, fd)
        if reader:
            os.set_blocking(fd, False)  # _PipeReader's; the child's end stays blocking
        return fd

    def child_end(fd: int) -> int:
        theirs.callback(os.close, fd)
        if fd <= CONTROL_FD:  # they go to 0-3 in order: none may start there
            fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CONTROL_FD + 1)
            theirs.callback(os.close, fd)
        return fd

    stdin: int | None = None
    if with_stdin:
        r, w = os.pipe()
        stdin, stdin_fd = our_end(w, reader=False), child_end(r)
    else:
        stdin_fd = child_end(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    ends = []
    for _ in range(3):  # stdout, stderr, control
        r, w = os.pipe()
        ends.append((our_end(r, reader=True), child_end(w)))
    (out, out_fd), (err, err_fd), (ctl, ctl_fd) = ends
    return (_Ends(stdout=out, stderr=err, control=ctl, stdin=stdin),
            (stdin_fd, out_fd, err_fd, ctl_fd))


def _streams(ours: contextlib.ExitStack, ends: _Ends) -> _Streams:
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


class _Child(Protocol):
    pid: int
    kill_at: float | None  # when SIGTERM turns into SIGKILL, once it was sent
    settled: bool  # the group has been ended (or given up on)

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def close(self) -> None: ...


async def _spawn(argv: list[str], env: dict[str, str], cwd: str | None,
                 prepare: Callable[[], None] | None, *,
                 with_stdin: bool) -> tuple[_Child, groups.Identity | None, _Ends]:
    """The child, started, its identity and our ends of its pipes. Every blocking
    step (`prepare`, the pipes, the program's lookup, posix_spawn, which waits
    for the exec, the pidfd, /proc) is one trip to a worker thread; a cancel
    before it leaves no child, and one during it waits for the child (whose
    caller ends it)."""
    spawner = _posix_spawner()
    if spawner is not None:
        return await trio.to_thread.run_sync(spawner.start, argv, env, cwd, prepare, with_stdin)
    with contextlib.ExitStack() as ours, contextlib.ExitStack() as theirs:
        if prepare is not None:
            await trio.to_thread.run_sync(prepare)
        ends, fds = _open_pipes(ours, theirs, with_stdin=with_stdin)
        child = await _spawn_popen(argv, env, cwd, fds)
        ours.pop_all()
    return child, groups.identify(child.pid), ends


# -- posix_spawn(3) through ctypes (glibc) --

class _PidfdChild:
    """Our child, waited for on a pidfd (readable when it exits) and reaped here."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.kill_at: float | None = None
        self.settled = False
        self._pidfd = pidfd
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        while self._code is None:
            await trio.lowlevel.wait_readable(self._pidfd)  # readable once it has exited
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222 (no wait)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as subprocess does
                pid, status = self.pid, 0
            if pid == 0:  # not reapable yet
                await trio.sleep(GROUP_POLL_MIN)
                continue
            self._code = os.waitstatus_to_exitcode(status)
            self.close()
        return self._code

    def close(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


class _PosixSpawner:
    # <spawn.h> flags, glibc's values.
    SETSIGDEF, SETSIGMASK, SETSID = 0x04, 0x08, 0x80
    # glibc's opaque types, with room to spare: posix_spawn_file_actions_t is 80
    # bytes, posix_spawnattr_t 336 and sigset_t 128 on x86-64 and aarch64.
    OPAQUE = 1024

    def __init__(self) -> None:
        # posix_spawn itself (it waits for the exec) lets go of the GIL; the
        # file actions only fill memory, so they keep it (PyDLL): each let-go
        # would be a handoff with the trio thread when it is busy.
        libc = ctypes.CDLL(None, use_errno=True)
        keep = ctypes.PyDLL(None, use_errno=True)
        ptr, cint, argp = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)

        def fn(name: str, *args: object, lib: ctypes.CDLL = libc) -> Callable[..., int]:
            f = getattr(lib, name)
            f.argtypes, f.restype = list(args), cint
            return f  # type: ignore[no-any-return]

        self._actions_init = fn("posix_spawn_file_actions_init", ptr, lib=keep)
        self._actions_destroy = fn("posix_spawn_file_actions_destroy", ptr, lib=keep)
        self._dup2 = fn("posix_spawn_file_actions_adddup2", ptr, cint, cint, lib=keep)
        self._chdir = fn("posix_spawn_file_actions_addchdir_np", ptr, ctypes.c_char_p, lib=keep)
        self._closefrom = fn("posix_spawn_file_actions_addclosefrom_np", ptr, cint, lib=keep)
        self._posix_spawn = fn("posix_spawn", ctypes.POINTER(cint), ctypes.c_char_p, ptr, ptr,
                               argp, argp)
        # One attribute set for every spawn: a new session, no blocked signals,
        # every signal at its default disposition (the server ignores SIGPIPE).
        # The set is written by hand: sigfillset leaves out glibc's internal
        # signals (32, 33), which posix_spawn would then hand to the program ignored.
        self._attr = ctypes.create_string_buffer(self.OPAQUE)
        signals = ctypes.create_string_buffer(self.OPAQUE)  # zeroed: sigemptyset
        _ok(fn("posix_spawnattr_init", ptr)(self._attr))
        _ok(fn("posix_spawnattr_setsigmask", ptr, ptr)(self._attr, signals))
        ctypes.memset(signals, 0xFF, 8)  # signals 1-64, bit (n - 1) for signal n
        _ok(fn("posix_spawnattr_setsigdefault", ptr, ptr)(self._attr, signals))
        _ok(fn("posix_spawnattr_setflags", ptr, ctypes.c_short)(
            self._attr, self.SETSIGDEF | self.SETSIGMASK | self.SETSID))

    def start(self, argv: list[str], env: Mapping[str, str], cwd: str | None,
              prepare: Callable[[], None] | None, with_stdin: bool,
              ) -> tuple[_PidfdChild, groups.Identity | None, _Ends]:
        """`prepare`, the pipes, the child on them and its identity: blocking, for
        a worker thread. The child's ends are closed once it has them, ours too
        if it could not start."""
        if prepare is not None:
            prepare()
        with contextlib.ExitStack() as ours, contextlib.ExitStack() as theirs:
            ends, fds = _open_pipes(ours, theirs, with_stdin=with_stdin)
            child = self.spawn(argv, env, cwd, fds)
            ours.pop_all()
        return child, groups.identify(child.pid), ends

    def spawn(self, argv: list[str], env: Mapping[str, str], cwd: str | None,
              fds: Sequence[int]) -> _PidfdChild:
        try:
            return self._spawn(_find_program(argv[0], env, cwd), argv, env, cwd, fds)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES) or not _forget_program(argv[0], env):
                raise
        # The program found earlier is gone (or no longer runs): look again.
        return self._spawn(_find_program(argv[0], env, cwd), argv, env, cwd, fds)

    def _spawn(self, path: bytes, argv: list[str], env: Mapping[str, str], cwd: str | None,
               fds: Sequence[int]) -> _PidfdChild:
        ct = ctypes
        c_argv = (ct.c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
        c_env = (ct.c_char_p * (len(env) + 1))(
            *(os.fsencode(f"{k}={v}") for k, v in env.items()), None)
        actions = ct.create_string_buffer(self.OPAQUE)
        pid = ct.c_int()
        _ok(self._actions_init(actions))
        try:
            for target, fd in enumerate(fds):
                _ok(self._dup2(actions, fd, target))
            _ok(self._closefrom(actions, len(fds)))
            if cwd is not None:
                _ok(self._chdir(actions, os.fsencode(cwd)))
            code = self._posix_spawn(ct.byref(pid), path, actions, self._attr, c_argv, c_env)
        finally:
            self._actions_destroy(actions)
        if code:
            blame = cwd if cwd is not None and not os.path.isdir(cwd) else argv[0]
            raise OSError(code, os.strerror(code), blame)
        try:
            pidfd = os.pidfd_open(pid.value)
        except OSError:
            os.killpg(pid.value, signal.SIGKILL)
            os.waitpid(pid.value, 0)
            raise
        return _PidfdChild(pid.value, pidfd)


def _ok(code: int) -> None:
    if code:
        raise OSError(code, os.strerror(code))


# Programs found on a PATH, (PATH, name) -> (path, found at, monotonic): reused
# for FOUND_TTL seconds (a program installed earlier on the PATH is picked up
# after that), dropped at once when spawning the path found fails. Only PATHs
# of absolute directories, whose answer does not depend on the cwd. Bounded.
FOUND_TTL = 1.0
FOUND_MAX = 256
_found: dict[tuple[str | None, str], tuple[bytes, float]] = {}


def _find_program(program: str, env: Mapping[str, str], cwd: str | None) -> bytes:
    """The path to exec for `program`, searched in the child's PATH as execvpe would."""
    if "/" in program:
        return os.fsencode(program)  # relative to `cwd`: the chdir comes first
    key = (env.get("PATH"), program)
    hit = _found.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < FOUND_TTL:
        return hit[0]
    directories = os.get_exec_path(env)
    path = _search(program, directories, cwd)
    if all(os.path.isabs(d) for d in directories):
        if len(_found) >= FOUND_MAX:
            _found.clear()
        _found[key] = (path, now)
    return path


def _forget_program(program: str, env: Mapping[str, str]) -> bool:
    """Drop what `_find_program` remembers of `program`; False when it had nothing."""
    return _found.pop((env.get("PATH"), program), None) is not None


def _search(program: str, directories: Sequence[str], cwd: str | None) -> bytes:
    denied = False
    for directory in directories:
        path = os.path.join(directory, program)
        here = os.path.join(cwd, path) if cwd is not None else path
        if os.path.isfile(here):
            if os.access(here, os.X_OK):
                return os.fsencode(path)
            denied = True
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code), program)


@functools.cache
def _posix_spawner() -> _PosixSpawner | None:
    """posix_spawn on glibc >= 2.34 (closefrom_np) with pidfds (Linux >= 5.3), or None."""
    if sys.platform != "linux":
        return None
    try:
        libc, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        if libc != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 34):
            return None
        os.close(os.pidfd_open(os.getpid()))
        return _PosixSpawner()
    except (ValueError, OSError, AttributeError):
        return None


# -- the fallback: subprocess, with preexec_fn putting the control pipe on fd 3 --

class _ProcessChild:
    def __init__(self, process: trio.Process) -> None:
        self.pid = process.pid
        self.kill_at: float | None = None
        self.settled = False
        self._process = process

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def close(self) -> None:
        pass


async def _spawn_popen(argv: list[str], env: dict[str, str], cwd: str | None,
                       fds: tuple[int, int, int, int]) -> _ProcessChild:
    stdin, stdout, stderr, ctl = fds
    # subprocess keeps the pass_fds at their numbers and closes the rest after
    # preexec_fn. If our fd 3 is free, the pipe goes there and is passed as is;
    # else our fd 3 is passed and preexec_fn puts the pipe over it in the child.
    with contextlib.ExitStack() as stack:
        low = fcntl.fcntl(ctl, fcntl.F_DUPFD_CLOEXEC, CONTROL_FD)
        stack.callback(os.close, low)
        if low != CONTROL_FD:
            stack.close()
        try:
            process = await trio.lowlevel.open_process(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                start_new_session=True, pass_fds=(CONTROL_FD,),
                preexec_fn=None if low == CONTROL_FD else functools.partial(
                    os.dup2, ctl, CONTROL_FD))
        except subprocess.SubprocessError as exc:  # preexec_fn failed in the child
            raise OSError(errno.EBADF, str(exc), argv[0]) from exc
    return _ProcessChild(process)
