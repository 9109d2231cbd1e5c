"""PostgreSQL databases for the benches that measure jobserver on it: a
throwaway server of the bench's own (tests/pg.py: initdb + pg_ctl into a temp
dir, loopback only, fsync off, stopped on exit), or a server the user names
with `--database-url`, where the bench creates databases `jobserver_bench_N`
and drops them on exit (nothing else there is touched).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from .targets import TargetUnavailable

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """A server's URL (its maintenance database): `url`, else a throwaway server."""
    if url is not None:
        yield url
        return
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.pg import PgServer, Unavailable

    try:
        server = PgServer()
        server.start()
    except Unavailable as exc:
        raise TargetUnavailable(f"no PostgreSQL server: {exc}") from None
    try:
        yield server.url()
    finally:
        server.stop()


@contextmanager
def postgres_databases(url: str | None = None) -> Iterator[Callable[[], str]]:
    """A function that makes a fresh, empty database per call and gives its URL."""
    made: list[str] = []
    with postgres_server(url) as server:
        parts = urlsplit(server)
        names = count(1)

        def new_database() -> str:
            name = f"jobserver_bench_{next(names)}"
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                admin.execute(f'CREATE DATABASE "{name}"')
            made.append(name)
            return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))

        try:
            yield new_database
        finally:
            with psycopg.connect(server, autocommit=True) as admin:
                for name in made:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_size(url: str) -> int:
    """Bytes the database takes on disk."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row is not None else 0
