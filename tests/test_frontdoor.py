"""The front door on a real port: the hand-off to hypercorn, failed handshakes on
stream paths, the native SSE stream, and the ASGI fallback for a WebSocket on a
connection hypercorn already owns.

Every client here is a raw socket, so each request is exactly the bytes shown;
responses are read with h11. After a failure the server must be back to the
tasks and file descriptors it had before (`settled`).
"""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from jobserver.dialects.logs import LogsSession

from .conftest import Harness
from .test_dataplane_helpers import (
    SLEEPING_OPENING,
    RawWebSocket,
    Rejected,
    deflate_offer,
    gated_job,
    logs_path,
    masked_frame_header,
    running_server,
    sleeping_job,
)

HANDSHAKE_TIMEOUT = 0.5
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, handshake_timeout=HANDSHAKE_TIMEOUT) as harness:
        yield harness


# ---- a raw HTTP/1.1 client ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str, target: str, *, body: bytes = b"",
            headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The bytes of one HTTP/1.1 request (a Content-Length when it has a body)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def upgrade_headers(**replace: str | None) -> list[tuple[str, str]]:
    """A WebSocket upgrade's headers; `replace` changes (None: drops) some of them."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": WS_KEY,
               "Sec-WebSocket-Version": "13"}
    for name, value in replace.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return list(headers.items())


class Client:
    """One connection: requests go out as given, responses are read in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes | memoryview) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self.eof = not data
        return data

    async def response(self, *, method: str = "GET", timeout: float = 10.0) -> Response:
        """The next response (for a HEAD request, give its method)."""
        # A fresh h11 client per response, told it sent a request, reads exactly
        # one response and leaves what follows in trailing_data.
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        if self.buffer:  # (empty data would tell h11 the connection closed)
            conn.receive_data(self.buffer)
        self.buffer = b""
        status, headers, body = 0, {}, bytearray()
        with trio.fail_after(timeout):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.receive())
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.buffer = bytes(conn.trailing_data[0])
                    return Response(status, headers, bytes(body))
                else:
                    raise AssertionError(f"no response, but {event!r}")

    async def wait_closed(self, timeout: float = 10.0) -> bytes:
        """Everything until the server closes the connection."""
        out = self.buffer
        self.buffer = b""
        with trio.fail_after(timeout):
            while data := await self.receive():
                out += data
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


async def exchange(port: int, data: bytes, *, method: str = "GET") -> Response:
    """One request on a fresh connection, and its response."""
    client = await Client.open(port)
    try:
        await client.send(data)
        return await client.response(method=method)
    finally:
        await client.aclose()


# ---- what the server holds ---------------------------------------------------


def task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def holdings() -> tuple[int, int]:
    """(tasks, file descriptors) of this process: the server and the test share it."""
    return task_count(), fd_count()


async def settled(before: tuple[int, int], timeout: float = 5.0) -> None:
    """Wait until the server holds no more tasks and descriptors than `before`."""
    now = holdings()
    with trio.move_on_after(timeout):
        while now[0] > before[0] or now[1] > before[1]:
            await trio.sleep(0.02)
            now = holdings()
    assert now[0] <= before[0] and now[1] <= before[1], f"held {now}, before {before}"


async def healthy(h: Harness) -> None:
    r = await exchange(h.server.port, request("GET", "/healthz"))
    assert r.status == 200 and r.json()["status"] == "ok"


async def stream_stats(port: int) -> dict[str, float]:
    """The data plane's statistics from /metrics (this request counts as handed off)."""
    r = await exchange(port, request("GET", "/metrics", headers=[("Connection", "close")]))
    assert r.status == 200
    out = {}
    for line in r.body.decode().splitlines():
        if line.startswith("jobserver_stream_"):
            name, value = line.split()
            out[name.removeprefix("jobserver_stream_")] = float(value)
    return out


# ---- 1. the hand-off to hypercorn --------------------------------------------


