"""Starting a job's child: its pipes on fds 0-3, posix_spawn(3) through ctypes,
the subprocess fallback, the program's lookup.

Rules: `spawn` is the one way in; every blocking step is one trip to a worker
thread; every fd has exactly one owner at every moment, so none leaks or is
closed twice; the child runs in its own session. What happens once it runs is
executor.py's.

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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from . import groups, syscalls

CONTROL_FD = 3
# Waiting for a child that something else reaped (SIGCHLD ignored), as subprocess does.
REAP_POLL = 0.002


@dataclass(frozen=True, slots=True)
class Ends:
    """Our ends of the child's pipes (stdin's only when it is given data)."""

    stdout: int
    stderr: int
    control: int
    stdin: int | None


def _open_pipes(ours: contextlib.ExitStack, theirs: contextlib.ExitStack, *,
                with_stdin: bool) -> tuple[Ends, tuple[int, int, int, int]]:
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
    return (Ends(stdout=out, stderr=err, control=ctl, stdin=stdin),
            (stdin_fd, out_fd, err_fd, ctl_fd))


class Child(Protocol):
    pid: int
    kill_at: float | None  # when SIGTERM turns into SIGKILL, once it was sent
    settled: bool  # the group has been ended (or given up on)

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def close(self) -> None: ...


async def spawn(argv: list[str], env: dict[str, str], cwd: str | None,
                 prepare: Callable[[], None] | None, *,
                 with_stdin: bool) -> tuple[Child, groups.Identity | None, Ends]:
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
                pid, status = syscalls.reap(self.pid)  # WNOHANG, keeping the GIL
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as subprocess does
                pid, status = self.pid, 0
            if pid == 0:  # not reapable yet
                await trio.sleep(REAP_POLL)
                continue
            self._code = os.waitstatus_to_exitcode(status)
            self.close()
        return self._code

    def close(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            syscalls.close(self._pidfd)
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
              ) -> tuple[_PidfdChild, groups.Identity | None, Ends]:
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
