"""The logs dialect (specs/dialect-logs-ws.md) against a real server and real clients."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, WebSocketConnection

from jobserver.auth import Key, KeyRing

from .conftest import Harness
from .test_dataplane_helpers import (
    ISO_MS,
    SLEEPING_OPENING,
    RawWebSocket,
    Rejected,
    deflate_offer,
    logs_path,
    masked_frame_header,
    running_server,
    sleeping_job,
    submit_command,
    ws_client,
)

DENIED = "Job not found or access denied."
# A finished echo job, connected to without `since`: the opening, its history.
ECHO_AT_CONNECT = ["system", "info", "status", "log", "status"]


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, allowed_origins=("https://app.example",)) as harness:
        yield harness


def ws_url(h: Harness, job_id: str, token: str, extra: str = "") -> str:
    return h.ws_url + logs_path(job_id, token, extra)


async def read_rest(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], int]:
    """Every message until the server closes, and the close code."""
    out = []
    while True:
        try:
            out.append(json.loads(await ws.get_message()))
        except ConnectionClosed as exc:
            return out, exc.reason.code


async def session(url: str) -> tuple[list[dict[str, Any]], int]:
    async with ws_client(url) as ws:
        return await read_rest(ws)


def payloads(messages: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in messages if m["type"] == type_]


def check_system(message: dict[str, Any], job_id: str) -> None:
    assert message["type"] == "system" and set(message) == {"type", "payload"}
    assert message["payload"]["message"] == "Log streaming started."
    assert message["payload"]["job_id"] == job_id
    assert re.match(ISO_MS, message["payload"]["ts"])


async def test_every_message_type_live(h: Harness) -> None:
    """Queued jobs start while watched: info, RUNNING, logs, and each terminal status."""
    blockers = [await h.submit("sleep", {"seconds": 30}, token=h.bob) for _ in range(2)]
    for b in blockers:
        await h.wait(b["id"], "RUNNING")
    failing = await h.submit("exit", {"code": 3})
    passing = await h.submit("echo", {"message": "hello there"})
    results: dict[str, tuple[list[dict[str, Any]], int]] = {}

    async def watch(job_id: str, token: str, ready: trio.Event) -> None:
        async with ws_client(ws_url(h, job_id, token)) as ws:
            first = json.loads(await ws.get_message())
            check_system(first, job_id)
            ready.set()
            results[job_id] = await read_rest(ws)

    async with trio.open_nursery() as nursery:
        for job_id, token in ((blockers[0]["id"], h.bob), (failing["id"], h.alice),
                              (passing["id"], h.alice)):
            ready = trio.Event()
            nursery.start_soon(watch, job_id, token, ready)
            await ready.wait()
        for b in blockers:
            r = await h.client.post(f"/api/v1/jobs/{b['id']}/cancel", headers=h.auth(h.bob))
            assert r.status_code == 202

    cancelled, code = results[blockers[0]["id"]]
    # Running when watched: its history first (the start). The sleeper may print
    # a line of progress before the cancel lands.
    assert code == 1000 and [m["type"] for m in cancelled[:2]] == ["info", "status"]
    assert {m["type"] for m in cancelled[2:-1]} <= {"log"}
    assert cancelled[-1]["type"] == "status"
    assert cancelled[-1]["payload"] == {
        "status": "CANCELLED", "ts": cancelled[-1]["payload"]["ts"],
        "job_id": blockers[0]["id"], "completed_at": cancelled[-1]["payload"]["ts"],
        "exit_code": -100, "result_message": "Job cancelled by user request."}

    failed, code = results[failing["id"]]
    assert code == 1000
    assert [m["type"] for m in failed] == ["info", "status", "log", "log", "status"]
    info, running = failed[0]["payload"], failed[1]["payload"]
    assert set(info) == {"message", "ts", "pid", "command"} and info["pid"] > 0
    assert f"(PID: {info['pid']})" in info["message"] and info["command"].startswith("python3")
    assert running == {"status": "RUNNING", "ts": running["ts"], "job_id": failing["id"],
                       "started_at": running["ts"]}
    logs = sorted((p["stream"], p["message"]) for p in payloads(failed, "log"))
    assert logs == [("stderr", "err line"), ("stdout", "out line")]
    for p in payloads(failed, "log"):
        assert set(p) == {"ts", "stream", "message"} and re.match(ISO_MS, p["ts"])
    final = failed[-1]["payload"]
    assert final == {"status": "FAILED", "ts": final["ts"], "job_id": failing["id"],
                     "completed_at": final["ts"], "exit_code": 3,
                     "error_message": "exited with code 3", "log_snippet": "err line"}

    succeeded, code = results[passing["id"]]
    assert code == 1000
    assert [m["type"] for m in succeeded] == ["info", "status", "log", "status"]
    assert succeeded[2]["payload"]["message"] == "hello there"
    final = succeeded[-1]["payload"]
    assert final == {"status": "SUCCEEDED", "ts": final["ts"], "job_id": passing["id"],
                     "completed_at": final["ts"], "exit_code": 0,
                     "result_message": "Completed successfully."}
    for m in failed + succeeded + cancelled:
        assert set(m) == {"type", "payload"}  # no seq unless asked for
        assert re.match(ISO_MS, m["payload"]["ts"])


async def test_finished_job_at_connect(h: Harness) -> None:
    """Its whole log, then its final status (the same as the record's), then 1000."""
    for template, params, status, lines in (("echo", {"message": "x"}, "SUCCEEDED", 1),
                                            ("exit", {"code": 2}, "FAILED", 2)):
        job = await h.submit(template, params)
        record = await h.wait(job["id"])
        messages, code = await session(ws_url(h, job["id"], h.alice))
        assert code == 1000 and [m["type"] for m in messages] == [
            "system", "info", "status", *["log"] * lines, "status"]
        check_system(messages[0], job["id"])
        assert messages[2]["payload"]["status"] == "RUNNING"
        final = messages[-1]["payload"]
        assert final["status"] == status and final["ts"] == final["completed_at"]
        assert all(set(m) == {"type", "payload"} for m in messages)  # no seq
        # The same as the one rendered from the job record (`since` past the end).
        from_record, _ = await session(ws_url(h, job["id"], h.alice, "&since=999"))
        assert from_record[-1]["payload"] == final and record["status"] == status
        if status == "FAILED":
            assert final["exit_code"] == 2 and final["log_snippet"] == "err line"
            assert final["error_message"] == "exited with code 2"


async def _before_and_after(h: Harness, query: str = "") -> list[dict[str, Any]]:
    """A job that prints "before", waits for a go file, prints "after": watched
    (with `query`) from once "before" is recorded; the messages after `system`."""
    go = h.data_dir / f"go-{len(query)}-{time.monotonic_ns()}"
    job = await submit_command(h, ["python3", "-c", (
        "import os, sys, time\nprint('before', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\nprint('after')"), str(go)])
    with trio.fail_after(10):
        while (await h.job(job["id"]))["last_seq"] < 3:  # queued, started, log "before"
            await trio.sleep(0.01)
    async with ws_client(ws_url(h, job["id"], h.admin, query)) as ws:
        check_system(json.loads(await ws.get_message()), job["id"])
        go.touch()
        messages, code = await read_rest(ws)
    assert code == 1000
    return messages


async def test_running_job_gives_its_log_so_far_then_live(h: Harness) -> None:
    messages = await _before_and_after(h)
    assert [(m["type"], m["payload"].get("message", m["payload"].get("status")))
            for m in messages][1:] == [
        ("status", "RUNNING"), ("log", "before"), ("log", "after"), ("status", "SUCCEEDED")]
    assert messages[0]["type"] == "info" and "started execution" in messages[0]["payload"][
        "message"]
    assert all(set(m) == {"type", "payload"} for m in messages)


async def test_since_past_the_last_event_means_from_now(h: Harness) -> None:
    messages = await _before_and_after(h, "&since=999")
    assert [(m["type"], m["seq"], m["payload"].get("message")) for m in messages] == [
        ("log", 4, "after"), ("status", 5, None)]


async def test_replay_and_since(h: Harness) -> None:
    job = await h.submit("chatty", {"lines": 50})
    await h.wait(job["id"])
    messages, code = await session(ws_url(h, job["id"], h.alice, "&replay=1"))
    assert code == 1000
    check_system({k: v for k, v in messages[0].items()}, job["id"])
    rest = messages[1:]
    assert [m["type"] for m in rest] == ["info", "status"] + ["log"] * 50 + ["status"]
    assert [m["seq"] for m in rest] == [2, 2, *range(3, 53), 53]
    assert [m["payload"]["message"] for m in rest[2:-1]] == [f"line {i}" for i in range(50)]
    assert rest[1]["payload"]["status"] == "RUNNING"
    assert rest[-1]["payload"]["status"] == "SUCCEEDED"

    messages, code = await session(ws_url(h, job["id"], h.alice, "&since=40"))
    assert code == 1000 and [m.get("seq") for m in messages] == [None, *range(41, 54)]
    assert messages[1]["payload"]["message"] == "line 38"

    messages, code = await session(ws_url(h, job["id"], h.alice, "&since=999"))
    assert code == 1000 and [m["type"] for m in messages] == ["system", "status"]
    assert messages[1]["seq"] == 53

    for bad in ("abc", "-1", "1.5", ""):
        messages, code = await session(ws_url(h, job["id"], h.alice, f"&since={bad}"))
        assert code == 1008 and [m["type"] for m in messages] == ["error"]
        assert "since" in messages[0]["payload"]["message"]


def _tokens(h: Harness) -> dict[str, str | None]:
    now = int(time.time())
    claims = {"sub": "alice", "role": "user", "iat": now, "exp": now + 600}
    other = KeyRing({"api-1": Key("HS256", b"another secret, not the server's", "api")},
                    default_kid="api-1")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "none": None,
        "garbage": "not.a.token",
        "expired": KeyRing.load_or_create(h.data_dir).issue("alice", "user", now=now - 7200,
                                                             ttl=60),
        "other key": other.issue("alice", "user"),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": "api-1"}),
        "RS256 for an HS key": jwt.encode(claims, rsa_key, algorithm="RS256",
                                          headers={"kid": "api-1"}),
        "no exp": jwt.encode({"sub": "alice", "iat": now},
                             (h.data_dir / "signing.key").read_bytes(), algorithm="HS256",
                             headers={"kid": "api-1"}),
        "other user": h.bob,
    }


