"""The ASGI fallback: stream routes for requests that arrive on a connection
hypercorn already owns (a keep-alive connection after a REST call).

Wrap the app: `asgi_app = stream_fallback(quart_app, engine=..., keyring=...,
config=..., plane=...)`. Stream requests get the same session, the same
opening (`DataPlane.open_session`) and the same connection code as on the raw
data plane (stream.py: members, catch-ups, timers, needs); only the outbox
differs: `QueueOutbox` hands its bytes to ASGI's `send` from the connection's
writer task instead of writing into a socket. Every other scope goes to the
app untouched.

Rules: nothing here writes from the publisher (ASGI `send` awaits), so every
event waits in the bounded outbox for the writer; a WebSocket's messages are
encoded NUL-terminated (`wire.encode_asgi_ws`: JSON text never contains a NUL)
and sent one `websocket.send` each. A WebSocket offering an extension is
refused (400), since hypercorn would accept permessage-deflate and inflate
frames before any size check; clients open a fresh connection for a WebSocket
anyway, and there the front door never negotiates one. Stalled peers are cut
by the front door's ReplayStream; there are no pings here (ASGI has none).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import trio

from ..auth import KeyRing
from ..config import Config
from ..dialects import Action, Close, Refuse, Session
from ..engine import Engine
from .http import origin_allowed, parse_target, stream_request
from .hyper_ws import PROTOCOL_ERROR
from .outbox import JOIN_LIMIT, MAX_BACKLOG_BYTES, Counters, Drained, PeerGone, Stalled
from .plane import DataPlane
from .routes import Answer, Match
from .stream import StreamConnection
from .wire import SSE_HEADERS, SSE_HEARTBEAT

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
# Any ASGI 3 application; frameworks type their own scopes and events.
ASGIApp = Any
Final = Callable[[], Awaitable[None]]


def stream_fallback(app: ASGIApp, *, engine: Engine, keyring: KeyRing, config: Config,
                    plane: DataPlane | None = None) -> StreamFallback:
    """`app` with the data plane's stream routes in front of it."""
    return StreamFallback(app, plane or DataPlane(config=config, engine=engine, keyring=keyring))


class QueueOutbox(Drained):
    """An outbox (outbox.Outbox's interface) whose bytes go out through an async
    `send`: `write_nowait` only queues and wakes the writer, whose `flush` sends
    the queue in joined pieces, then the final message once sealed."""

    __slots__ = ("_chunk_events", "_chunks", "_counters", "_final", "_send", "_wake",
                 "pending_events", "sealed")

    def __init__(self, send: Callable[[bytes], Awaitable[None]], counters: Counters, *,
                 wake: Callable[[], None]) -> None:
        super().__init__()
        self._send = send
        self._counters = counters
        self._wake = wake
        self._chunks: list[bytes] = []
        self._chunk_events: list[int] = []
        self._final: Final | None = None
        self.pending_events = 0
        self.sealed = False

    @property
    def idle(self) -> bool:
        return not self._chunks and self._final is None

    def over(self, max_events: int) -> bool:
        return self.pending_events > max_events or self.pending_bytes > MAX_BACKLOG_BYTES

    def write_nowait(self, data: bytes, events: int = 0, *, seal: bool = False) -> None:
        if self.sealed or self.broken or not data:
            self.sealed = self.sealed or seal
            return
        self.sealed = seal
        self._chunks.append(data)
        self._chunk_events.append(events)
        self.pending_bytes += len(data)
        self.pending_events += events
        self._wake()

    def seal_with(self, final: Final) -> None:
        """Nothing more is written; `final` goes out after what is queued."""
        if not self.sealed and not self.broken:
            self.sealed = True
            self._final = final
            self._wake()

    def truncate(self) -> None:
        del self._chunks[1:]
        del self._chunk_events[1:]
        self.pending_bytes = sum(len(c) for c in self._chunks)
        self.pending_events = sum(self._chunk_events)

    async def flush(self, *, stall_timeout: float) -> None:
        while self._chunks or self._final is not None:
            if self._chunks:
                count, size = 0, 0
                for chunk in self._chunks:
                    if count and size + len(chunk) > JOIN_LIMIT:
                        break
                    count += 1
                    size += len(chunk)
                data = b"".join(self._chunks[:count])
                events = sum(self._chunk_events[:count])
                await self._sending(partial(self._send, data), stall_timeout)
                del self._chunks[:count]
                del self._chunk_events[:count]
                self.pending_bytes -= size
                self.pending_events -= events
                self._counters.bytes_sent += size
                self._sent()
            else:
                final, self._final = self._final, None
                assert final is not None
                await self._sending(final, stall_timeout)
        await trio.lowlevel.checkpoint()

    async def _sending(self, send: Final, stall_timeout: float) -> None:
        if self.broken:
            raise PeerGone
        with trio.move_on_after(stall_timeout) as scope:
            try:
                await send()
            except (OSError, RuntimeError, trio.BrokenResourceError, trio.ClosedResourceError):
                self._break()
                raise PeerGone from None
        if scope.cancelled_caught:
            raise Stalled

    def _break(self) -> None:
        self.broken = True
        self.close()

    def close(self) -> None:
        self._chunks.clear()
        self._chunk_events.clear()
        self.pending_bytes = self.pending_events = 0
        self._final = None
        self.sealed = True
        self._sent()


