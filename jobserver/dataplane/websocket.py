"""The raw WebSocket transport: wsproto for the handshake and for reading frames.

Rules: permessage-deflate (or any extension) is never accepted; an inbound
message over `config.ws_max_message_bytes` is refused with 1009 as soon as
it passes the cap, so no more than the cap is ever held; the server pings
every `ws_ping_interval` while its socket is idle and drops a peer whose pong
is `ws_ping_timeout` late (one whose socket stays full is dropped by the
writer's stall timeout, interval + timeout); Origin is checked before the
upgrade (403). Outgoing data frames are the data plane's shared bytes
(wire.ws_text_frame); control frames come from wsproto and go through the same
outbox, so nothing interleaves inside a frame.
Close codes are RFC 6455's: the peer's close is echoed; 1002/1007 on a bad
frame; 1001 on shutdown; 1011 when the peer stops answering pings.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..dialects import Action, Close, Refuse, Session
from .http import Head, origin_allowed, parse_target, peer_host, stream_request
from .outbox import recv_some
from .plane import DataPlane
from .routes import Match
from .stream import LINGER_SECONDS, SocketConnection, answer, drain_nowait
from .wakeup import Wakeup

_OPEN = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)


async def open_websocket(plane: DataPlane, sock: socket.socket, head: Head,
                         match: Match) -> WebSocketConnection | None:
    """The accepted WebSocket, ready to run; None when the handshake was answered
    otherwise (and that answer sent). The handshake's state dies here."""
    config = plane.config
    stall = plane.stall_timeout
    headers = head.headers()
    if not origin_allowed(headers.get("origin"), headers.get("host"), config.allowed_origins):
        plane.metrics.refused("origin")
        await answer(sock, 403, b"Origin not allowed.\n", stall_timeout=stall)
        return None
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(list(head.request.headers), head.request.target)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        status, extra = (hint.status_code, [(k.decode(), v.decode()) for k, v in hint.headers]) \
            if isinstance(hint, RejectConnection) else (400, [])
        plane.metrics.refused("bad_handshake")
        await answer(sock, status, b"Bad WebSocket handshake.\n", headers=extra,
                     stall_timeout=stall)
        return None
    target = parse_target(head.target)
    if target is None:
        await answer(sock, 400, b"Bad request target.\n", stall_timeout=stall)
        return None
    request = stream_request("GET", target[0], target[1], headers, match.params,
                             peer=peer_host(sock))
    opened = None
    with trio.move_on_after(config.handshake_timeout):
        opened = await plane.open_session(match.route, request)
    if opened is None:
        await answer(sock, 503, b"Try again.\n", stall_timeout=stall)
        return None
    session, opening, actions = opened
    if isinstance(opening, Refuse):
        await answer(sock, opening.status, opening.body, content_type=opening.content_type,
                     headers=opening.headers, stall_timeout=stall)
        return None
    accept = handshake.send(AcceptConnection(
        extensions=[], extra_headers=[(k.encode(), v.encode()) for k, v in opening.headers]))
    ws = handshake.connection
    assert ws is not None
    return WebSocketConnection(plane, sock, session, ws, preamble=accept, actions=actions,
                               trailing=head.trailing)