async def test_keep_alive_requests_share_one_connection(h: Harness) -> None:
    job = await h.submit("echo", {"message": "kept alive"})
    await h.wait(job["id"])
    client = await Client.open(h.server.port)
    try:
        for _ in range(5):
            await client.send(request("GET", f"/api/v1/jobs/{job['id']}",
                                      headers=[bearer(h.alice)]))
            r = await client.response()
            assert r.status == 200 and r.json()["id"] == job["id"]
            assert r.headers.get("connection", "").lower() != "close"
        await client.send(request("HEAD", "/healthz"))
        r = await client.response(method="HEAD")
        assert r.status == 200 and r.body == b""
        await client.send(request("GET", f"/api/v1/jobs/{job['id']}/events",
                                  headers=[bearer(h.alice)]))
        r = await client.response()
        assert r.status == 200 and r.json()["events"][-1]["type"] == "finished"
        await client.send(request("GET", "/healthz", headers=[("Connection", "close")]))
        assert (await client.response()).status == 200
        assert await client.wait_closed() == b""
    finally:
        await client.aclose()


async def test_pipelined_requests_with_bodies_in_one_write(h: Harness) -> None:
    messages = [f"pipelined {i}" for i in range(4)]
    data = b"".join(request("POST", "/api/v1/jobs", headers=[
        bearer(h.alice), ("Content-Type", "application/json")], body=json.dumps(
            {"template": "echo", "params": {"message": m}}).encode()) for m in messages)
    data += request("POST", "/api/v1/jobs", body=b"{not json",
                    headers=[bearer(h.alice), ("Content-Type", "application/json")])
    data += request("GET", "/healthz")
    client = await Client.open(h.server.port)
    try:
        await client.send(data)
        created = [await client.response() for _ in messages]
        assert [r.status for r in created] == [201] * len(messages)
        assert [r.json()["params"]["message"] for r in created] == messages
        bad = await client.response()
        assert bad.status == 400 and bad.json()["code"] == "bad_json"
        assert (await client.response()).status == 200
        # Then every job's document, again in one write: answered in order.
        ids = [r.json()["id"] for r in created]
        await client.send(b"".join(request("GET", f"/api/v1/jobs/{job_id}",
                                           headers=[bearer(h.alice)]) for job_id in ids))
        for job_id in ids:
            r = await client.response()
            assert r.status == 200 and r.json()["id"] == job_id
    finally:
        await client.aclose()
    for job_id in ids:
        await h.wait(job_id)


