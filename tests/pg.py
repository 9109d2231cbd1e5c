"""A PostgreSQL server of the test suite's own: `initdb` and `pg_ctl` from the
machine's PostgreSQL (Debian's `postgresql` package, `scripts/install-postgres`)
into a temp dir, listening on a free loopback port only, stopped at the end.

Rules: one server per test session, a fresh database per test (`database`),
nothing left behind. initdb refuses to run as root, so as root the server runs
as the `postgres` user the package made. Without the binaries (or that user)
the tests that need it skip, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path

USER = "jobserver"  # the cluster's superuser (trust authentication, loopback only)
START_TIMEOUT = 60  # seconds for pg_ctl start -w


class Unavailable(Exception):
    """No PostgreSQL server can be started here (the reason is the message)."""


def find_binaries() -> Path | None:
    """The directory of initdb / pg_ctl: on PATH, else the newest of Debian's."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None and shutil.which("initdb") is not None:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """A throwaway cluster in a temp dir; `url(name)` names one of its databases."""

    def __init__(self) -> None:
        bindir = find_binaries()
        if bindir is None:
            raise Unavailable("PostgreSQL's initdb/pg_ctl not found (scripts/install-postgres)")
        self._bin = bindir
        self._run_as: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no postgres user") from None
            self._run_as = ["runuser", "-u", "postgres", "--"]
            self._owner = (pw.pw_uid, pw.pw_gid)
        self.root = Path(tempfile.mkdtemp(prefix="jobserver-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._names = count(1)
        self._started = False

    def _pg(self, program: str, *args: str) -> None:
        cmd = [*self._run_as, str(self._bin / program), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT + 30,
                              check=False)
        if done.returncode != 0:
            raise Unavailable(f"{program} failed ({done.returncode}): "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")

    def start(self) -> None:
        if self._owner is not None:
            os.chown(self.root, *self._owner)
        os.chmod(self.root, 0o700)
        self._pg("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions")
        self.resume()

    def pause(self) -> None:
        """Stop the server (fast: its connections are cut), keeping its data."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._started = False

    def resume(self) -> None:
        """Start a paused server again, on the same port."""
        options = (f"-c listen_addresses={self.host} -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=64MB")
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                 "-w", "-t", str(START_TIMEOUT), "start")
        self._started = True

    def stop(self) -> None:
        try:
            if self._started:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.root / "log").read_text()[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def running() -> Iterator[PgServer]:
    """A started server, stopped afterwards; `Unavailable` when there can be none."""
    server = PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
