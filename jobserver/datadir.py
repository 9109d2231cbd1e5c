"""The data directory's lock: one server per data directory.

Rules: a server holds an exclusive `flock` on `jobserver.lock` in its data
directory from before it opens anything there until it has stopped; a second
server meeting the lock refuses to start (`DataDirInUse`) instead of taking
the first one's jobs, node id and keys for a crash's leftovers. The kernel
drops the lock with the process, so a killed server leaves none behind. The
lock's fd is not inherited by jobs (Python's fds are close-on-exec).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "jobserver.lock"


class StartRefused(Exception):
    """The server cannot start as configured; the message says why, in one line."""


class DataDirInUse(StartRefused):
    pass


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock for the `with` block, or raise `DataDirInUse`."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise DataDirInUse(
                f"data directory {data_dir} is in use by a running server (pid {holder}); "
                "each server needs a data directory of its own") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
