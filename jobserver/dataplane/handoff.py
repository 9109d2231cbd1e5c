"""Handing a connection to hypercorn: its per-connection server, our socket.

hypercorn (pinned: 0.18.0, this is its internal API) serves one connection
with `hypercorn.trio.tcp_server.TCPServer(app, config, context, state,
stream)`. `worker_serve` normally runs the ASGI lifespan and one
`WorkerContext` around all of them; `Hypercorn` does the same once for the
whole front door. `ReplayStream` is the stream TCPServer reads: the bytes the
front door already read come first, then the socket; it exposes `.socket`
(TCPServer asks it for addresses) and no `do_handshake` (so it is not TLS).
Its sends give up when the peer leaves its window shut for `stall_timeout`:
hypercorn shields its sends from cancellation, so nothing else could stop
one to a client that stopped reading. hypercorn's WebSocket message buffer is
replaced by one that stops at the cap (`CappedWebsocketBuffer`).

`BoundedTCPServer` is TCPServer with its read loop bounded by limits.py's
rules (hypercorn's own `read_timeout` would bound every read, a silent
WebSocket's or SSE client's too). `BoundedH11Protocol` is hypercorn's HTTP/1.1
protocol that says `Connection: close` on every response after which it
closes (the request body not read to its end, or the server stopping; RFC
9112 §9.6), and that never switches to HTTP/2 (an `Upgrade: h2c` is ignored,
as RFC 9110 §7.8 allows), so every connection is under these bounds; it
also holds the head of a response of known length until the body's first
piece and writes both at once (one send per plain answer, not two). A
connection it closes lingers (stream.py's `linger`): a close with unread
input would reset the connection and could destroy the answer (so
`ReplayStream.aclose` only wakes the tasks using the socket, and the front
door closes it after the linger).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import hypercorn.protocol
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, H11SendableEvent, LifespanState
from wsproto.events import Message

from .http import peer_host
from .limits import ReadLimits, RequestClock, Throttled, Waiting
from .outbox import RECV_SIZE
from .stream import linger
from .wire import http_response

# A send to hypercorn's peer goes out in pieces of at most this size, each
# with its own stall deadline.
SEND_PIECE = 256 * 1024
# A response head is joined with a body piece of at most this size (a copy);
# a longer one goes in a write of its own.
COALESCE_BYTES = 64 * 1024
# Bound on the ASGI app's lifespan shutdown when the front door stops.
LIFESPAN_SHUTDOWN_SECONDS = 5.0


class ReplayStream(trio.abc.HalfCloseableStream):
    def __init__(self, sock: socket.socket, prefix: bytes, *, stall_timeout: float) -> None:
        self._stdlib_sock = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._prefix = prefix
        self._stall_timeout = stall_timeout
        self._closed = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError
        size = max_bytes or RECV_SIZE
        if self._prefix:
            await trio.lowlevel.checkpoint()
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        try:
            return await self._sock.recv(size)
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError from None
            raise trio.BrokenResourceError(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        # The socket's own non-blocking send first: a deadline and trio's send
        # wrapper cost each write some 20 us more, and a REST answer is one
        # write that the kernel takes at once. Only a full window waits (and
        # then the stall deadline applies). No checkpoint when none waited:
        # hypercorn calls this shielded, under its send lock.
        view = memoryview(data)
        try:
            while view:
                try:
                    sent = self._stdlib_sock.send(view[:SEND_PIECE])
                except BlockingIOError:
                    with trio.move_on_after(self._stall_timeout) as scope:
                        await self._sock.wait_writable()
                    if scope.cancelled_caught:
                        raise trio.BrokenResourceError("the peer stopped reading") from None
                    continue
                view = view[sent:]
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        finally:
            view.release()

    async def wait_send_all_might_not_block(self) -> None:
        await self._sock.wait_writable()

    async def send_eof(self) -> None:
        # Not a cancel point: hypercorn closes a connection (`send_eof`, then
        # `aclose`) from the app's task, which quart-trio has just cancelled.
        # Cancelled here would skip the close and leave the connection open.
        if self._closed:
            raise trio.ClosedResourceError
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    @property
    def peer(self) -> str | None:
        return peer_host(self._stdlib_sock)

    async def aclose(self) -> None:
        # The socket is closed by the front door, after `Hypercorn.serve` let it
        # linger; a task still reading or writing it is woken here.
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
        await trio.lowlevel.checkpoint()


class CappedWebsocketBuffer(ws_stream.WebsocketBuffer):
    """hypercorn's buffer for an inbound WebSocket message, held at its cap.

    hypercorn's own raises past `websocket_max_message_size` (and sends 1009)
    but goes on writing the rest of the message into itself, so one large
    frame sent to a reused connection was held whole. This one stops writing.
    """

    def extend(self, event: Message[Any]) -> None:
        if self.length > self.max_length:
            raise ws_stream.FrameTooLargeError
        super().extend(event)


# Every WSStream hypercorn makes (in this process: the front door's) uses it.
ws_stream.WebsocketBuffer = CappedWebsocketBuffer  # type: ignore[misc]


class BoundedH11Protocol(H11Protocol):
    """HTTP/1.1 as hypercorn speaks it, with `Connection: close` said when due,
    and the head of a response of known length sent with its body's first
    piece (hypercorn sends each in a write of its own: two sends, and two
    packets, per plain REST answer)."""

    _head = b""  # a response head held for the body's first piece

    async def stream_send(self, event: StreamEvent) -> None:
        if (isinstance(event, Response) and event.status_code >= 200
                and isinstance(self.connection, h11.Connection)
                and (self.connection.their_state is h11.SEND_BODY
                     or self.context.terminated.is_set())):
            event = dataclasses.replace(
                event, headers=[*event.headers, (b"connection", b"close")])
        elif self._head and isinstance(event, StreamClosed):
            await self._send_head()  # the app ended without a body
        await super().stream_send(event)

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        if type(event) is h11.Response and _known_length(event.headers):
            try:
                self._head = self.connection.send(event) or b""
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
            return
        if not self._head:
            await super()._send_h11_event(event)
            return
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        if len(data) > COALESCE_BYTES:
            await self._send_head()
            await self.send(RawData(data=data))
        else:
            head, self._head = self._head, b""
            await self.send(RawData(data=head + data))

    async def _send_head(self) -> None:
        head, self._head = self._head, b""
        await self.send(RawData(data=head))

    async def _check_protocol(self, event: h11.Request) -> None:
        return None  # no h2c upgrade, no HTTP/2 prior knowledge


def _known_length(headers: Any) -> bool:
    """Whether h11 will frame the response by Content-Length (its body follows
    at once, in one piece or a few): then its head can wait for it."""
    return any(name == b"content-length" for name, _ in headers)


# Every ProtocolWrapper hypercorn makes (in this process: the front door's) uses it.
hypercorn.protocol.H11Protocol = BoundedH11Protocol  # type: ignore[misc]


class BoundedTCPServer(TCPServer):
    """hypercorn's TCPServer, whose reads of a request head or body are timed."""

    limits: ReadLimits
    slow_log: Throttled

    def _waiting_for(self) -> tuple[Waiting | None, int]:
        protocol = self.protocol.protocol
        connection = protocol.connection
        if not isinstance(protocol, H11Protocol) or not isinstance(connection, h11.Connection):
            return None, 0  # a WebSocket now: its own deadlines hold
        requests = protocol.keep_alive_requests
        if connection.their_state is h11.SEND_BODY:
            return "body", requests
        if connection.their_state is h11.IDLE and connection.our_state is h11.IDLE:
            return ("head" if connection.trailing_data[0] else "idle"), requests
        return None, requests

    async def _read_data(self) -> None:
        self._clock = RequestClock(self.limits)
        self._waiting: Waiting | None = None
        while True:
            data: bytes | bytearray | None = None
            try:
                with trio.CancelScope() as self._read_scope:
                    self._rearm()
                    data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            finally:
                self._read_scope = None
            if data is None:  # the deadline passed
                assert self._waiting is not None
                if self._waiting != "idle":
                    await self._too_slow(self._waiting)
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    _read_scope: trio.CancelScope | None = None

    def _rearm(self) -> None:
        """Set the pending read's deadline from what the connection waits for now."""
        if self._read_scope is not None:
            self._waiting, number = self._waiting_for()
            self._read_scope.deadline = self._clock.deadline(
                self._waiting, number, trio.current_time())

    async def protocol_send(self, event: Event) -> None:
        # An answer sent, or the connection idle again: the read's limit changes.
        self._rearm()
        await super().protocol_send(event)

    async def _too_slow(self, waiting: Waiting) -> None:
        """408 when nothing was answered yet (else just the close), and a log line."""
        stream: ReplayStream = self.stream  # type: ignore[assignment]
        self.slow_log.log(trio.current_time(),
                          "closed a connection from %s: a request %s took longer than %g s",
                          stream.peer or "?", waiting, self.limits.limit(waiting))
        async with self.send_lock:  # (the app's answer, if it begins now, waits for it)
            connection = self.protocol.protocol.connection
            if isinstance(connection, h11.Connection) and connection.our_state in (
                    h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await stream.send_all(http_response(408, b"Request timeout.\n"))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass


def hypercorn_config(*, max_message_bytes: int, keep_alive_timeout: float = 20.0,
                     graceful_timeout: float = 2.0) -> HyperConfig:
    hyper = HyperConfig()
    hyper.keep_alive_timeout = keep_alive_timeout
    hyper.accesslog = None  # access lines would carry query strings, i.e. tokens
    hyper.graceful_timeout = graceful_timeout
    hyper.websocket_max_message_size = max_message_bytes
    hyper.shutdown_timeout = LIFESPAN_SHUTDOWN_SECONDS
    return hyper


class Hypercorn:
    """hypercorn's per-worker state, once for the front door, and its connections."""

    def __init__(self, app: Any, config: HyperConfig, *, stall_timeout: float,
                 limits: ReadLimits) -> None:
        self.app = ASGIWrapper(app)
        self.config = config
        self.stall_timeout = stall_timeout
        self.limits = limits
        self.slow_log = Throttled(logging.INFO)
        self.state: LifespanState = {}
        self.context = WorkerContext(None)
        self._lifespan = Lifespan(self.app, config, self.state)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the app's lifespan around the body (hypercorn's `worker_serve` order).

        The lifespan task is shielded so that cancelling the front door still
        lets the app hear `lifespan.shutdown` (bounded) after the connections.
        """
        lifespan_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(self._run_lifespan, lifespan_scope)
            try:
                await self._lifespan.wait_for_startup()
                yield
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + LIFESPAN_SHUTDOWN_SECONDS
                    await self.context.terminated.set()
                    await self._lifespan.wait_for_shutdown()
                lifespan_scope.cancel()

    async def _run_lifespan(self, scope: trio.CancelScope, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        with scope:
            await self._lifespan.handle_lifespan(task_status=task_status)

    async def serve(self, sock: socket.socket, prefix: bytes) -> None:
        """Serve one connection whose first `prefix` bytes were already read."""
        stream = ReplayStream(sock, prefix, stall_timeout=self.stall_timeout)
        server = BoundedTCPServer(self.app, self.config, self.context,
                                  ConnectionState(self.state.copy()),
                                  stream)  # type: ignore[arg-type]
        server.limits, server.slow_log = self.limits, self.slow_log
        await server.run()
        await linger(sock)
