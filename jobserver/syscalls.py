"""System calls that never block, made from the trio thread without letting go
of the GIL.

Rules: only calls that cannot wait (close of a pipe or pidfd, read of a
non-blocking pipe, waitpid with WNOHANG) go through here. `os.close`, `os.read`
and `os.waitpid` release the GIL around the call; under load a worker thread
(a spawn, a commit) takes it then, and the trio thread waits for it back, up to
the switch interval (5 ms), for a call of a microsecond. Calling libc through
ctypes.PyDLL keeps the GIL. Elsewhere than Linux, the `os` functions.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

_BUFFER = 65536


def _bind() -> tuple[Callable[[int], None], Callable[[int, int], bytes],
                     Callable[[int], tuple[int, int]]] | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        c_close, c_read, c_waitpid = libc.close, libc.read, libc.waitpid
    except (OSError, AttributeError):
        return None
    c_close.argtypes, c_close.restype = [ctypes.c_int], ctypes.c_int
    c_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    c_read.restype = ctypes.c_ssize_t
    c_waitpid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    c_waitpid.restype = ctypes.c_int
    buffer = ctypes.create_string_buffer(_BUFFER)  # the trio thread's only
    status = ctypes.c_int()

    def fail() -> None:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))

    def close(fd: int) -> None:
        if c_close(fd) < 0 and ctypes.get_errno() != 4:  # EINTR: closed all the same
            fail()

    def read(fd: int, size: int) -> bytes:
        n = c_read(fd, buffer, min(size, _BUFFER))
        if n < 0:
            fail()
        return ctypes.string_at(buffer, n)

    def reap(pid: int) -> tuple[int, int]:
        status.value = 0
        got = c_waitpid(pid, ctypes.byref(status), os.WNOHANG)
        if got < 0:
            fail()
        return got, status.value if got else 0

    return close, read, reap


def _os_reap(pid: int) -> tuple[int, int]:
    return os.waitpid(pid, os.WNOHANG)


_bound = _bind()
close: Callable[[int], None] = _bound[0] if _bound else os.close
read: Callable[[int, int], bytes] = _bound[1] if _bound else os.read
# (pid, status) of `pid` if it has exited and is reaped now, (0, 0) if not yet.
reap: Callable[[int], tuple[int, int]] = _bound[2] if _bound else _os_reap
