"""The GIL-keeping system calls behave as the `os` functions they stand for."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from jobserver import syscalls


def test_read_and_close_a_non_blocking_pipe() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError):
        syscalls.read(r, 10)
    os.write(w, b"one\ntwo\n")
    assert syscalls.read(r, 4) == b"one\n"
    assert syscalls.read(r, 1 << 20) == b"two\n"  # more than its buffer: what there is
    syscalls.close(w)
    assert syscalls.read(r, 10) == b""
    syscalls.close(r)
    with pytest.raises(OSError, match=os.strerror(errno.EBADF)) as closed:
        syscalls.close(r)
    assert closed.value.errno == errno.EBADF


def test_reap_does_not_wait_and_gives_the_status() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"],
                             stdin=subprocess.PIPE)
    try:
        assert syscalls.reap(child.pid) == (0, 0)  # still running: no wait
        assert child.stdin is not None
        child.stdin.close()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        pid, status = syscalls.reap(child.pid)
        assert pid == child.pid and os.waitstatus_to_exitcode(status) == 3
        with pytest.raises(ChildProcessError):
            syscalls.reap(child.pid)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            still = syscalls.reap(child.pid) == (0, 0)
        except ChildProcessError:
            still = False  # reaped here
        if still:
            child.kill()
            os.waitpid(child.pid, 0)
        child.returncode = 0  # reaped: Popen must not wait for it