class AsgiConnection(StreamConnection):
    """A stream served through hypercorn's ASGI `send` / `receive`."""

    __slots__ = ("_queue", "_receive", "_send")

    def __init__(self, plane: DataPlane, session: Session, send: Send, receive: Receive, *,
                 actions: Sequence[Action]) -> None:
        outbox = QueueOutbox(self._send_bytes, plane.counters, wake=self.wake)
        super().__init__(plane, session, outbox, actions=actions, trailing=b"")
        self._queue = outbox
        self._send = send
        self._receive = receive

    @abc.abstractmethod
    async def _send_bytes(self, data: bytes) -> None:
        ...

    @abc.abstractmethod
    async def _final(self, close: Close) -> None:
        ...

    def close(self, close: Close) -> None:
        if self.closing:
            return
        self.closing = True
        self.detach_all()

        async def final() -> None:
            await self._final(close)

        self._queue.seal_with(final)


class AsgiWebSocket(AsgiConnection):
    __slots__ = ()
    encoding = "asgi-ws"

    async def _send_bytes(self, data: bytes) -> None:
        for part in data.split(b"\0")[:-1]:
            await self._send({"type": "websocket.send", "text": part.decode("utf-8")})

    async def _final(self, close: Close) -> None:
        await self._send({"type": "websocket.close", "code": close.code,
                          "reason": close.reason})

    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        while True:
            message = await self._receive()
            if message["type"] == PROTOCOL_ERROR:
                if not self.closing:
                    close = Close(int(message["code"]), str(message["reason"]))
                    now = self.plane.now()
                    self.apply_nowait(self.session.on_protocol_error(close, now=now))
                    self.close(close)
                continue
            if message["type"] != "websocket.receive":
                break
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            if self.closing:
                continue
            await self.handle(self.session.on_message(data))
        abort.cancel()


class AsgiSse(AsgiConnection):
    __slots__ = ()
    encoding = "sse"

    async def _send_bytes(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def _final(self, close: Close) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        interval = self.plane.config.sse_heartbeat
        while True:
            with trio.move_on_after(interval):
                if (await self._receive())["type"] == "http.disconnect":
                    break
                continue
            if self._outbox.idle and not self.closing:
                self._outbox.write_nowait(SSE_HEARTBEAT)
        abort.cancel()


class StreamFallback:
    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            websocket = kind == "websocket"
            method = "GET" if websocket else scope["method"]
            decision = self.plane.routes.classify(method, scope["path"], websocket)
            if isinstance(decision, Answer):
                body = decision.message.encode() + b"\n"
                await _refuse(scope, send, Refuse(decision.status, body, decision.content_type,
                                                  decision.headers))
                return
            if isinstance(decision, Match):
                if websocket and (await receive())["type"] != "websocket.connect":
                    return
                await self._stream(decision, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _stream(self, match: Match, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        if websocket:
            if "sec-websocket-extensions" in headers:
                await _refuse(scope, send, _plain(400, "WebSocket extensions are not supported "
                                                       "on a reused connection; open a new one."))
                return
            if not origin_allowed(headers.get("origin"), headers.get("host"),
                                  self.plane.config.allowed_origins):
                await _refuse(scope, send, _plain(403, "Origin not allowed."))
                return
        query = scope.get("query_string", b"").decode("latin-1")
        target = parse_target(f"/?{query}")
        client = scope.get("client")
        request = stream_request("GET" if websocket else scope["method"], scope["path"],
                                 target[1] if target else {}, headers, match.params,
                                 peer=str(client[0]) if client else None)
        opened = None
        with trio.move_on_after(self.plane.config.handshake_timeout):
            opened = await self.plane.open_session(match.route, request)
        if opened is None:
            await _refuse(scope, send, _plain(503, "Try again."))
            return
        session, opening, actions = opened
        if isinstance(opening, Refuse):
            await _refuse(scope, send, opening)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in opening.headers]
        connection: AsgiConnection
        if websocket:
            await send({"type": "websocket.accept", "headers": extra})
            connection = AsgiWebSocket(self.plane, session, send, receive, actions=actions)
        else:
            sse = [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": sse + extra})
            connection = AsgiSse(self.plane, session, send, receive, actions=actions)
        await connection.run()


def _plain(status: int, text: str = "") -> Refuse:
    return Refuse(status, text.encode() + b"\n" if text else b"", "text/plain; charset=utf-8")


async def _refuse(scope: Scope, send: Send, refuse: Refuse) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in refuse.headers]
    if refuse.body and refuse.content_type:
        headers.append((b"content-type", refuse.content_type.encode()))
    headers.append((b"content-length", str(len(refuse.body)).encode()))
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        start, body = "websocket.http.response.start", "websocket.http.response.body"
    else:
        start, body = "http.response.start", "http.response.body"
    await send({"type": start, "status": refuse.status, "headers": headers})
    await send({"type": body, "body": refuse.body})
