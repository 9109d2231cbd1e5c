"""The async dialect (specs/dialect-async-kind-ws.md) against a real server: the
answers before the upgrade read by a raw HTTP client, the stream by real
WebSocket clients (RawWebSocket, trio-websocket), on a fresh connection and on
a keep-alive connection that served a REST call first."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from .conftest import Harness
from .test_dataplane_helpers import ISO_MS, RawWebSocket, Rejected, running_server
from .test_frontdoor import Client, Response, bearer, exchange, request, upgrade_headers

# Short intervals (the smallest one a client may ask for, here) keep tests quick.
MIN_INTERVAL_MS = 100
INTERVAL_MS = 300
NOT_FOUND = "async_job_not_found_or_not_owned"


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, async_min_interval_ms=MIN_INTERVAL_MS) as harness:
        yield harness


def target(kind: str, job_id: str, query: str = "") -> str:
    return f"/v1/async/{kind}/{job_id}/ws" + (f"?{query}" if query else "")


async def connect(h: Harness, kind: str, job_id: str, query: str = "", *,
                  token: str | None = None, stream: trio.SocketStream | None = None
                  ) -> RawWebSocket:
    return await RawWebSocket.connect(h.server.port, target(kind, job_id, query),
                                      headers=[bearer(token or h.alice)], stream=stream)


async def next_message(ws: RawWebSocket, timeout: float = 10.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        got = [json.loads(text) async for text in ws.messages(limit=1)]
    assert got, f"closed {ws.close_code} instead of a message"
    message: dict[str, Any] = got[0]
    return message


async def rest(ws: RawWebSocket, timeout: float = 20.0) -> list[dict[str, Any]]:
    with trio.fail_after(timeout):
        return await ws.collect()


async def gated(h: Harness, name: str, **params: Any) -> tuple[dict[str, Any], Path]:
    gate = h.data_dir / f"gate-{name}"
    job = await h.submit("async-gated", {"gate": str(gate), **params})
    await h.wait(job["id"], "RUNNING")
    return job, gate


async def refused(port: int, data: bytes) -> Response:
    r = await exchange(port, data)
    assert r.headers["content-type"] == "application/json", r
    return r


# ---- before the upgrade ------------------------------------------------------


async def test_plain_get_is_426_on_both_transports(h: Harness) -> None:
    job = await h.submit("async-video")
    path = target("video", job["id"])
    r = await refused(h.server.port, request("GET", path, headers=[bearer(h.alice)]))
    assert r.status == 426 and r.headers["upgrade"].lower() == "websocket"
    assert r.json()["error"]["code"] == "websocket_upgrade_required"
    # On a connection hypercorn owns (after a REST call), the same answer.
    client = await Client.open(h.server.port)
    try:
        await client.send(request("GET", "/healthz") + request("GET", path))
        assert (await client.response()).status == 200
        again = await client.response()
    finally:
        await client.aclose()
    assert again.status == 426 and again.json() == r.json()
    assert again.headers["content-type"] == "application/json"


async def test_the_same_404_for_each_cause(h: Harness) -> None:
    video = await h.submit("async-video")
    await h.wait(video["id"])
    batch, gate = await gated(h, "404")
    gate.touch()
    cases = {
        "unknown kind": (target("audio", video["id"]), h.alice),
        "no such job": (target("video", str(uuid.uuid4())), h.alice),
        "not an id": (target("video", "not-a-uuid"), h.alice),
        "another kind": (target("video", batch["id"]), h.alice),
        "not the caller's": (target("video", video["id"]), h.bob),
    }
    bodies = set()
    for name, (path, token) in cases.items():
        r = await refused(h.server.port, request("GET", path, headers=[
            *upgrade_headers(), bearer(token)]))
        assert r.status == 404, name
        assert r.json()["error"]["code"] == NOT_FOUND, name
        bodies.add(r.body)
    assert len(bodies) == 1
    # The owner (and an admin) get in.
    for token in (h.alice, h.admin):
        ws = await connect(h, "video", video["id"], token=token)
        assert (await next_message(ws))["type"] == "job.snapshot"
        await ws.aclose()


async def test_401_for_a_missing_or_bad_token_and_query_token_taken(h: Harness) -> None:
    job = await h.submit("async-video")
    path = target("video", job["id"])
    for name, headers in (("none", []), ("bad", [bearer("nope")]),
                          ("not bearer", [("Authorization", f"Basic {h.alice}")])):
        r = await refused(h.server.port, request("GET", path, headers=[
            *upgrade_headers(), *headers]))
        assert r.status == 401, name
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
    # For browsers, which cannot set headers on a WebSocket: ?token=.
    ws = await RawWebSocket.connect(h.server.port, target("video", job["id"],
                                                          f"token={h.alice}"))
    assert (await next_message(ws))["type"] == "job.snapshot"
    await ws.aclose()


async def test_interval_and_close_on_terminal_values(h: Harness) -> None:
    job = await h.submit("async-video")
    await h.wait(job["id"])
    for query, interval in (("", 2500), ("interval_ms=1", MIN_INTERVAL_MS),
                            ("interval_ms=4000", 4000), ("interval_ms=99999", 10000),
                            ("interval_ms=99999999999999", 10000)):
        ws = await connect(h, "video", job["id"], query)
        assert ws.accepted.extra_headers is not None
        headers = {k.decode().lower(): v.decode() for k, v in ws.accepted.extra_headers}
        assert headers["x-interval-ms"] == str(interval), query
        await ws.aclose()
    for query, code in (("interval_ms=abc", "invalid_interval_ms"),
                        ("interval_ms=-5", "invalid_interval_ms"),
                        ("interval_ms=1.5", "invalid_interval_ms"),
                        ("interval_ms=", "invalid_interval_ms"),
                        ("close_on_terminal=maybe", "invalid_close_on_terminal"),
                        ("close_on_terminal=", "invalid_close_on_terminal")):
        r = await refused(h.server.port, request("GET", target("video", job["id"], query),
                                                 headers=[*upgrade_headers(), bearer(h.alice)]))
        assert r.status == 400 and r.json()["error"]["code"] == code, query
    for word, closes in (("TRUE", True), ("1", True), ("yes", True), ("on", True),
                         ("false", False), ("0", False), ("No", False), ("off", False)):
        ws = await connect(h, "video", job["id"], f"close_on_terminal={word}")
        assert (await next_message(ws))["data"]["status"] == "completed"
        if closes:
            assert await rest(ws) == [] and ws.close_code == 1000, word
        else:
            await ws.send_text('{"type":"ping"}')
            assert (await next_message(ws))["type"] == "pong", word
        await ws.aclose()


# ---- the stream --------------------------------------------------------------


def epoch_ms(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp() * 1000


def updates(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if m["type"] == "job.updated"]


async def test_snapshot_updates_and_close_after_the_terminal_update(h: Harness) -> None:
    job, gate = await gated(h, "life", updates=200, native="op-1234")
    ws = await connect(h, "batch", job["id"], f"interval_ms={INTERVAL_MS}")
    snapshot = await next_message(ws)
    assert snapshot["type"] == "job.snapshot" and set(snapshot) == {"type", "data"}
    data = snapshot["data"]
    assert data["id"] == job["id"] and data["kind"] == "batch"
    assert data["status"] == "in_progress" and data["request_id"] == job["correlation_id"]
    assert "native_id" not in data and "latency_ms" not in data  # not reported yet
    assert "total_duration_ms" not in data and "finalized_at" not in data
    assert re.match(ISO_MS, data["created_at"]) and re.match(ISO_MS, data["started_at"])
    assert data["completed_at"] is None
    started = trio.current_time()
    gate.touch()
    got = await rest(ws)
    elapsed = trio.current_time() - started
    assert ws.close_code == 1000
    assert {m["type"] for m in got} == {"job.updated"}
    # 200 progress events, a result and the end in well under a second: coalesced
    # to one update at once and at most one per interval after it.
    assert 1 <= len(got) <= 1 + elapsed / (INTERVAL_MS / 1000) + 1, (len(got), elapsed)
    final = got[-1]["data"]
    assert final["status"] == "completed" and final["native_id"] == "op-1234"
    assert final["progress"] == {"pct": 100.0, "at": 200, "of": 200}
    assert final["result"] == {"native_id": "op-1234", "done": True}
    assert final["finalized_at"] == final["completed_at"] and re.match(ISO_MS,
                                                                      final["completed_at"])
    total = final["total_duration_ms"]
    assert final["duration_ms"] == total
    assert abs(total - (epoch_ms(final["completed_at"]) - epoch_ms(final["created_at"]))) <= 2
    assert 0 < final["latency_ms"] <= total
    assert abs(final["generation_ms"] + final["latency_ms"] - total) <= 1
    assert "upstream_error" not in final
    await ws.aclose()


async def test_a_failed_job_carries_its_upstream_error(h: Harness) -> None:
    job, gate = await gated(h, "fail", code=3)
    ws = await connect(h, "batch", job["id"], f"interval_ms={INTERVAL_MS}")
    assert (await next_message(ws))["data"]["status"] == "in_progress"
    gate.touch()
    got = await rest(ws)
    assert ws.close_code == 1000
    final = got[-1]["data"]
    assert final["status"] == "failed"
    assert final["upstream_error"] == {"code": "quota_exceeded",
                                       "message": "over quota",
                                       "description": "it broke", "status": 3}
    await ws.aclose()


async def test_a_finished_job_at_connect_is_a_snapshot_and_a_close(h: Harness) -> None:
    job = await h.submit("async-video")
    await h.wait(job["id"])
    ws = await connect(h, "video", job["id"])
    messages = await rest(ws)
    assert [m["type"] for m in messages] == ["job.snapshot"] and ws.close_code == 1000
    data = messages[0]["data"]
    assert data["status"] == "completed" and data["kind"] == "video"
    assert data["latency_ms"] >= 0  # its first line was in the history read at the opening
    await ws.aclose()


async def test_staying_open_ping_refresh_bad_messages_and_deleted(h: Harness) -> None:
    job, gate = await gated(h, "open")
    ws = await connect(h, "batch", job["id"], "close_on_terminal=false&interval_ms=100")
    assert (await next_message(ws))["data"]["status"] == "in_progress"
    for text in ("ping", '{"type":"ping"}', '"ping"'):
        await ws.send_text(text)
        pong = await next_message(ws)
        assert pong["type"] == "pong" and re.match(ISO_MS, pong["data"]["ts"]), text
    await ws.send_text('{"type":"refresh"}')
    refreshed = await next_message(ws)
    assert refreshed["type"] == "job.snapshot" and refreshed["data"]["status"] == "in_progress"
    for text, code in (("not json", "invalid_message"), ("[1, 2]", "invalid_message"),
                       ('{"type": "subscribe"}', "unknown_message_type")):
        await ws.send_text(text)
        error = await next_message(ws)
        assert error["type"] == "error" and error["data"]["code"] == code, text
        assert set(error["data"]) == {"code", "message"}
    gate.touch()
    seen: list[str] = []
    while not seen or seen[-1] != "completed":
        message = await next_message(ws)
        assert message["type"] == "job.updated"
        seen.append(message["data"]["status"])
    # The terminal update came; the socket stays open.
    await ws.send_text("refresh")
    assert (await next_message(ws))["data"]["status"] == "completed"
    r = await h.client.delete(f"/api/v1/jobs/{job['id']}", headers=h.auth(h.alice))
    assert r.status_code in (200, 204), r.text
    deleted = await next_message(ws)
    assert deleted["type"] == "job.deleted" and deleted["data"]["id"] == job["id"]
    assert await rest(ws) == [] and ws.close_code == 1000
    await ws.aclose()


async def test_trio_websocket_client(h: Harness) -> None:
    job, gate = await gated(h, "trio-ws")
    url = h.ws_url + target("batch", job["id"], f"interval_ms={INTERVAL_MS}")
    async with open_websocket_url(url, extra_headers=[
            (b"Authorization", f"Bearer {h.alice}".encode())]) as ws:
        assert json.loads(await ws.get_message())["type"] == "job.snapshot"
        await ws.send_message('{"type":"ping"}')
        assert json.loads(await ws.get_message())["type"] == "pong"
        gate.touch()
        with trio.fail_after(10):
            while True:
                message = json.loads(await ws.get_message())
                if message["data"]["status"] == "completed":
                    break
        await ws._stream.aclose()


async def _after_rest(h: Harness, job_id: str, path: str) -> RawWebSocket:
    """A WebSocket upgrade on a connection that made a REST call first."""
    stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
    try:
        client = Client(stream)
        await client.send(request("GET", f"/api/v1/jobs/{job_id}", headers=[bearer(h.alice)]))
        r = await client.response()
        assert r.status == 200 and client.buffer == b""
    except BaseException:
        await stream.aclose()
        raise
    return await RawWebSocket.connect(h.server.port, path, headers=[bearer(h.alice)],
                                      stream=stream)


def without_times(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["type"], m["data"]["status"]) for m in messages]


async def test_both_transports(h: Harness) -> None:
    job, gate = await gated(h, "transports", updates=50)
    path = target("batch", job["id"], f"interval_ms={INTERVAL_MS}")
    direct = await RawWebSocket.connect(h.server.port, path, headers=[bearer(h.alice)])
    fallback = await _after_rest(h, job["id"], path)
    try:
        for ws in (direct, fallback):
            first = await next_message(ws)
            assert first["type"] == "job.snapshot"
            await ws.send_text("ping")
            assert (await next_message(ws))["type"] == "pong"
        gate.touch()
        got_direct, got_fallback = await rest(direct), await rest(fallback)
    finally:
        await direct.aclose()
        await fallback.aclose()
    assert direct.close_code == fallback.close_code == 1000
    assert got_direct[-1]["data"] == got_fallback[-1]["data"]
    assert got_direct[-1]["data"]["status"] == "completed"
    # The refusals before the upgrade are the same on the fallback.
    with pytest.raises(Rejected) as refused_404:
        await _after_rest(h, job["id"], target("video", job["id"]))
    assert refused_404.value.status == 404
    assert json.loads(refused_404.value.body)["error"]["code"] == NOT_FOUND


async def test_a_chatty_job_and_a_cancelled_one(h: Harness) -> None:
    job, gate = await gated(h, "chatty", lines=20000)
    ws = await connect(h, "batch", job["id"], f"interval_ms={MIN_INTERVAL_MS}")
    assert (await next_message(ws))["type"] == "job.snapshot"
    gate.touch()
    got = await rest(ws)
    assert ws.close_code == 1000 and got[-1]["data"]["status"] == "completed"
    # The first line's latency, the result, the end (some of them as one): the
    # session stopped taking lines after the first, and the end still came.
    assert 1 <= len(got) <= 3, [m["data"] for m in got]
    assert "latency_ms" in got[-1]["data"]
    assert len((await h.client.get(f"/api/v1/jobs/{job['id']}/logs",
                                   headers=h.auth(h.alice))).text.splitlines()) == 20000
    await ws.aclose()
    # Templates without a kind have kind "job", served like any other.
    sleeper = await h.submit("sleep", {"seconds": 30})
    await h.wait(sleeper["id"], "RUNNING")
    ws = await connect(h, "job", sleeper["id"])
    assert (await next_message(ws))["data"]["status"] == "in_progress"
    r = await h.client.post(f"/api/v1/jobs/{sleeper['id']}/cancel", headers=h.auth(h.alice))
    assert r.status_code == 202
    got = await rest(ws)
    assert ws.close_code == 1000 and got[-1]["data"]["status"] == "cancelled"
    assert "upstream_error" not in got[-1]["data"] and "total_duration_ms" in got[-1]["data"]
    await ws.aclose()