async def test_token_matrix(h: Harness) -> None:
    job = await h.submit("sleep", {"seconds": 30})
    await h.wait(job["id"], "RUNNING")
    for name, token in _tokens(h).items():
        url = h.ws_url + (f"/api/v1/ws/jobs/{job['id']}/logs" if token is None
                          else logs_path(job["id"], token))
        messages, code = await session(url)
        assert code == 1008, name
        assert [m["type"] for m in messages] == ["error"], name
        assert messages[0]["payload"]["message"] == DENIED, name
        assert re.match(ISO_MS, messages[0]["payload"]["ts"]), name
    for bad_id in ("not-a-uuid", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "x" * 500):
        messages, code = await session(ws_url(h, bad_id, h.admin))
        assert code == 1008 and messages[0]["payload"]["message"] == DENIED
    for token in (h.alice, h.admin):  # the owner and an admin get in
        async with ws_client(ws_url(h, job["id"], token)) as ws:
            check_system(json.loads(await ws.get_message()), job["id"])
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def test_origin_allowlist(h: Harness) -> None:
    job = await h.submit("echo", {"message": "o"})
    await h.wait(job["id"])
    port = h.server.port
    target = logs_path(job["id"], h.alice)
    for origin in ("http://evil.example", "null", "https://app.example.evil"):
        with pytest.raises(Rejected) as rejected:
            await RawWebSocket.connect(port, target, headers=[("Origin", origin)])
        assert rejected.value.status == 403
    for origin in (None, "http://localhost:3000", f"http://127.0.0.1:{port}",
                   "https://app.example"):
        ws = await RawWebSocket.connect(port, target,
                                        headers=[("Origin", origin)] if origin else [])
        messages = await ws.collect()
        await ws.aclose()
        assert ws.close_code == 1000 and [m["type"] for m in messages] == ECHO_AT_CONNECT


