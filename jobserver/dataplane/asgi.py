"""The ASGI fallback: stream routes for requests that arrive on a connection
hypercorn already owns (a keep-alive connection after a REST call).

Wrap the app: `asgi_app = stream_fallback(quart_app, engine=..., keyring=...,
config=..., plane=...)`. Stream requests get the same session as on the raw
data plane, through a thin transport: `websocket.send` per message, SSE as
`http.response.body` chunks; every other scope goes to the app untouched.

Rules: history and live events come from `engine.follow` (store first, then
the hub, bounded, by seq), rendered for this client alone: this path has no
direct writes. A WebSocket offering an extension is refused (400), since
hypercorn would accept permessage-deflate and inflate frames before any size
check; clients open a fresh connection for a WebSocket anyway, and there the
front door never negotiates one. Stalled peers are cut by the front door's
ReplayStream; there are no pings here (ASGI has none).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..auth import KeyRing
from ..config import Config
from ..core.events import Event
from ..dialects import Accept, Close, Follow, Message, Refuse, Session
from ..engine import Engine
from .http import origin_allowed, parse_target, stream_request
from .plane import DataPlane
from .routes import Answer, Match
from .stream import GOING_AWAY_SECONDS, cancelled
from .wire import SSE_HEADERS, SSE_HEARTBEAT, encode_sse

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
# Any ASGI 3 application; frameworks type their own scopes and events.
ASGIApp = Any
Emit = Callable[[Sequence[Message]], Awaitable[None]]


def stream_fallback(app: ASGIApp, *, engine: Engine, keyring: KeyRing, config: Config,
                    plane: DataPlane | None = None) -> StreamFallback:
    """`app` with the data plane's stream routes in front of it."""
    return StreamFallback(app, plane or DataPlane(config=config, engine=engine, keyring=keyring))


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
                await _refuse(scope, send, Refuse(decision.status, decision.message.encode(),
                                                  "text/plain; charset=utf-8", decision.headers))
                return
            if isinstance(decision, Match):
                self.plane.connections += 1
                try:
                    if websocket:
                        await self._websocket(decision, scope, receive, send)
                    else:
                        await self._sse(decision, scope, receive, send)
                finally:
                    self.plane.connections -= 1
                return
        await self.app(scope, receive, send)

    async def _open(self, match: Match, scope: Scope) -> tuple[Session | None, Accept | Refuse]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        target = parse_target(f"/?{query}")
        client = scope.get("client")
        request = stream_request("GET" if scope["type"] == "websocket" else scope["method"],
                                 path, target[1] if target else {}, headers, match.params,
                                 peer=str(client[0]) if client else None)
        if scope["type"] == "websocket":
            if "sec-websocket-extensions" in headers:
                return None, _plain(400, "WebSocket extensions are not supported on a reused "
                                         "connection; open a new one.")
            if not origin_allowed(headers.get("origin"), headers.get("host"),
                                  self.plane.config.allowed_origins):
                return None, _plain(403, "Origin not allowed.")
        with trio.fail_after(self.plane.config.handshake_timeout):
            return await match.route.open(self.plane, request)

    async def _websocket(self, match: Match, scope: Scope, receive: Receive, send: Send
                         ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        session, opening = await self._open(match, scope)
        if session is None or isinstance(opening, Refuse):
            await _refuse(scope, send, opening if isinstance(opening, Refuse) else _plain(500))
            return
        await send({"type": "websocket.accept",
                    "headers": [(k.encode(), v.encode()) for k, v in opening.headers]})

        async def emit(messages: Sequence[Message]) -> None:
            for message in messages:
                await send({"type": "websocket.send", "text": message})

        async def close(close: Close) -> None:
            await send({"type": "websocket.close", "code": close.code, "reason": close.reason})

        async def reader(cancel: trio.CancelScope) -> None:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    cancel.cancel()
                    return
                text = message.get("text")
                data: str | bytes = text if text is not None else message.get("bytes") or b""
                if await _apply(session.on_message(data), emit, close):
                    cancel.cancel()
                    return

        try:
            await _run(session, opening, _Transport(self.plane, emit, close, reader, None))
        except BaseException as exc:
            if cancelled(exc):
                with trio.CancelScope(shield=True) as goodbye:
                    goodbye.deadline = trio.current_time() + GOING_AWAY_SECONDS
                    await close(Close(1001, "server shutting down"))
            raise

    async def _sse(self, match: Match, scope: Scope, receive: Receive, send: Send) -> None:
        session, opening = await self._open(match, scope)
        if session is None or isinstance(opening, Refuse):
            await _refuse(scope, send, opening if isinstance(opening, Refuse) else _plain(500))
            return
        headers = [(k.lower().encode(), v.encode()) for k, v in (*SSE_HEADERS, *opening.headers)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def emit(messages: Sequence[Message]) -> None:
            await send({"type": "http.response.body", "body": encode_sse(messages),
                        "more_body": True})

        async def beat() -> None:
            await send({"type": "http.response.body", "body": SSE_HEARTBEAT, "more_body": True})

        async def close(close: Close) -> None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def reader(cancel: trio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.cancel()

        await _run(session, opening, _Transport(self.plane, emit, close, reader, beat))


@dataclass(frozen=True, slots=True)
class _Transport:
    plane: DataPlane
    emit: Emit
    close: Callable[[Close], Awaitable[None]]
    reader: Callable[[trio.CancelScope], Awaitable[None]]
    beat: Callable[[], Awaitable[None]] | None  # an SSE heartbeat


def _plain(status: int, text: str = "") -> Refuse:
    return Refuse(status, text.encode() + b"\n" if text else b"", "text/plain; charset=utf-8")


async def _run(session: Session, opening: Accept, transport: _Transport) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.reader, nursery.cancel_scope)
        if await _apply(opening.messages, transport.emit, transport.close):
            nursery.cancel_scope.cancel()
            return
        if opening.follow is None:
            if opening.close is not None:
                await transport.close(opening.close)
                nursery.cancel_scope.cancel()
            return
        await _follow(opening.follow, transport)
        await _apply(session.on_end(), transport.emit, transport.close)
        nursery.cancel_scope.cancel()


async def _apply(actions: Sequence[Message | Close], emit: Emit,
                 close: Callable[[Close], Awaitable[None]]) -> bool:
    """Send the actions' messages; True once one of them closed the stream."""
    messages: list[Message] = []
    for action in actions:
        if isinstance(action, Close):
            if messages:
                await emit(messages)
            await close(action)
            return True
        messages.append(action)
    if messages:
        await emit(messages)
    return False


async def _follow(follow: Follow, transport: _Transport) -> None:
    """Send the followed topic's rendered events until its renderer says end."""
    renderer = follow.renderer
    after = follow.after
    seeded = after == 0
    if seeded:
        renderer = renderer.after(None)
    beat_every = transport.plane.config.sse_heartbeat if transport.beat else math.inf
    with transport.plane.engine.follow(follow.topic, max(after - 1, 0)) as follower:
        while True:
            batch: list[Event] = []
            with trio.move_on_after(beat_every):
                batch = await follower.next_batch()
            if not batch:
                if transport.beat is not None:
                    await transport.beat()
                continue
            if not seeded:
                seeded = True
                if batch[0].seq == after:
                    renderer = renderer.after(batch[0])
            messages: list[Message] = []
            ended = False
            for event in batch:
                if event.seq <= after:
                    continue
                rendered = renderer.render(event)
                messages.extend(rendered.messages)
                if rendered.end:
                    ended = True
                    break
            if messages:
                await transport.emit(messages)
            if ended:
                return


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
