"""Idempotent submits: the Idempotency-Key header of POST /api/v1/jobs and POST /api/jobs."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio

from jobserver.auth import KeyRing
from jobserver.config import Config
from jobserver.core import events as ev
from jobserver.core.ids import JobId, new_job_id
from jobserver.server import Server, serve
from jobserver.store import IdempotencyRecord
from jobserver.store import sqlite_blocking as db
from jobserver.store.sqlite import SqliteStore

from .conftest import Harness, make_config
from .stores import Backend

NATIVE = "/api/v1/jobs"
JOBS = "/api/jobs"


def keyed(h: Harness, key: str, token: str | None = None) -> dict[str, str]:
    return {**h.auth(token or h.alice), "Idempotency-Key": key}


async def job_count(h: Harness) -> int:
    r = await h.client.get(NATIVE, params={"limit": 500}, headers=h.auth(h.admin))
    return len(r.json()["jobs"])


async def test_native_replay_gives_the_same_job(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "once"}}
    first = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "k-1"))
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    done = await harness.wait(first.json()["id"])
    # The same body written another way (key order, spacing) is the same body.
    again = await harness.client.post(
        NATIVE, content=b'{ "params": {"message": "once"},  "template": "echo" }',
        headers={**keyed(harness, "k-1"), "Content-Type": "application/json"})
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    # The job as it stands now: it ran once and finished.
    assert again.json()["id"] == done["id"] and again.json()["status"] == "SUCCEEDED"
    assert await job_count(harness) == 1


async def test_jobs_dialect_replay_gives_the_same_job(harness: Harness) -> None:
    body = {"preset": "echo", "inputs": {"message": "once"}}
    first = await harness.client.post(JOBS, json=body, headers=keyed(harness, "k-2"))
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "Queued"
    job_id = first.json()["jobId"]
    await harness.wait(job_id)
    again = await harness.client.post(JOBS, json=body, headers=keyed(harness, "k-2"))
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["jobId"] == job_id and again.json()["status"] == "Succeeded"
    assert again.json()["correlationId"] == first.json()["correlationId"]
    assert await job_count(harness) == 1


async def test_another_body_or_route_with_the_key_is_a_422(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "a"}}
    r = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "k-3"))
    assert r.status_code == 201
    other = {"template": "echo", "params": {"message": "b"}}
    r = await harness.client.post(NATIVE, json=other, headers=keyed(harness, "k-3"))
    assert r.status_code == 422
    assert r.json()["code"] == "idempotency_key_reused"
    assert r.json()["field"] == "Idempotency-Key"
    # The other route with this key is another request too (an RFC 7807 problem there).
    r = await harness.client.post(JOBS, json={"preset": "echo", "inputs": {"message": "a"}},
                                  headers=keyed(harness, "k-3"))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/idempotency_key_reused")
    assert await job_count(harness) == 1


async def test_keys_are_per_user(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "mine"}}
    a = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "shared"))
    b = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "shared", harness.bob))
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


async def test_bad_keys_are_400_naming_the_header(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "x"}}
    for bad in ("", "has space", "x" * 256, "caf\u00e9"):
        headers = [(k, v) for k, v in harness.auth(harness.alice).items()]
        headers.append(("Idempotency-Key", bad))
        for path, payload in ((NATIVE, body), (JOBS, {"preset": "echo",
                                                      "inputs": {"message": "x"}})):
            r = await harness.client.post(path, json=payload,
                                          headers=httpx.Headers(headers, encoding="utf-8"))
            assert r.status_code == 400, (bad, r.text)
            detail = r.json()
            assert detail.get("code", detail.get("type", "").rpartition("/")[2]) == \
                "invalid_idempotency_key"
            assert detail["field"] == "Idempotency-Key"
    r = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "x" * 255))
    assert r.status_code == 201
    assert await job_count(harness) == 1


async def test_a_failed_submit_keeps_the_key_free(harness: Harness) -> None:
    bad = {"template": "no_such_template"}
    r = await harness.client.post(NATIVE, json=bad, headers=keyed(harness, "k-4"))
    assert r.status_code == 422 and r.json()["code"] == "unknown_template"
    good = {"template": "echo", "params": {"message": "fixed"}}
    r = await harness.client.post(NATIVE, json=good, headers=keyed(harness, "k-4"))
    assert r.status_code == 201


async def test_concurrent_posts_with_one_key_make_one_job(harness: Harness) -> None:
    body = {"template": "sleep", "params": {"seconds": 0}}
    answers: list[httpx.Response] = []

    async def post(path: str, payload: dict[str, Any]) -> None:
        answers.append(await harness.client.post(path, json=payload,
                                                 headers=keyed(harness, "race")))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(post, NATIVE, body)
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert await job_count(harness) == 1
    await harness.wait(answers[0].json()["id"])


async def test_a_key_expires_after_its_ttl(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "daily"}}
    first = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "daily"))
    assert first.status_code == 201
    await harness.wait(first.json()["id"])
    engine = harness.server.engine
    engine.clock = lambda: time.time() + 86_400 - 60  # a minute short of a day later
    again = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "daily"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    engine.clock = lambda: time.time() + 86_400 + 1  # past the default 24 h
    later = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "daily"))
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    # The key now names the new job.
    once_more = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "daily"))
    assert once_more.status_code == 200 and once_more.json()["id"] == later.json()["id"]
    await harness.wait(later.json()["id"])


async def test_a_deleted_job_frees_its_key(harness: Harness) -> None:
    body = {"template": "echo", "params": {"message": "gone"}}
    first = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "k-5"))
    await harness.wait(first.json()["id"])
    r = await harness.client.delete(f"{NATIVE}/{first.json()['id']}",
                                    headers=harness.auth(harness.alice))
    assert r.status_code == 204
    again = await harness.client.post(NATIVE, json=body, headers=keyed(harness, "k-5"))
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    await harness.wait(again.json()["id"])


async def test_keys_survive_a_restart(data_dir: Path) -> None:
    config: Config = make_config(data_dir, idempotency_ttl=3600.0)
    body = {"template": "echo", "params": {"message": "kept"}}
    ids = []
    for expected in (201, 200):
        async with trio.open_nursery() as inner:
            server: Server = await inner.start(serve, config)
            token = KeyRing.load_or_create(data_dir).issue("alice", "user")
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
                r = await client.post(NATIVE, json=body, headers={
                    "Authorization": f"Bearer {token}", "Idempotency-Key": "restart"})
                assert r.status_code == expected, r.text
                ids.append(r.json()["id"])
                with trio.fail_after(30):
                    while (await client.get(f"{NATIVE}/{ids[-1]}", headers={
                            "Authorization": f"Bearer {token}"})).json()["status"] != "SUCCEEDED":
                        await trio.sleep(0.02)
            server.request_shutdown()
    assert ids[0] == ids[1]


# ---- the store's half -------------------------------------------------------


def _record(job_id: JobId, *, key: str = "k", created_at: float = 1000.0,
            ttl: float = 60.0) -> IdempotencyRecord:
    return IdempotencyRecord(owner="alice", key=key, fingerprint="f" * 64, job_id=job_id,
                             created_at=created_at, expires_at=created_at + ttl)


async def test_a_version_1_database_gets_the_keys_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in db.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    store = SqliteStore(path, linger=0)
    job_id = new_job_id()
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write([ev.Queued(job_id=job_id, seq=1, ts=1000.0)], key=_record(job_id))
        await store.wait_flushed()
        assert await store.find_key("alice", "k") == _record(job_id)
        assert await store.find_key("bob", "k") is None
        n.cancel_scope.cancel()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (db.SCHEMA_VERSION,)


async def test_keys_go_with_their_job_and_when_expired(stores: Backend) -> None:
    store = stores.new(linger=0)
    first, second, third = new_job_id(), new_job_id(), new_job_id()
    async with trio.open_nursery() as n:
        await n.start(store.run)
        await store.write([], key=_record(first, key="a", created_at=1000.0))
        await store.write([], key=_record(second, key="b", created_at=1000.0, ttl=3600.0))
        await store.delete_job(second)
        assert await store.find_key("alice", "b") is None  # deleted with its job
        assert await store.find_key("alice", "a") is not None
        # A key written after "a" expired takes the expired ones away.
        await store.write([], key=_record(third, key="c", created_at=1061.0))
        await store.wait_flushed()
        assert await store.find_key("alice", "a") is None
        assert (await store.find_key("alice", "c")) == _record(third, key="c",
                                                               created_at=1061.0)
        n.cancel_scope.cancel()
