"""Fixtures: a real server on a loopback port, real clients, real subprocesses."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from jobserver.auth import KeyRing
from jobserver.config import Config, load_config
from jobserver.server import Server, serve

from .pg import PgServer
from .pg import Unavailable as PgUnavailable
from .pg import running as running_pg
from .stores import BACKENDS, AnyStore, Backend

PY = sys.executable
# Jobs find `python3` and `python3 -m jobserver.progress` in this environment,
# as they would under an activated virtualenv.
os.environ["PATH"] = os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", "")
TEMPLATES = Path(__file__).parent / "templates.toml"


@dataclass
class Harness:
    server: Server
    client: httpx.AsyncClient
    admin: str
    alice: str
    bob: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def submit(self, template: str, params: dict[str, Any] | None = None, *,
                     token: str | None = None) -> dict[str, Any]:
        r = await self.client.post("/api/v1/jobs", json={"template": template,
                                                         "params": params or {}},
                                   headers=self.auth(token or self.alice))
        assert r.status_code == 201, r.text
        job: dict[str, Any] = r.json()
        return job

    async def job(self, job_id: str, *, token: str | None = None) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/jobs/{job_id}", headers=self.auth(token or self.admin))
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    async def work_dir_gone(self, job_id: str, *, timeout: float = 5.0) -> bool:
        """Whether the job's work dir is removed within `timeout` (it goes
        shortly after the job's end, batched: jobserver/workdirs.py)."""
        work = self.data_dir / "work" / job_id
        with trio.move_on_after(timeout):
            while work.exists():
                await trio.sleep(0.01)
        return not work.exists()

    async def wait(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        wanted = statuses or ("SUCCEEDED", "FAILED", "CANCELLED")
        with trio.fail_after(timeout):
            while True:
                job = await self.job(job_id)
                if job["status"] in wanted:
                    return job
                await trio.sleep(0.02)


def make_config(data_dir: Path, **overrides: Any) -> Config:
    config = load_config({"config_file": str(TEMPLATES), "data_dir": str(data_dir), "port": 0},
                         environ={})
    return Config(**{**{f: getattr(config, f) for f in config.__slots__}, **overrides})


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The test session's own PostgreSQL server (tests/pg.py); skips without one."""
    try:
        with running_pg() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of the test module's own, for tests that stop and
    start it (pause / resume): the session's is shared by other tests."""
    try:
        with running_pg() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")


@pytest.fixture
def database_url(pg_server: PgServer) -> str:
    """A fresh, empty PostgreSQL database of the session's server."""
    return pg_server.create_database()


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The store contract tests' backend: a fresh SQLite file, or a fresh
    PostgreSQL database of the session's server (tests/stores.py)."""
    if request.param == "postgres":
        return Backend("postgres", url=request.getfixturevalue("database_url"))
    return Backend("sqlite", path=tmp_path / "jobserver.db")


@pytest.fixture
async def store(stores: Backend, nursery: trio.Nursery) -> AnyStore:
    """A running store of `stores`' backend."""
    s = stores.new(linger=0)
    await nursery.start(s.run)
    return s


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def harness(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[Harness]:
    config = make_config(data_dir, kill_grace=1.0)
    server: Server = await nursery.start(serve, config)
    keys = KeyRing.load_or_create(data_dir)
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        yield Harness(server, client, keys.issue("root", "admin"), keys.issue("alice", "user"),
                      keys.issue("bob", "user"), data_dir)
    server.request_shutdown()


def _job_processes(marker: str) -> list[int]:
    """Processes whose environment names a work dir under `marker` (our jobs)."""
    found = []
    needle = f"JOBSERVER_WORK_DIR={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read() and pid_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def connection_errors() -> Iterator[list[logging.LogRecord]]:
    """Errors the front door logged for a connection (it survives them): a test
    fails on any it does not take out of this list itself."""
    handler = _Errors()
    logger = logging.getLogger("jobserver.frontdoor")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path) -> Iterator[None]:
    """After every test: no file descriptor left open, no job process left alive."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = set(os.listdir("/proc/self/fd")) - before
        orphans = _job_processes(str(tmp_path))
        if not (leaked or orphans) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    targets = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked
               if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not targets, f"file descriptors leaked: {targets}"
    assert not orphans, f"job processes left alive: {orphans}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