async def test_permessage_deflate_is_declined(h: Harness) -> None:
    job = await h.submit("echo", {"message": "d"})
    await h.wait(job["id"])
    ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.alice),
                                    extensions=[deflate_offer()])
    assert ws.accepted.extensions == []
    messages = await ws.collect()
    await ws.aclose()
    assert [m["type"] for m in messages] == ECHO_AT_CONNECT
    # And on the wire: no Sec-WebSocket-Extensions in the 101.
    request = (f"GET {logs_path(job['id'], h.alice)} HTTP/1.1\r\nHost: x\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
    async with await trio.open_tcp_stream("127.0.0.1", h.server.port) as stream:
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in head.lower()


async def test_oversized_message_is_refused_with_1009(h: Harness) -> None:
    job = await sleeping_job(h)
    ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.alice))
    assert [json.loads(m)["type"] async for m in ws.messages(limit=4)] == SLEEPING_OPENING
    size = 2 * 1024 * 1024
    payload = memoryview(bytes(size))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            await ws.stream.send_all(masked_frame_header(1, size))
            for i in range(0, size, 65536):
                await ws.stream.send_all(payload[i:i + 65536])
        except trio.BrokenResourceError:
            pass
        with trio.fail_after(10):
            messages = [m async for m in ws.messages()]
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        await ws.aclose()
    assert [json.loads(m)["type"] for m in messages] == ["error"]
    assert json.loads(messages[0])["payload"]["message"] == "Message too big."
    assert ws.close_code == 1009
    assert peak < 1024 * 1024, f"{peak} bytes allocated while refusing a 2 MiB frame"
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def test_protocol_errors_and_peer_close(h: Harness) -> None:
    job = await sleeping_job(h)
    target = logs_path(job["id"], h.alice)

    async def opened() -> RawWebSocket:
        ws = await RawWebSocket.connect(h.server.port, target)
        assert [json.loads(m)["type"] async for m in ws.messages(limit=4)] == SLEEPING_OPENING
        return ws

    # An unmasked client frame breaks RFC 6455 §5.1: 1002.
    ws = await opened()
    await ws.stream.send_all(b"\x81\x02hi")
    got = [json.loads(m) async for m in ws.messages()]
    assert [m["type"] for m in got] == ["error"]
    assert got[0]["payload"]["message"] == "Protocol error."
    assert ws.close_code == 1002
    await ws.aclose()
    # Invalid UTF-8 in a text frame: 1007.
    ws = await opened()
    await ws.stream.send_all(masked_frame_header(1, 2) + b"\xff\xfe")
    got = [json.loads(m) async for m in ws.messages()]
    assert [m["type"] for m in got] == ["error"] and ws.close_code == 1007
    await ws.aclose()
    # Client messages are ignored; the client's close is echoed.
    ws = await opened()
    await ws.send_text('{"type": "hello"}')
    await ws.close(4000)
    assert [m async for m in ws.messages()] == [] and ws.close_code == 4000
    await ws.aclose()
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def test_silent_peer_is_dropped_after_ping_timeout(data_dir: Path) -> None:
    async with running_server(data_dir, ws_ping_interval=0.2, ws_ping_timeout=0.3) as h:
        job = await h.submit("sleep", {"seconds": 30})
        await h.wait(job["id"], "RUNNING")
        target = logs_path(job["id"], h.alice)
        polite = await RawWebSocket.connect(h.server.port, target)
        silent = await RawWebSocket.connect(h.server.port, target)
        silent.answer_pings = False

        async def read_politely() -> None:
            async for _ in polite.messages():
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_politely)
            start = trio.current_time()
            with trio.fail_after(5):
                types = [json.loads(m)["type"] async for m in silent.messages()]
            assert types[:1] == ["system"]
            assert silent.close_code == 1011 and trio.current_time() - start < 5.0
            await trio.sleep(1.0)  # several more pings, answered: still connected
            nursery.cancel_scope.cancel()
        assert polite.close_code is None
        await polite.aclose()
        await silent.aclose()
        await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def test_shutdown_says_1001(data_dir: Path) -> None:
    async with running_server(data_dir) as h:
        job = await sleeping_job(h)
        async with ws_client(ws_url(h, job["id"], h.alice)) as ws:
            opening = [json.loads(await ws.get_message()) for _ in SLEEPING_OPENING]
            assert [m["type"] for m in opening] == SLEEPING_OPENING
            check_system(opening[0], job["id"])
            h.server.request_shutdown()
            with trio.fail_after(10):
                messages, code = await read_rest(ws)
    assert code == 1001
    assert [(m["type"], m["payload"]["message"]) for m in messages] == [
        ("system", "Job returned to the queue: server shutting down.")]


async def test_unpaired_surrogate_on_fd3_is_a_warning_not_a_crash(h: Harness) -> None:
    """A result message that UTF-8 cannot carry must not reach the terminal status."""
    script = ("import os\nos.write(3, b'{\"result\": {\"message\": \"x\\\\ud800y\"}}\\n')\n"
              "print('after')")
    job = await submit_command(h, ["python3", "-c", script])
    with trio.fail_after(10):
        messages, code = await session(ws_url(h, job["id"], h.admin, "&replay=1"))
    assert code == 1000
    final = messages[-1]["payload"]
    assert final["status"] == "SUCCEEDED" and final["result_message"] == "Completed successfully."
    assert [p["message"] for p in payloads(messages, "log")] == ["after"]
    record = await h.job(job["id"])
    assert any("unpaired surrogate" in w for w in map(str, record["warnings"]))