class WebSocketConnection(SocketConnection):
    __slots__ = ("_bytes", "_failed", "_pong_deadline", "_size", "_text", "peer_closed", "ws")
    encoding = "ws"

    def __init__(self, plane: DataPlane, sock: socket.socket, session: Session,
                 ws: Connection, *, preamble: bytes, actions: Sequence[Action],
                 trailing: bytes) -> None:
        super().__init__(plane, sock, session, preamble=preamble, actions=actions,
                         trailing=trailing)
        self.ws = ws
        self.peer_closed = Wakeup()
        self._failed = False  # the peer broke the protocol: stop reading it
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self._size = 0
        self._pong_deadline = math.inf

    # ---- closing ---------------------------------------------------------

    def close(self, close: Close) -> None:
        if self.closing:
            return
        self.closing = True
        self.detach_all()
        if self.ws.state in _OPEN:
            frame = self.ws.send(CloseConnection(code=close.code, reason=close.reason or None))
            self.outbox.write_nowait(bytes(frame), seal=True)
        self.wake()

    def _protocol_error(self, close: Close) -> None:
        self.apply_nowait(self.session.on_protocol_error(close, now=self.plane.now()))
        self.close(close)

    async def after_close(self) -> None:
        # The peer answers with its close frame, or hangs up (after a 1009 or a
        # protocol error its input is read and dropped until then).
        with trio.move_on_after(LINGER_SECONDS):
            await self.peer_closed.wait()
        drain_nowait(self.sock)

    # ---- reading ---------------------------------------------------------

    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        config = self.plane.config
        next_ping = trio.current_time() + config.ws_ping_interval
        if trailing:
            await self._deliver(self._receive(trailing))
        while not self.peer_closed.is_set():
            with trio.move_on_at(min(next_ping, self._pong_deadline)):
                data = await recv_some(self.sock)
                if not data:
                    break
                await self._deliver(self._receive(data))
                continue
            now = trio.current_time()
            if now >= self._pong_deadline:
                self.drop_slow()
                self.close(Close(1011, "ping timeout"))
                break
            if now >= next_ping:
                next_ping = now + config.ws_ping_interval
                self._ping(now)
        # The peer hung up, answered our close, or stopped answering pings.
        self.peer_closed.set()
        if not self.closing or self._pong_deadline <= trio.current_time():
            abort.cancel()

    def _ping(self, now: float) -> None:
        """Ping, unless one is outstanding or the socket is busy draining a backlog:
        a peer whose socket drains is alive, and one whose socket stays full is
        dropped by the writer's stall timeout; a ping queued behind a backlog
        would only measure the backlog."""
        if self._pong_deadline != math.inf or self.closing or not self.outbox.idle \
                or self.ws.state is not ConnectionState.OPEN:
            return
        self.outbox.write_nowait(bytes(self.ws.send(Ping(b"jobserver"))))
        self._pong_deadline = now + self.plane.config.ws_ping_timeout

    async def _deliver(self, messages: list[str | bytes]) -> None:
        """Hand the client's complete messages to the session, one after another."""
        for whole in messages:
            if self.closing:
                return
            await self.handle(self.session.on_message(whole))

    def _receive(self, data: bytes) -> list[str | bytes]:
        """Feed wsproto; the complete messages it gave (control frames answered here)."""
        messages: list[str | bytes] = []
        if self._failed:
            return messages
        try:
            self.ws.receive_data(data)
        except LocalProtocolError:
            return messages
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                whole = self._message(event)
                if whole is not None:
                    messages.append(whole)
            elif isinstance(event, Ping):
                if self.ws.state is ConnectionState.OPEN and not self.closing:
                    self.outbox.write_nowait(bytes(self.ws.send(event.response())))
            elif isinstance(event, Pong):
                self._pong_deadline = math.inf
            elif isinstance(event, CloseConnection):
                self._peer_close(event)
            if self._failed:
                return messages
        return messages

    def _peer_close(self, event: CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            self.close(Close(event.code, ""))  # echo it (RFC 6455 §5.5.1)
        elif state is ConnectionState.OPEN:
            # Not a close frame: wsproto's report of a malformed one (1002, 1007).
            self._failed = True
            self._protocol_error(Close(event.code, event.reason or ""))
        self.peer_closed.set()

    def _message(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        """The whole message once its last frame arrived (None before, or refused)."""
        if self.closing:
            return None
        data = event.data
        self._size += len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if self._size > self.plane.config.ws_max_message_bytes:
            self._failed = True
            self._text.clear()
            self._bytes.clear()
            self._protocol_error(Close(1009, "message too big"))
            return None
        whole: str | bytes
        if isinstance(event, TextMessage):
            self._text.append(event.data)
            if not event.message_finished:
                return None
            whole, self._text = "".join(self._text), []
        else:
            self._bytes.append(bytes(event.data))
            if not event.message_finished:
                return None
            whole, self._bytes = b"".join(self._bytes), []
        self._size = 0
        return whole

