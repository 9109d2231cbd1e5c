"""Hostile tokens and other users, on every transport there is.

The transports: native REST (/api/v1), the jobs dialect's REST (/api/jobs),
the native SSE stream (/api/v1/jobs/{id}/stream), the jobs dialect's SSE
(/api/jobs/{id}/events) and the logs WebSocket (/api/v1/ws/jobs/{id}/logs);
each stream both on a fresh connection (the raw data plane) and on one that
served a REST call first (the ASGI fallback). Each refuses in its own way:
401 JSON, 401 problem+json, 401 with `Connection: close`, an `error` message
and close 1008. Another user's job is indistinguishable from no job: 404 (the
logs dialect: the same refusal as for an unknown job).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from jobserver.auth import API_KEY_ID, MAX_TOKEN_LENGTH

from .conftest import Harness
from .test_dataplane_helpers import RawWebSocket, logs_path, running_server
from .test_frontdoor import Client, bearer, exchange, request

pytestmark = pytest.mark.reliability

UNKNOWN_JOB = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir) as harness:
        yield harness


def hostile_tokens(data_dir: Path) -> dict[str, str]:
    """Tokens the server must refuse, each for one reason."""
    secret = (data_dir / "signing.key").read_bytes()
    now = int(time.time())
    good = {"sub": "alice", "role": "user", "iat": now, "exp": now + 600}

    def signed(claims: dict[str, Any], key: Any = secret, alg: str = "HS256",
               kid: str = API_KEY_ID) -> str:
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in good.items() if k != name}

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "alg none": jwt.encode(good, None, algorithm="none", headers={"kid": API_KEY_ID}),
        "another key": signed(good, b"another secret, not the server's one"),
        "RS256 for the HS key": signed(good, rsa_key, "RS256"),
        "an unknown kid": signed(good, kid="api-2"),
        "no exp": signed(without("exp")),
        "no iat": signed(without("iat")),
        "no sub": signed(without("sub")),
        "an empty sub": signed({**good, "sub": ""}),
        "a role that is not one": signed({**good, "role": "root"}),
        "expired": signed({**good, "iat": now - 7200, "exp": now - 3600}),
        "nbf in the future": signed({**good, "nbf": now + 3600}),
        "iat in the future": signed({**good, "iat": now + 3600, "exp": now + 7200}),
        "exp not a number": signed({**good, "exp": "soon"}),
        "garbage": "not.a.token",
        "garbage base64": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
        "oversized": signed({**good, "pad": "x" * MAX_TOKEN_LENGTH}),
    }


async def finished_job(h: Harness) -> str:
    job = await h.submit("echo", {"message": "mine"}, token=h.alice)
    await h.wait(job["id"])
    return str(job["id"])


def assert_native_error(status: int, headers: dict[str, str], body: bytes, wanted: int,
                        name: str) -> None:
    assert status == wanted, (name, status, body[:200])
    assert headers["content-type"].startswith("application/json"), name
    doc = json.loads(body)
    assert set(doc) >= {"code", "message"}, (name, doc)
    if wanted == 401:
        assert headers["www-authenticate"] == "Bearer", name


def assert_problem(status: int, headers: dict[str, str], body: bytes, wanted: int,
                   name: str) -> None:
    assert status == wanted, (name, status, body[:200])
    assert headers["content-type"].startswith("application/problem+json"), name
    doc = json.loads(body)
    assert doc["status"] == wanted and "title" in doc, (name, doc)


async def on_fresh(h: Harness, target: str, token: str | None) -> tuple[int, dict[str, str],
                                                                         bytes]:
    """A GET on a fresh connection: the data plane's answer, which closes."""
    headers = [bearer(token)] if token is not None else []
    r = await exchange(h.server.port, request("GET", target, headers=headers))
    assert r.headers.get("connection") == "close", target
    return r.status, r.headers, r.body


async def on_reused(h: Harness, target: str, token: str | None) -> tuple[int, dict[str, str],
                                                                          bytes]:
    """A GET on a connection that served /healthz first: hypercorn's, the ASGI fallback."""
    client = await Client.open(h.server.port)
    try:
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
        headers = [bearer(token)] if token is not None else []
        await client.send(request("GET", target, headers=headers))
        r = await client.response()
    finally:
        await client.aclose()
    return r.status, r.headers, r.body


async def ws_after_healthz(h: Harness, target: str) -> RawWebSocket:
    """A WebSocket upgrade on a connection that served /healthz: the ASGI fallback."""
    stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
    try:
        client = Client(stream)
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200 and client.buffer == b""
        return await RawWebSocket.connect(h.server.port, target, stream=stream)
    except BaseException:
        await stream.aclose()
        raise


async def ws_refusal(h: Harness, job_id: str, token: str, *, reused: bool) -> tuple[
        list[dict[str, Any]], int | None]:
    target = logs_path(job_id, token)
    ws = await (ws_after_healthz(h, target) if reused
                else RawWebSocket.connect(h.server.port, target))
    try:
        with trio.fail_after(10):
            messages = await ws.collect()
    finally:
        await ws.aclose()
    return messages, ws.close_code