async def _upload(client: Client, head: bytes, body: bytes) -> None:
    """Send a request in pieces; the server may stop reading and hang up."""
    data = memoryview(head + body)
    try:
        for start in range(0, len(data), 65536):
            await client.send(data[start:start + 65536])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_upload_over_the_body_limit_is_413(h: Harness, chunked: bool) -> None:
    limit = h.server.config.max_body_bytes
    size = 5 * 1024 * 1024
    assert size > limit
    piece = b"x" * 65536
    if chunked:
        head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                f"{h.alice}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        body = b"".join(b"10000\r\n" + piece + b"\r\n" for _ in range(size // len(piece)))
        body += b"0\r\n\r\n"
    else:
        head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                f"{h.alice}\r\nContent-Length: {size}\r\n\r\n").encode()
        body = piece * (size // len(piece))
    client = await Client.open(h.server.port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upload, client, head, body)
            r = await client.response()
            # The rest of the body is not read: the server hangs up.
            await client.wait_closed()
            nursery.cancel_scope.cancel()
        assert r.status == 413, r
        assert r.json()["code"] == "payload_too_large"
    finally:
        await client.aclose()
    await healthy(h)


async def test_upload_of_several_megabytes_under_the_limit(data_dir: Path) -> None:
    size = 3 * 1024 * 1024
    async with running_server(data_dir, max_body_bytes=4 * 1024 * 1024) as h:
        body = json.dumps({"template": "echo", "params": {"message": "big"},
                           "padding": "x" * size}).encode()
        client = await Client.open(h.server.port)
        try:
            await client.send(request("POST", "/api/v1/jobs", body=body, headers=[
                bearer(h.alice), ("Content-Type", "application/json")]))
            r = await client.response()
            assert r.status == 422 and r.json()["field"] == "padding", r
            # The body was read to its end: the connection goes on.
            ok = json.dumps({"template": "echo", "params": {"message": "x" * 4000}})
            await client.send(request("POST", "/api/v1/jobs", body=ok.encode(), headers=[
                bearer(h.alice), ("Content-Type", "application/json")]))
            r = await client.response()
            assert r.status == 201, r
        finally:
            await client.aclose()
        await h.wait(r.json()["id"])


async def test_client_leaving_mid_request_costs_nothing(h: Harness) -> None:
    port = h.server.port
    job = await h.submit("echo", {"message": "x"})
    await h.wait(job["id"])
    rest = request("GET", f"/api/v1/jobs/{job['id']}", headers=[bearer(h.alice)])
    post = request("POST", "/api/v1/jobs", headers=[bearer(h.alice)],
                   body=json.dumps({"template": "echo", "params": {"message": "y"}}).encode())
    cuts = {
        "half a head": rest[:len(rest) // 2],
        "a head without its blank line": rest[:-2],
        "half a body": post[:len(post) - 10],
        "a head promising a body": post[:post.index(b"\r\n\r\n") + 4],
    }
    before = holdings()
    for name, cut in cuts.items():
        for keep_alive in (False, True):
            client = await Client.open(port)
            if keep_alive:  # the connection is hypercorn's before the cut
                await client.send(rest)
                assert (await client.response()).status == 200
            await client.send(cut)
            await trio.sleep(0.05)
            await client.aclose()
            await settled(before)
            r = await exchange(port, rest)
            assert r.status == 200, (name, keep_alive)
    await settled(before)
    stats = await stream_stats(port)
    assert stats["handed_off"] <= 2 and stats["connections"] == 0  # h.client's and ours


# ---- 2. failed handshakes on stream paths ------------------------------------


async def _refused(port: int, data: bytes) -> tuple[Response, bytes]:
    """The response to `data` on a fresh connection, and what came after it before
    the server closed (nothing, or the test fails)."""
    client = await Client.open(port)
    try:
        await client.send(data)
        r = await client.response()
        return r, await client.wait_closed()
    finally:
        await client.aclose()


async def test_bad_websocket_handshakes(h: Harness) -> None:
    job = await sleeping_job(h)
    port = h.server.port
    path = logs_path(job["id"], h.alice)
    before = holdings()
    cases: list[tuple[str, bytes, int, dict[str, str]]] = [
        ("no Sec-WebSocket-Key", request("GET", path, headers=upgrade_headers(
            Sec_WebSocket_Key=None)), 400, {}),
        ("version 8", request("GET", path, headers=upgrade_headers(
            Sec_WebSocket_Version="8")), 426, {"sec-websocket-version": "13"}),
        ("no version", request("GET", path, headers=upgrade_headers(
            Sec_WebSocket_Version=None)), 400, {}),
        ("no Connection: Upgrade", request("GET", path, headers=upgrade_headers(
            Connection="keep-alive")), 400, {}),
        ("unknown WebSocket path", request(
            "GET", f"/api/v1/ws/jobs/{job['id']}/nothing", headers=upgrade_headers()), 404, {}),
        ("a WebSocket at a REST path", request(
            "GET", "/healthz", headers=upgrade_headers()), 404, {}),
        ("POST upgrade", request("POST", path, headers=upgrade_headers()), 405,
         {"allow": "GET"}),
        ("plain GET on a WebSocket path", request("GET", path), 426, {"upgrade": "websocket"}),
        ("a bad target", request("GET", "*", headers=upgrade_headers()), 400, {}),
        ("a bad Origin", request("GET", path, headers=upgrade_headers(
            Origin="https://evil.example")), 403, {}),
    ]
    for name, data, status, headers in cases:
        r, after = await _refused(port, data)
        assert r.status == status, (name, r)
        assert r.headers["connection"] == "close" and after == b"", name
        for key, value in headers.items():
            assert r.headers.get(key, "").lower() == value.lower(), (name, r.headers)
        await settled(before)
    # A plain GET on a WebSocket path from a connection hypercorn owns: the same 426.
    client = await Client.open(port)
    try:
        await client.send(request("GET", "/healthz") + request("GET", path))
        assert (await client.response()).status == 200
        r = await client.response()
        assert r.status == 426 and r.headers["upgrade"].lower() == "websocket"
    finally:
        await client.aclose()
    # And the stream path still works.
    ws = await RawWebSocket.connect(port, path)
    assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
    await ws.close()
    await ws.aclose()
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


@pytest.mark.parametrize("target", ["/healthz", "/api/v1/ws/jobs/x/logs"],
                         ids=["rest", "websocket"])
async def test_request_head_over_16_kib(h: Harness, target: str) -> None:
    before = holdings()
    big = [("X-Filler", "x" * 17 * 1024)]
    extra = upgrade_headers() if "ws" in target else []
    # Sent in one write (the whole head may arrive in one read) and in pieces.
    data = request("GET", target, headers=[*extra, *big])
    r, after = await _refused(h.server.port, data)
    assert r.status == 431 and after == b""
    client = await Client.open(h.server.port)
    try:
        for i in range(0, len(data), 1000):
            await client.send(data[i:i + 1000])
        r = await client.response()
        assert r.status == 431 and await client.wait_closed() == b""
    finally:
        await client.aclose()
    await settled(before)
    await healthy(h)


async def test_silent_and_stalled_clients_are_closed_after_the_handshake_timeout(
        h: Harness) -> None:
    port = h.server.port
    path = "/api/v1/ws/jobs/x/logs?token=t"
    prefixes = {
        "nothing": b"",
        "half a request line": b"GET /api/v1/ws/",
        "a head without its blank line": request("GET", path, headers=upgrade_headers())[:-2],
        "an SSE head without its blank line": request("GET", "/api/v1/jobs/x/stream")[:-2],
        "a REST head without its blank line": request("GET", "/healthz")[:-2],
    }
    before = holdings()
    closed: dict[str, tuple[float, bytes]] = {}

    async def stall(name: str, prefix: bytes) -> None:
        client = await Client.open(port)
        try:
            start = trio.current_time()
            if prefix:
                await client.send(prefix)
            got = await client.wait_closed(timeout=5)
            closed[name] = (trio.current_time() - start, got)
        finally:
            await client.aclose()

    async def trickle() -> None:
        """A byte at a time, never finishing: the timeout is for the whole head."""
        client = await Client.open(port)
        try:
            start = trio.current_time()
            with trio.move_on_after(5):
                try:
                    for byte in request("GET", path, headers=upgrade_headers()):
                        await client.send(bytes([byte]))
                        with trio.move_on_after(0.05):
                            if not await client.receive():
                                break
                except trio.BrokenResourceError:
                    pass  # closed between two bytes
            closed["trickle"] = (trio.current_time() - start, b"")
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for name, prefix in prefixes.items():
            nursery.start_soon(stall, name, prefix)
        nursery.start_soon(trickle)
    for name, (elapsed, got) in closed.items():
        assert got == b"", name
        assert HANDSHAKE_TIMEOUT * 0.9 <= elapsed < HANDSHAKE_TIMEOUT + 1.5, (name, elapsed)
    assert set(closed) == {*prefixes, "trickle"}
    await settled(before)
    await healthy(h)


# ---- 3. the native SSE stream ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sse:
    id: str | None
    event: str | None
    data: str


def parse_sse(text: str) -> tuple[list[Sse], int]:
    """Events and the number of comment lines (heartbeats) in a stream's body."""
    events, comments = [], 0
    for block in text.split("\n\n")[:-1]:
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
                continue
            name, _, value = line.partition(": ")
            fields.setdefault(name, []).append(value)
        if fields:
            events.append(Sse(fields.get("id", [None])[0], fields.get("event", [None])[0],
                              "\n".join(fields["data"])))
    return events, comments


class SseReader:
    """A native SSE stream on a raw connection, read event by event."""

    def __init__(self, client: Client, head: Response) -> None:
        self.client = client
        self.head = head
        self.text = ""
        self.comments = 0

    @classmethod
    async def open(cls, port: int, job_id: str, *, headers: Sequence[tuple[str, str]] = (),
                   query: str = "") -> SseReader:
        client = await Client.open(port)
        await client.send(request("GET", f"/api/v1/jobs/{job_id}/stream{query}",
                                  headers=[("Accept", "text/event-stream"), *headers]))
        # The head only: the body runs until the server closes.
        with trio.fail_after(10):
            while b"\r\n\r\n" not in client.buffer:
                data = await client.receive()
                assert data, client.buffer
                client.buffer += data
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return cls(client, Response(int(status_line.split()[1]), fields, b""))

    async def events(self, limit: int | None = None, timeout: float = 10.0) -> list[Sse]:
        """Events until the server ends the stream (or `limit` of them)."""
        out: list[Sse] = []
        with trio.fail_after(timeout):
            while True:
                self.text += self.client.buffer.decode()
                self.client.buffer = b""
                complete, sep, self.text = self.text.rpartition("\n\n")
                found, comments = parse_sse(complete + sep)
                self.comments += comments
                out += found
                if limit is not None and len(out) >= limit:
                    assert len(out) == limit or not found, "read past the limit"
                    return out
                data = await self.client.receive()
                if not data:
                    assert self.text == "", self.text
                    return out
                self.client.buffer = data

    async def aclose(self) -> None:
        await self.client.aclose()


async def rest_events(h: Harness, job_id: str) -> list[dict[str, Any]]:
    r = await h.client.get(f"/api/v1/jobs/{job_id}/events", headers=h.auth(h.admin))
    assert r.status_code == 200
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def read_all(h: Harness, job_id: str, *, headers: Sequence[tuple[str, str]] = (),
                   query: str = "") -> list[Sse]:
    reader = await SseReader.open(h.server.port, job_id, headers=[bearer(h.admin), *headers],
                                  query=query)
    try:
        assert reader.head.status == 200
        return await reader.events()
    finally:
        await reader.aclose()


async def test_native_stream_ids_resume_and_end(h: Harness) -> None:
    go = h.data_dir / "go-native"
    job = await gated_job(h, go, 40)
    port = h.server.port
    reader = await SseReader.open(port, job["id"], headers=[bearer(h.admin)])
    try:
        assert reader.head.status == 200
        assert reader.head.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert reader.head.headers["cache-control"] == "no-cache"
        assert reader.head.headers["connection"] == "close"
        assert "content-length" not in reader.head.headers
        first = await reader.events(limit=2)  # history: queued, started
    finally:
        await reader.aclose()  # dropped mid-stream
    assert [e.event for e in first] == ["queued", "started"]
    go.touch()
    rest = await read_all(h, job["id"], headers=[("Last-Event-ID", str(first[-1].id))])
    full = await read_all(h, job["id"])
    assert first + rest == full
    assert full[-1].event == "finished"
    # id: is the seq, data: is the same JSON as GET .../events, nothing lost or repeated.
    history = await rest_events(h, job["id"])
    assert [e.id for e in full] == [str(e["seq"]) for e in history]
    assert [json.loads(e.data) for e in full] == history
    assert [e.event for e in full] == [e["type"] for e in history]
    logs = [json.loads(e.data)["line"] for e in full if e.event == "log"]
    assert logs == [f"line {i} " for i in range(40)]
    # Every cut, by Last-Event-ID and by ?after=.
    for cut in (1, len(full) // 2, len(full) - 2):
        assert await read_all(h, job["id"], headers=[
            ("Last-Event-ID", str(full[cut].id))]) == full[cut + 1:]
        assert await read_all(h, job["id"], query=f"?after={full[cut].id}") == full[cut + 1:]
    # After the last event: 204 (EventSource stops reconnecting).
    r = await exchange(port, request("GET", f"/api/v1/jobs/{job['id']}/stream", headers=[
        bearer(h.admin), ("Last-Event-ID", str(full[-1].id))]))
    assert r.status == 204 and r.body == b""


async def test_native_stream_live_until_the_terminal_event(h: Harness) -> None:
    go = h.data_dir / "go-live"
    job = await gated_job(h, go, 5)
    reader = await SseReader.open(h.server.port, job["id"], query=f"?token={h.admin}")
    try:
        assert reader.head.status == 200
        history = await reader.events(limit=2)
        go.touch()
        live = await reader.events()  # returns when the server closes
        assert reader.client.eof
    finally:
        await reader.aclose()
    events = history + live
    assert [e.event for e in events] == ["queued", "started"] + ["log"] * 5 + ["finished"]
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))


async def test_native_stream_heartbeats(data_dir: Path) -> None:
    async with running_server(data_dir, sse_heartbeat=0.05) as h:
        go = h.data_dir / "go-beats"
        job = await gated_job(h, go, 1)
        reader = await SseReader.open(h.server.port, job["id"], headers=[bearer(h.admin)])
        try:
            history = await reader.events(limit=2)
            with trio.move_on_after(0.4):
                assert await reader.events() == []  # nothing but comments
            assert reader.comments >= 3
            go.touch()
            live = await reader.events()
        finally:
            await reader.aclose()
        assert [e.event for e in history + live][-2:] == ["log", "finished"]


async def test_native_stream_refusals(h: Harness) -> None:
    job = await h.submit("echo", {"message": "mine"}, token=h.alice)
    await h.wait(job["id"])
    port = h.server.port
    stream = f"/api/v1/jobs/{job['id']}/stream"
    before = holdings()
    cases: list[tuple[str, bytes, int, str | None]] = [
        ("no token", request("GET", stream), 401, "unauthenticated"),
        ("a bad token", request("GET", stream, headers=[bearer("not.a.token")]), 401,
         "unauthenticated"),
        ("a bad ?token", request("GET", stream + "?token=nope"), 401, "unauthenticated"),
        ("someone else's job", request("GET", stream, headers=[bearer(h.bob)]), 404,
         "job_not_found"),
        ("an unknown job", request("GET", "/api/v1/jobs/3fa85f64-5717-4562-b3fc-2c963f66afa6/"
                                   "stream", headers=[bearer(h.alice)]), 404, "job_not_found"),
        ("a bad Last-Event-ID", request("GET", stream, headers=[
            bearer(h.alice), ("Last-Event-ID", "x")]), 422, "validation_failed"),
        ("nothing after the end", request("GET", stream + "?after=999", headers=[
            bearer(h.alice)]), 204, None),
    ]
    for name, data, status, code in cases:
        r, after = await _refused(port, data)
        assert r.status == status and after == b"", (name, r)
        assert r.headers["connection"] == "close", name
        if code is not None:
            assert r.headers["content-type"] == "application/json", name
            assert r.json()["code"] == code, name
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer", name
        await settled(before)
    # POST is not a stream: the app answers, and the connection goes on.
    client = await Client.open(port)
    try:
        await client.send(request("POST", stream, headers=[bearer(h.alice)], body=b"{}")
                          + request("GET", "/healthz"))
        assert (await client.response()).status in (404, 405)
        assert (await client.response()).status == 200
    finally:
        await client.aclose()
    assert (await read_all(h, job["id"]))[-1].event == "finished"


# ---- 4. the logs dialect on a connection hypercorn owns ----------------------


async def _ws_after_rest(h: Harness, job_id: str, target: str, *,
                         extensions: Sequence[Any] = ()) -> RawWebSocket:
    """A WebSocket upgrade sent on a connection that made a REST call first."""
    stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
    try:
        client = Client(stream)
        await client.send(request("GET", f"/api/v1/jobs/{job_id}", headers=[bearer(h.admin)]))
        r = await client.response()
        assert r.status == 200 and r.json()["id"] == job_id and client.buffer == b""
    except BaseException:
        await stream.aclose()
        raise
    return await RawWebSocket.connect(h.server.port, target, stream=stream,
                                      extensions=extensions)


def without_system_ts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if m["type"] == "system":
            m = {**m, "payload": {**m["payload"], "ts": "-"}}
        out.append(m)
    return out


async def test_logs_websocket_on_a_keep_alive_connection(h: Harness) -> None:
    port = h.server.port
    # A finished job, with its history.
    done = await h.submit("chatty", {"lines": 30})
    await h.wait(done["id"])
    target = logs_path(done["id"], h.alice, "&replay=1")
    direct = await RawWebSocket.connect(port, target)
    fallback = await _ws_after_rest(h, done["id"], target)
    try:
        got_direct, got_fallback = await direct.collect(), await fallback.collect()
    finally:
        await direct.aclose()
        await fallback.aclose()
    assert direct.close_code == fallback.close_code == 1000
    assert len(got_direct) == 34 and without_system_ts(got_fallback) == without_system_ts(
        got_direct)
    # A live one: both connected before the job prints.
    go = h.data_dir / "go-fallback"
    job = await gated_job(h, go, 50)
    target = logs_path(job["id"], h.admin)
    direct = await RawWebSocket.connect(port, target)
    fallback = await _ws_after_rest(h, job["id"], target)
    try:
        for ws in (direct, fallback):
            assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
        stats = await stream_stats(port)
        # Both run the same member code now: the fallback's is a subscriber too.
        assert stats["connections"] == 2 and stats["subscribers"] == 2
        go.touch()
        got_direct, got_fallback = await direct.collect(), await fallback.collect()
    finally:
        await direct.aclose()
        await fallback.aclose()
    assert direct.close_code == fallback.close_code == 1000
    assert got_fallback == got_direct
    assert [m["payload"]["message"] for m in got_direct if m["type"] == "log"] == [
        f"line {i} " for i in range(50)]
    assert got_direct[-1]["payload"]["status"] == "SUCCEEDED"


async def test_fallback_refusals_and_limits(h: Harness) -> None:
    job = await sleeping_job(h)
    target = logs_path(job["id"], h.alice)
    before = holdings()
    # No permessage-deflate on a reused connection either: 400.
    with pytest.raises(Rejected) as refused:
        await _ws_after_rest(h, job["id"], target, extensions=[deflate_offer()])
    assert refused.value.status == 400
    # A bad token: the dialect's own error message and 1008, as on the raw path.
    ws = await _ws_after_rest(h, job["id"], logs_path(job["id"], "nope"))
    messages = await ws.collect()
    await ws.aclose()
    assert [m["type"] for m in messages] == ["error"] and ws.close_code == 1008
    # An oversized message: hypercorn's cap, never all of it held; the session's
    # error, then 1009, as on the raw path.
    ws = await _ws_after_rest(h, job["id"], target)
    opening = [json.loads(m)["type"] async for m in ws.messages(limit=4)]
    assert opening == SLEEPING_OPENING
    peak = await _send_oversized([ws])
    assert [json.loads(m)["type"] async for m in ws.messages()] == ["error"]
    await ws.aclose()
    assert ws.close_code == 1009
    assert peak < 1024 * 1024, f"{peak} bytes allocated while refusing a 2 MiB frame"
    await settled(before)
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def test_bad_frames_on_a_keep_alive_connection_as_on_the_raw_path(h: Harness) -> None:
    """Invalid UTF-8, an unmasked frame and an oversized ping: the dialect's `error`,
    then the close code RFC 6455 gives, on the fallback as on a fresh connection."""
    job = await sleeping_job(h)
    target = logs_path(job["id"], h.alice)
    bad = {
        1007: masked_frame_header(1, 2) + b"\xff\xfe",  # invalid UTF-8
        1002: b"\x81\x02hi",  # unmasked
    }
    oversized_ping = masked_frame_header(9, 200) + bytes(200)  # control frames: <= 125
    for raw_path in (True, False):
        for code, frame in (*bad.items(), (1002, oversized_ping)):
            ws = await (RawWebSocket.connect(h.server.port, target) if raw_path
                        else _ws_after_rest(h, job["id"], target))
            opening = [json.loads(m)["type"] async for m in ws.messages(limit=4)]
            assert opening == SLEEPING_OPENING
            await ws.stream.send_all(frame)
            got = [json.loads(m) async for m in ws.messages()]
            await ws.aclose()
            assert [m["type"] for m in got] == ["error"], (raw_path, code)
            assert ws.close_code == code, (raw_path, code)
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


# ---- 5. oversized frames, several at once ------------------------------------


async def _send_oversized(sockets: Sequence[RawWebSocket], size: int = 2 * 1024 * 1024
                          ) -> int:
    """Each socket sends one `size`-byte text frame, all at once; the peak of the
    memory Python allocated meanwhile (the server runs in this process)."""
    payload = memoryview(bytes(65536))

    async def send(ws: RawWebSocket) -> None:
        try:
            await ws.stream.send_all(masked_frame_header(1, size))
            for i in range(0, size, len(payload)):
                await ws.stream.send_all(payload[:size - i])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for ws in sockets:
                    nursery.start_soon(send, ws)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


async def test_oversized_frames_from_many_clients_at_once(h: Harness) -> None:
    job = await sleeping_job(h)
    clients = [await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.alice))
               for _ in range(6)]
    try:
        for ws in clients:
            opening = [json.loads(m)["type"] async for m in ws.messages(limit=4)]
            assert opening == SLEEPING_OPENING
        peak = await _send_oversized(clients)
        for ws in clients:
            with trio.fail_after(10):
                assert [json.loads(m)["type"] async for m in ws.messages()] == ["error"]
            assert ws.close_code == 1009
    finally:
        for ws in clients:
            await ws.aclose()
    # Six 2 MiB frames: had any one been held whole, the peak would pass 2 MiB.
    assert peak < 2 * 1024 * 1024, f"{peak} bytes allocated while refusing 6 x 2 MiB frames"
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))



async def test_a_bug_in_one_connection_ends_only_that_connection(
        h: Harness, monkeypatch: pytest.MonkeyPatch,
        connection_errors: list[logging.LogRecord]) -> None:
    job = await sleeping_job(h)
    real_open = LogsSession.open

    def broken_open(self: LogsSession) -> Any:
        raise RuntimeError("a bug in a session")

    monkeypatch.setattr(LogsSession, "open", broken_open)
    with pytest.raises(Exception):  # noqa: B017, PT011  the socket just closes
        await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.alice))
    assert [r.getMessage() for r in connection_errors] == ["a connection ended with an error"]
    connection_errors.clear()
    monkeypatch.setattr(LogsSession, "open", real_open)
    ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.alice))
    assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
    await ws.aclose()
    r = await h.client.get("/healthz")
    assert r.status_code == 200
