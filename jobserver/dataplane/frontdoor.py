"""The front door: one listening port; stream requests to the data plane, the rest
to hypercorn.

    serve_front_door
    └── hypercorn lifespan (the ASGI app's startup/shutdown, once)
        └── connections nursery: the batching channels' clock (batch.py), then
            one task per accepted connection (limits.py's caps)
            ├── read the first request head (h11; 16 KiB cap; handshake timeout)
            ├── stream route → data plane (websocket.py / sse.py), raw socket
            ├── data plane's answer (404/405/426 for WebSocket paths) → close
            └── anything else → hypercorn's TCPServer, bytes already read replayed
                (every later head and every body timed: limits.py, handoff.py)

Rules: the port is bound with the stdlib socket and connections are accepted
here, so every data-plane socket is a plain non-blocking socket of ours. A
connection costs one task; a handshake that fails ends it (after a bounded
linger) and closes its socket. A connection over `max_connections` (or
`max_connections_per_client`) is answered 503 and closed before it gets a
task. Cancelling `serve_front_door` closes every stream with 1001, then stops
the app's lifespan. Every refusal before routing is counted once, by reason
(metrics.REFUSALS): these requests never reach the app's request metrics.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import trio

from ..auth import KeyRing
from ..config import Config
from ..engine import Engine
from .handoff import Hypercorn, hypercorn_config
from .http import BadHead, Head, parse_target, read_head
from .limits import ConnectionCount, ReadLimits
from .plane import DataPlane
from .routes import Answer, Match
from .sse import open_sse
from .stream import StreamConnection, answer
from .websocket import open_websocket
from .wire import http_response

log = logging.getLogger("jobserver.frontdoor")

BACKLOG = 1024
# Out of file descriptors (or memory) for a new connection: pause accepting
# this long rather than spin (trio.serve_listeners does the same).
ACCEPT_PAUSE_SECONDS = 0.1
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# Sent (without waiting) to a connection over the limits, before it is closed.
OVER_LIMIT = http_response(503, b"Too many connections.\n", headers=[("Retry-After", "1")])


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_front_door(
    config: Config, engine: Engine, keyring: KeyRing, asgi_app: Any, *,
    listen_socket: socket.socket | None = None, plane: DataPlane | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `config.host:config.port` (or `listen_socket`); started with the bound port.

    `plane` is the data plane to use (give the same one to `stream_fallback`
    and read its statistics); one is made when it is not given.
    """
    plane = plane or DataPlane(config=config, engine=engine, keyring=keyring)
    listener = listen_socket or bind_socket(config.host, config.port)
    listener.setblocking(False)
    count = ConnectionCount(total=config.max_connections,
                            per_client=config.max_connections_per_client)
    limits = ReadLimits(head_seconds=config.handshake_timeout, body_seconds=config.body_timeout,
                        idle_seconds=config.keep_alive_timeout)
    hyper = Hypercorn(asgi_app, hypercorn_config(max_message_bytes=config.ws_max_message_bytes,
                                                 keep_alive_timeout=config.keep_alive_timeout),
                      stall_timeout=plane.stall_timeout, limits=limits)
    door = FrontDoor(plane, hyper, count)
    try:
        async with hyper.running(), trio.open_nursery() as connections:
            await connections.start(plane.batches.run)
            task_status.started(listener.getsockname()[1])
            await door.accept_loop(listener, connections)
    finally:
        listener.close()


class FrontDoor:
    def __init__(self, plane: DataPlane, hyper: Hypercorn, count: ConnectionCount) -> None:
        self.plane = plane
        self.hyper = hyper
        self.count = count
        self.slow_log = hyper.slow_log  # one throttle for every slow-request line

    async def accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRNOS:
                        log.error("cannot accept a connection: %s; pausing", exc)
                        await trio.sleep(ACCEPT_PAUSE_SECONDS)
                        break
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                        continue
                    raise
                sock.setblocking(False)
                client = str(address[0])
                if not self.count.admit(client, trio.current_time()):
                    _refuse(sock)
                    self.plane.metrics.refused("over_capacity")
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self.connection, sock, client)

    async def connection(self, sock: socket.socket, client: str) -> None:
        """One accepted connection, from its first byte to its close. A bug met
        while serving it ends this connection, logged, never the server."""
        try:
            stream = await self._open(sock, client)
            if stream is not None:
                await stream.run()
        except Exception:
            log.exception("a connection ended with an error")
        finally:
            sock.close()
            self.count.release(client)

    async def _open(self, sock: socket.socket, client: str) -> StreamConnection | None:
        """Read the first head and act on it; the stream it opened, if any. The head
        dies here, so an open stream holds none of its request's bytes."""
        head: Head | BadHead = BadHead(None)
        limit = self.plane.config.handshake_timeout
        with trio.move_on_after(limit) as waited:
            head = await read_head(sock)
        metrics = self.plane.metrics
        if waited.cancelled_caught:
            self.slow_log.log(trio.current_time(), "closed a connection from %s: no whole "
                              "request head within %g s", client, limit)
            metrics.refused("slow_head")
        if isinstance(head, BadHead):
            if head.status is not None:
                metrics.refused("bad_head")
                await answer(sock, head.status, b"Bad request.\n",
                             stall_timeout=self.plane.stall_timeout)
            return None
        decision = self._classify(head)
        if decision is None:
            await self._hand_off(sock, head)
            return None
        if isinstance(decision, Answer):
            metrics.refused(_ANSWERED.get(decision.status, "no_route"))
            await answer(sock, decision.status, decision.message.encode() + b"\n",
                         content_type=decision.content_type, headers=decision.headers,
                         stall_timeout=self.plane.stall_timeout)
            return None
        opener = open_websocket if decision.route.transport == "ws" else open_sse
        return await opener(self.plane, sock, head, decision)

    def _classify(self, head: Head) -> Match | Answer | None:
        websocket = head.wants_websocket
        target = parse_target(head.target)
        if target is None:
            return Answer(400, "Bad request target.") if websocket else None
        return self.plane.routes.classify(head.method, target[0], websocket)

    async def _hand_off(self, sock: socket.socket, head: Head) -> None:
        self.plane.handed_off += 1
        try:
            await self.hyper.serve(sock, head.raw)
        finally:
            self.plane.handed_off -= 1


# The reason (metrics.REFUSALS) of each status the routes answer before a stream.
_ANSWERED = {426: "upgrade_required", 400: "bad_target", 404: "no_route", 405: "no_route"}


def _refuse(sock: socket.socket) -> None:
    """Answer 503 if the socket takes it at once, and close (no task, no read)."""
    try:
        sock.send(OVER_LIMIT)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        sock.close()
