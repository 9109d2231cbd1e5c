"""Helpers for the data-plane tests: servers with settings, a fast raw WebSocket client.

trio-websocket is the reference client in the dialect tests; `RawWebSocket`
(wsproto on a trio stream, no background task) reads hundreds of thousands of
messages quickly, can stop reading, ignore pings, and send hand-made frames.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from jobserver.auth import KeyRing
from jobserver.server import Server, serve

from .conftest import Harness, make_config

ISO_MS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
# A job that waits for its go file, then prints `count` numbered lines.
GATED_PRINTER = (
    "import os, sys, time\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
    "w = sys.stdout.write\n"
    "pad = sys.argv[3]\n"
    "for i in range(int(sys.argv[2])): w('line %d %s\\n' % (i, pad))\n"
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: Any) -> AsyncIterator[Harness]:
    """The whole server (`serve`) on a loopback port with these settings."""
    config = make_config(data_dir, **{"kill_grace": 1.0, **overrides})
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        keys = KeyRing.load_or_create(data_dir)
        async with httpx.AsyncClient(base_url=server.url, timeout=20.0) as client:
            yield Harness(server, client, keys.issue("root", "admin"),
                          keys.issue("alice", "user"), keys.issue("bob", "user"), data_dir)
        server.request_shutdown()


async def submit_command(h: Harness, argv: Sequence[str]) -> dict[str, Any]:
    """An ad-hoc job (the admin's, so subscribe with `h.admin`)."""
    r = await h.client.post("/api/v1/jobs", json={"command": list(argv)},
                            headers=h.auth(h.admin))
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


async def gated_job(h: Harness, go: Path, count: int, pad: str = "") -> dict[str, Any]:
    job = await submit_command(h, ["python3", "-c", GATED_PRINTER, str(go), str(count), pad])
    await h.wait(job["id"], "RUNNING")
    return job


# What a logs client reads first on a `sleeping_job`: the opening and its history.
SLEEPING_OPENING = ["system", "info", "status", "log"]


async def sleeping_job(h: Harness) -> dict[str, Any]:
    """A job that printed its one line and sleeps: after its history (queued,
    started, one log line), its logs stream is quiet."""
    job = await h.submit("sleep", {"seconds": 30})
    with trio.fail_after(10):
        while (await h.job(job["id"]))["last_seq"] < 3:  # queued, started, log
            await trio.sleep(0.01)
    return job


@asynccontextmanager
async def ws_client(url: str) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's client, closing its socket itself.

    trio-websocket 0.12 leaves the TCP socket open when the server closes first
    (its aclose returns early once a close reason is set), and the socket's
    ResourceWarning would fail the test.
    """
    ws: WebSocketConnection | None = None
    try:
        async with open_websocket_url(url) as ws:
            yield ws
    finally:
        if ws is not None:
            await ws._stream.aclose()


def logs_path(job_id: str, token: str, extra: str = "") -> str:
    return f"/api/v1/ws/jobs/{job_id}/logs?token={token}{extra}"


class Rejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake rejected: {status}")
        self.status = status
        self.body = body


class RawWebSocket:
    """A WebSocket client that reads only when asked to."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, leftover: list[Any],
                 accepted: AcceptConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.accepted = accepted
        self._events: list[Any] = leftover
        self._parts: list[str] = []
        self._outgoing = b""
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.answer_pings = True

    @classmethod
    async def connect(cls, port: int, target: str, *, extensions: Sequence[Any] = (),
                      headers: Sequence[tuple[str, str]] = (),
                      stream: trio.SocketStream | None = None) -> RawWebSocket:
        if stream is None:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(
            host=f"127.0.0.1:{port}", target=target, extensions=list(extensions),
            extra_headers=[(k.encode(), v.encode()) for k, v in headers])))
        status, body = 0, b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                await stream.aclose()
                raise Rejected(status, body)
            ws.receive_data(data)
            events = list(ws.events())
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    return cls(stream, ws, events[i + 1:], event)
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        await stream.aclose()
                        raise Rejected(status, body)
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        await stream.aclose()
                        raise Rejected(status, body)

    async def _fill(self) -> bool:
        """Send pending answers, read once more; False at the end of the stream."""
        await self.send_answers()
        try:
            data = await self.stream.receive_some(262144)
        except trio.BrokenResourceError:
            data = b""
        self.ws.receive_data(data or None)
        self._events.extend(self.ws.events())
        return bool(data)

    async def messages(self, limit: int | None = None) -> AsyncIterator[str]:
        """Text messages until the close (or `limit` of them); close_code is set at the end.

        Stop early only with `limit` (breaking out of the loop drops what was read).
        """
        got = 0
        while True:
            events, self._events = self._events, []
            for i, event in enumerate(events):
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                    if not event.message_finished:
                        continue
                    text, self._parts = "".join(self._parts), []
                    yield text
                    got += 1
                    if limit is not None and got >= limit:
                        self._events = events[i + 1:] + self._events
                        return
                elif isinstance(event, Ping):
                    if self.answer_pings and self.ws.state is ConnectionState.OPEN:
                        self._outgoing += self.ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    self.close_reason = event.reason
                    with contextlib.suppress(Exception):
                        await self.stream.send_all(self.ws.send(event.response()))
                    return
            if not await self._fill():
                if self.close_code is None:
                    self.close_code = 1006
                return

    async def send_answers(self) -> None:
        """Send the pongs owed for pings read so far (they go out with the next
        read otherwise: a client that stops reading would owe them)."""
        if self._outgoing:
            data, self._outgoing = self._outgoing, b""
            await self.stream.send_all(data)

    async def collect(self) -> list[dict[str, Any]]:
        return [json.loads(m) async for m in self.messages()]

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def close(self, code: int = 1000) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(self.ws.send(CloseConnection(code=code)))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def each_text_frame(port: int, target: str, on_text: Callable[[bytes], None]) -> int:
    """Open a WebSocket at `target`, hand every text frame's payload to `on_text`
    until the server's close, and return its code (1006: no close frame).

    A few lines of frame parsing instead of wsproto: a million messages in
    seconds. Server frames are unmasked and, from this server, unfragmented.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                raise Rejected(0, bytes(buf))
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise Rejected(int(head.split()[1]), rest)
        buf = bytearray(rest)
        unpack = struct.unpack_from
        while True:
            pos, size = 0, len(buf)
            while size - pos >= 2:
                opcode, length, start = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, pos + 2
                if length == 126:
                    if size - pos < 4:
                        break
                    length, start = unpack("!H", buf, pos + 2)[0], pos + 4
                elif length == 127:
                    if size - pos < 10:
                        break
                    length, start = unpack("!Q", buf, pos + 2)[0], pos + 10
                if size - start < length:
                    break
                if opcode == 1:
                    on_text(bytes(buf[start:start + length]))
                elif opcode == 8:
                    code: int = unpack("!H", buf, start)[0] if length >= 2 else 1005
                    return code
                pos = start + length
            del buf[:pos]
            data = await stream.receive_some(262144)
            if not data:
                return 1006
            buf += data
    finally:
        await stream.aclose()


def deflate_offer() -> PerMessageDeflate:
    return PerMessageDeflate()


def masked_frame_header(opcode: int, length: int, *, fin: bool = True,
                        mask: bytes = b"\x00\x00\x00\x00") -> bytes:
    """A client frame header (mask all zeros, so the payload goes as it is)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + mask
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + mask
    return struct.pack("!BBQ", first, 0x80 | 127, length) + mask


async def raw_request(port: int, data: bytes, *, read_until_close: bool = True,
                      timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read everything until the server closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            if data:
                await stream.send_all(data)
            out = b""
            while read_until_close:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                out += chunk
            return out


def set_small_buffers(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
