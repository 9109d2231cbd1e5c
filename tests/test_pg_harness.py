"""The suite's own PostgreSQL server (tests/pg.py) starts, serves a fresh
database per test on loopback, and keeps them apart."""

from __future__ import annotations

import psycopg

from .pg import PgServer


def test_each_test_gets_its_own_empty_database(pg_server: PgServer, database_url: str) -> None:
    assert pg_server.host == "127.0.0.1"
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 120000
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE marker (x int)")
    other = pg_server.create_database()
    assert other != database_url
    with psycopg.connect(other, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'marker'"
        ).fetchone() == (0,)
