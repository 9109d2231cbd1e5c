"""A whole server on PostgreSQL: `database_url` from its config file, a job
with output read back over REST, and a restart on the same database that runs
what was left queued. The data directory then holds keys, never a database."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import httpx
import psycopg
import trio

from jobserver.auth import KeyRing
from jobserver.config import load_config
from jobserver.server import Server, serve
from jobserver.store import postgres_blocking

from .conftest import PY, TEMPLATES
from .procserver import get_job, submit, wait_status


def config_file(tmp_path: Path, database_url: str) -> Path:
    """The suite's templates with one slot and the test's database."""
    text = TEMPLATES.read_text()
    assert "[server]\nslots = 2\n" in text
    path = tmp_path / "jobserver.toml"
    path.write_text(text.replace("[server]\nslots = 2\n",
                                 f"[server]\nslots = 1\ndatabase_url = {database_url!r}\n"))
    return path


async def test_a_server_on_postgresql_runs_jobs_and_recovers_its_queue(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    config = load_config({"config_file": str(config_file(tmp_path, database_url)),
                          "data_dir": str(data_dir), "port": 0}, environ={})
    config = dataclasses.replace(config, kill_grace=1.0)
    assert config.database_url == database_url

    async with trio.open_nursery() as n:
        server: Server = await n.start(serve, config)
        token = KeyRing.load_or_create(data_dir).issue("alice", "user")
        done = await submit(server.url, token, "exit", {"code": 0})
        await wait_status(server.url, token, done, "SUCCEEDED")
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            events = (await client.get(f"/api/v1/jobs/{done}/events")).json()["events"]
            assert [e["type"] for e in events if e["type"] == "log"] == ["log", "log"]
            assert {e["line"] for e in events if e["type"] == "log"} == {"out line", "err line"}
            assert events[-1]["type"] == "finished"
            logs = (await client.get(f"/api/v1/jobs/{done}/logs")).text.splitlines()
            assert sorted(logs) == ["err line", "out line"]
        running = await submit(server.url, token, "sleep", {"seconds": 0.5})
        await wait_status(server.url, token, running, "RUNNING")
        queued = await submit(server.url, token, "echo", {"message": "after the restart"})
        assert (await get_job(server.url, token, queued))["status"] == "QUEUED"
        server.request_shutdown()
    assert not (data_dir / "jobserver.db").exists()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT id, status FROM jobs WHERE status = 'QUEUED'"
                            " ORDER BY created_at").fetchall() == [(running, "QUEUED"),
                                                                   (queued, "QUEUED")]

    async with trio.open_nursery() as n:
        server = await n.start(serve, config)
        await wait_status(server.url, token, running, "SUCCEEDED")
        await wait_status(server.url, token, queued, "SUCCEEDED")
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            text = (await client.get(f"/api/v1/jobs/{queued}/logs")).text
            assert text.splitlines() == ["after the restart"]
            types = [e["type"] for e in
                     (await client.get(f"/api/v1/jobs/{running}/events")).json()["events"]]
            assert "bounce" in types and types.count("started") == 2
            # What the first server wrote is still there.
            assert (await client.get(f"/api/v1/jobs/{done}/logs")).status_code == 200
        server.request_shutdown()


def test_serve_refuses_a_newer_schema_naming_both_versions(
    tmp_path: Path, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobserver_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO jobserver_schema VALUES (99)")
    done = subprocess.run(
        [PY, "-m", "jobserver", "serve", "--port", "0", "--data-dir", str(tmp_path / "d"),
         "--config", str(TEMPLATES)],
        env={"JOBSERVER_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    version = postgres_blocking.SCHEMA_VERSION
    assert (f"jobserver: the PostgreSQL database's schema version 99 is newer than this "
            f"server's ({version})") in done.stderr
    assert "Traceback" not in done.stderr
