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
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.protocol import ws_stream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from wsproto.events import Message

from .outbox import RECV_SIZE

# A send to hypercorn's peer goes out in pieces of at most this size, each
# with its own stall deadline.
SEND_PIECE = 256 * 1024
# Bound on the ASGI app's lifespan shutdown when the front door stops.
LIFESPAN_SHUTDOWN_SECONDS = 5.0


class ReplayStream(trio.abc.HalfCloseableStream):
    def __init__(self, sock: trio.socket.SocketType, prefix: bytes, *,
                 stall_timeout: float) -> None:
        self._sock = sock
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
        view = memoryview(data)
        try:
            while view:
                with trio.move_on_after(self._stall_timeout) as scope:
                    sent = await self._sock.send(view[:SEND_PIECE])
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError("the peer stopped reading")
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

    async def aclose(self) -> None:
        self._closed = True
        self._sock.close()
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


def hypercorn_config(*, max_message_bytes: int, graceful_timeout: float = 2.0) -> HyperConfig:
    hyper = HyperConfig()
    hyper.accesslog = None  # access lines would carry query strings, i.e. tokens
    hyper.graceful_timeout = graceful_timeout
    hyper.websocket_max_message_size = max_message_bytes
    hyper.shutdown_timeout = LIFESPAN_SHUTDOWN_SECONDS
    return hyper


class Hypercorn:
    """hypercorn's per-worker state, once for the front door, and its connections."""

    def __init__(self, app: Any, config: HyperConfig, *, stall_timeout: float) -> None:
        self.app = ASGIWrapper(app)
        self.config = config
        self.stall_timeout = stall_timeout
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
        stream = ReplayStream(trio.socket.from_stdlib_socket(sock), prefix,
                              stall_timeout=self.stall_timeout)
        server = TCPServer(self.app, self.config, self.context,
                           ConnectionState(self.state.copy()), stream)  # type: ignore[arg-type]
        await server.run()