async def refused_everywhere(h: Harness, job_id: str, token: str | None, name: str, *,
                             status: int = 401) -> None:
    """`token` (None: none at all) is refused on all five transports."""
    auth = h.auth(token) if token is not None else {}
    r = await h.client.get(f"/api/v1/jobs/{job_id}", headers=auth)
    assert_native_error(r.status_code, dict(r.headers), r.content, status, name)
    r = await h.client.get(f"/api/jobs/{job_id}", headers=auth)
    assert_problem(r.status_code, dict(r.headers), r.content, status, name)
    for via in (on_fresh, on_reused):
        got = await via(h, f"/api/v1/jobs/{job_id}/stream", token)
        assert_native_error(*got, status, f"{name}, native SSE, {via.__name__}")
        got = await via(h, f"/api/jobs/{job_id}/events", token)
        assert_problem(*got, status, f"{name}, jobs SSE, {via.__name__}")
    if token is not None:
        for reused in (False, True):
            messages, code = await ws_refusal(h, job_id, token, reused=reused)
            assert code == 1008, (name, reused, code)
            assert [m["type"] for m in messages] == ["error"], (name, reused, messages)


async def test_every_hostile_token_is_refused_on_every_transport(h: Harness) -> None:
    job_id = await finished_job(h)
    await refused_everywhere(h, job_id, None, "no token")
    for name, token in hostile_tokens(h.data_dir).items():
        await refused_everywhere(h, job_id, token, name)
    # The query-string token of the streams is checked the same way.
    for name, token in hostile_tokens(h.data_dir).items():
        for target in (f"/api/v1/jobs/{job_id}/stream?token={token}",
                       f"/api/jobs/{job_id}/events?token={token}"):
            status, _, body = await on_fresh(h, target, None)
            assert status == 401, (name, target, body[:200])
    # And the owner's own token gets in everywhere (the matrix can fail).
    r = await h.client.get(f"/api/v1/jobs/{job_id}", headers=h.auth(h.alice))
    assert r.status_code == 200
    status, _, body = await on_fresh(h, f"/api/v1/jobs/{job_id}/stream", h.alice)
    assert status == 200 and b"event: finished" in body


async def test_another_users_job_is_not_found_on_every_route_and_stream(h: Harness) -> None:
    job_id = await finished_job(h)
    running = await h.submit("sleep", {"seconds": 30}, token=h.alice)
    await h.wait(running["id"], "RUNNING")
    bob = h.auth(h.bob)
    routes = [("GET", "/api/v1/jobs/{id}"), ("DELETE", "/api/v1/jobs/{id}"),
              ("POST", "/api/v1/jobs/{id}/cancel"), ("GET", "/api/v1/jobs/{id}/events"),
              ("GET", "/api/v1/jobs/{id}/logs"), ("GET", "/api/v1/jobs/{id}/stream"),
              ("GET", "/api/jobs/{id}"), ("POST", "/api/jobs/{id}/cancel"),
              ("POST", "/api/jobs/{id}/retry"), ("GET", "/api/jobs/{id}/events")]
    for target_id in (job_id, running["id"]):
        for method, path in routes:
            mine = path.format(id=target_id)
            nobody = path.format(id=UNKNOWN_JOB)
            r = await h.client.request(method, mine, headers=bob)
            unknown = await h.client.request(method, nobody, headers=bob)
            assert r.status_code == 404 == unknown.status_code, (method, mine, r.text)
            assert r.json()["code" if "/v1/" in path else "type"] == \
                unknown.json()["code" if "/v1/" in path else "type"], (method, mine)
        for via in (on_fresh, on_reused):
            for path in ("/api/v1/jobs/{id}/stream", "/api/jobs/{id}/events"):
                status, _, _ = await via(h, path.format(id=target_id), h.bob)
                assert status == 404, (path, via.__name__)
        for reused in (False, True):
            theirs = await ws_refusal(h, target_id, h.bob, reused=reused)
            unknown_ws = await ws_refusal(h, UNKNOWN_JOB, h.bob, reused=reused)
            assert theirs[1] == unknown_ws[1] == 1008
            assert [m["payload"]["message"] for m in theirs[0]] == \
                [m["payload"]["message"] for m in unknown_ws[0]]
    # Bob's list never shows Alice's jobs, whatever he asks for.
    for query in ("", "?owner=alice", "?status=RUNNING", "?limit=500"):
        r = await h.client.get(f"/api/v1/jobs{query}", headers=bob)
        assert r.status_code in (200, 403, 422), query
        if r.status_code == 200:
            assert r.json()["jobs"] == [], query
    # Nothing Bob did touched them.
    assert (await h.job(running["id"]))["status"] == "RUNNING"
    assert (await h.job(job_id))["status"] == "SUCCEEDED"
    r = await h.client.post(f"/api/v1/jobs/{running['id']}/cancel", headers=h.auth(h.alice))
    assert r.status_code == 202
