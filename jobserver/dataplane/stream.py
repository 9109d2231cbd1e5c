"""One stream connection on a raw socket: the part WebSocket and SSE share.

A `StreamConnection` owns its socket's outbox, its members (followed topics)
and its session. Its main task is the writer: it flushes backlogs in joined
writes, runs members' catch-ups from the store, and asks the session what to
do when a followed stream ends. A reader task (the transport's) runs beside
it in the connection's own nursery. Rules: the publisher only ever calls the
sync `wake`; a peer that leaves its socket full for `plane.stall_timeout` or
goes away is dropped; when the front door is cancelled the connection says
goodbye in a shielded, bounded moment (`going_away`) and the socket is closed
by whoever opened it, after this returns.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import trio

from ..dialects import Accept, Action, Close, Message, Session
from .fanout import Member
from .outbox import RECV_SIZE, Outbox, PeerGone, Stalled, send_all
from .plane import DataPlane
from .wakeup import Wakeup
from .wire import ENCODERS, http_response

# After a close frame or a refusal, how long the peer gets to read it and
# hang up before the socket is closed (and the bytes it may still send).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
# On shutdown, how long a connection may spend saying goodbye (1001).
GOING_AWAY_SECONDS = 1.0


class StreamConnection:
    """An accepted stream: `preamble` (the response head) and `opening` are sent
    first, `trailing` (bytes the client sent after its request) read first.

    Slotted, and the request it came from is not kept: thousands are held at
    once, so each holds only what it needs for its life.
    """

    __slots__ = ("_encode", "_outbox", "_start", "_wakeup", "closing", "members", "plane",
                 "session", "sock")
    encoding = "ws"

    def __init__(self, plane: DataPlane, sock: socket.socket, session: Session, *,
                 preamble: bytes, opening: Accept, trailing: bytes) -> None:
        self.plane = plane
        self.sock = sock
        self.session = session
        self._outbox = Outbox(sock, plane.counters, wake=self.wake)
        self._encode = ENCODERS[self.encoding]
        self.members: list[Member] = []
        self.closing = False
        self._wakeup = Wakeup()
        self._start: tuple[bytes, Accept, bytes] | None = (preamble, opening, trailing)

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def wake(self) -> None:
        self._wakeup.set()

    # ---- what the transports specialise ----------------------------------

    def close(self, close: Close) -> None:
        """Begin the end: detach every member and queue the transport's last bytes."""
        raise NotImplementedError

    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        raise NotImplementedError

    async def idle(self) -> None:
        """Wait for something to do (a transport may send heartbeats meanwhile)."""
        await self._wakeup.wait()

    async def after_close(self) -> None:
        """Once the last bytes are out (a WebSocket waits for the peer's close)."""

    def going_away(self) -> None:
        """The server is stopping: queue a goodbye, if the transport has one."""

    # ---- shared ----------------------------------------------------------

    def send(self, message: Message) -> None:
        if not self.closing:
            self._outbox.write_nowait(self._encode((message,)))

    def apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Close):
                self.close(action)
            else:
                self.send(action)

    def detach_all(self) -> None:
        for member in self.members:
            if not member.detached:
                member.detach()

    async def run(self) -> None:
        """Serve the accepted stream until it closes, the peer goes, or we are cancelled."""
        assert self._start is not None, "a stream connection runs once"
        plane = self.plane
        plane.connections += 1
        try:
            self._begin()
            trailing, self._start = self._start[2], None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.read_loop, trailing, nursery.cancel_scope)
                try:
                    await self._write_loop()
                    await self.after_close()
                except (PeerGone, Stalled):
                    pass
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if cancelled(exc):
                await self._say_goodbye()
            raise
        finally:
            for member in self.members:
                plane.leave(member)
            self.members.clear()  # member.sink is this connection: no cycle left behind
            self._outbox.close()
            plane.connections -= 1

    def _begin(self) -> None:
        assert self._start is not None
        preamble, opening, _ = self._start
        self._outbox.write_nowait(preamble)
        self.apply(opening.messages)
        if opening.follow is not None and not self.closing:
            self.members.append(self.plane.join(self, opening.follow, self.encoding))
        elif opening.close is not None:
            self.close(opening.close)

    async def _write_loop(self) -> None:
        store = self.plane.engine.store
        stall = self.plane.stall_timeout
        while True:
            self._wakeup.clear()
            await self._outbox.flush(stall_timeout=stall)
            if self.closing:
                if self._outbox.idle:
                    return
                continue
            for member in list(self.members):
                if member.ended:
                    self.members.remove(member)
                    self.plane.leave(member)
                    self.apply(self.session.on_end())
                elif member.needs_catch_up and not member.detached:
                    await member.catch_up(store, stall_timeout=stall)
            if self.closing or not self._outbox.idle or any(
                    m.ended or m.needs_catch_up for m in self.members):
                continue
            await self.idle()

    async def _say_goodbye(self) -> None:
        if self.closing or self._outbox.broken:
            return
        self.detach_all()
        self._outbox.truncate()
        self.going_away()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + GOING_AWAY_SECONDS
            try:
                await self._outbox.flush(stall_timeout=GOING_AWAY_SECONDS)
            except (PeerGone, Stalled):
                pass


def cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(cancelled(e) for e in exc.exceptions)
    return False


async def answer(sock: socket.socket, status: int, body: bytes = b"", *,
                 content_type: str = "text/plain; charset=utf-8",
                 headers: Sequence[tuple[str, str]] = (), stall_timeout: float) -> None:
    """Send a complete HTTP response, then hang up politely (see `linger`)."""
    data = http_response(status, body, content_type=content_type, headers=headers)
    try:
        await send_all(sock, data, stall_timeout=stall_timeout)
    except (PeerGone, Stalled):
        return
    await linger(sock)


async def linger(sock: socket.socket) -> None:
    """Half-close, then read and drop what the peer still sends, briefly.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the response before the client read it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    dropped = 0
    with trio.move_on_after(LINGER_SECONDS):
        while dropped < LINGER_MAX_BYTES:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not data:
                return
            dropped += len(data)


def drain_nowait(sock: socket.socket) -> None:
    """Read and drop whatever input is waiting (so close() sends FIN, not RST)."""
    for _ in range(16):
        try:
            if not sock.recv(RECV_SIZE):
                return
        except OSError:
            return

