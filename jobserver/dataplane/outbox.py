"""Raw non-blocking sockets: reading, and the outbox that is a socket's write side.

Rules: sockets are stdlib sockets in non-blocking mode, owned by the data
plane; waiting is `trio.lowlevel.wait_readable/wait_writable`, nothing of
trio's private state is touched. `Outbox.write_nowait` never blocks: it sends
straight into the socket when nothing is queued, and queues the rest (whole
frames, in order) for the connection's writer, which sends the queue in joined
writes with `flush`. A connection whose queue passes its bounds is lagging;
the caller decides what that means (see fanout.py). A socket is closed only by
the task that owns it, after every task that waits on it has ended.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

# Bytes asked of one recv(): a few TCP windows, and the most one read holds.
RECV_SIZE = 65536
# A joined write of a backlog sends at most this much at once (a syscall's
# worth; larger joins copy more than they save).
JOIN_LIMIT = 256 * 1024
# Bytes a connection may hold queued before it counts as lagging, whatever
# the number of events: with 64 KiB log lines, events alone bound nothing.
MAX_BACKLOG_BYTES = 2 * 1024 * 1024


class PeerGone(Exception):
    """The peer closed or reset the connection."""


class Stalled(Exception):
    """The peer stopped reading: nothing could be sent for the stall timeout."""


@dataclass(slots=True)
class Counters:
    """Mutable counters the data plane's statistics are read from."""

    bytes_sent: int = 0
    # Events written to subscribers (a shared frame counts once per member it
    # goes to: added per channel delivery, not per member) and session messages.
    messages_sent: int = 0
    slow_writers: int = 0
    backlog_bytes: int = 0
    lagged: int = 0  # members dropped from the live path for falling behind
    stalled: int = 0  # connections closed: the peer stopped reading or answering pings


async def recv_some(sock: socket.socket, max_bytes: int = RECV_SIZE) -> bytes:
    """Some bytes from `sock`, or b"" at end of stream (a reset counts as the end)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            data = sock.recv(max_bytes)
            break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            data = b""
            break
        # Wait outside the handler: inside it, an idle connection would hold the
        # exception and its traceback for as long as its peer stays quiet.
        await trio.lowlevel.wait_readable(sock)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return data


def send_nowait(sock: socket.socket, data: bytes | memoryview) -> int:
    """Bytes of `data` the kernel took now (0 when the buffer is full)."""
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError:
        raise PeerGone from None


async def send_all(sock: socket.socket, data: bytes, *, stall_timeout: float) -> None:
    """Send all of `data`; PeerGone / Stalled when that is not possible."""
    view = memoryview(data)
    while view:
        sent = send_nowait(sock, view)
        view = view[sent:]
        if view:
            with trio.move_on_after(stall_timeout) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise Stalled
    await trio.lowlevel.checkpoint()


class Drained:
    """The waits of catch-ups for an outbox's backlog to shrink (both outboxes')."""

    __slots__ = ("_drained", "broken", "pending_bytes")

    def __init__(self) -> None:
        self.pending_bytes = 0
        self.broken = False
        # Catch-ups waiting for the backlog to shrink (made when one first waits).
        self._drained: trio.lowlevel.ParkingLot | None = None

    async def wait_drained(self, limit: int = 0) -> None:
        """Wait until at most `limit` bytes are queued (the writer task sends them;
        several tasks may wait). PeerGone when the socket broke meanwhile."""
        while self.pending_bytes > limit and not self.broken:
            if self._drained is None:
                self._drained = trio.lowlevel.ParkingLot()
            await self._drained.park()
        if self.broken:
            raise PeerGone
        await trio.lowlevel.checkpoint()

    def _sent(self) -> None:
        if self._drained is not None and self._drained:
            self._drained.unpark_all()


class Outbox(Drained):
    """One socket's outgoing bytes: sent at once when possible, else queued in order."""

    __slots__ = ("_chunk_events", "_chunks", "_counters", "_sock", "_wake", "pending_events",
                 "sealed")

    def __init__(self, sock: socket.socket, counters: Counters, *,
                 wake: Callable[[], None]) -> None:
        super().__init__()
        self._sock = sock
        self._counters = counters
        self._wake = wake  # tells the connection's writer there is a backlog
        # Lists, not deques: an empty deque costs 600 bytes, an empty list 56, and
        # every idle connection holds these; a joined write takes its chunks off
        # the front with one slice deletion.
        self._chunks: list[bytes | memoryview] = []
        self._chunk_events: list[int] = []
        self.pending_events = 0
        self.sealed = False  # after the last frame (a close) nothing more is written

    @property
    def idle(self) -> bool:
        return not self._chunks

    def over(self, max_events: int) -> bool:
        return self.pending_events > max_events or self.pending_bytes > MAX_BACKLOG_BYTES

    def write_nowait(self, data: bytes, events: int = 0, *, seal: bool = False) -> None:
        """Send `data` now, or queue it behind what is queued. Never blocks."""
        if self.sealed or self.broken or not data:
            self.sealed = self.sealed or seal
            return
        self.sealed = seal
        if not self._chunks:
            try:  # send_nowait, inlined: this runs per subscriber per event
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._break()
                return
            self._counters.bytes_sent += sent
            if sent == len(data):
                return
            self._counters.slow_writers += 1
            self._append(memoryview(data)[sent:] if sent else data, events)
            self._wake()
        else:
            self._append(data, events)

    def _append(self, data: bytes | memoryview, events: int) -> None:
        self._chunks.append(data)
        self._chunk_events.append(events)
        self._grow(len(data))
        self.pending_events += events

    def _grow(self, size: int) -> None:
        self.pending_bytes += size
        self._counters.backlog_bytes += size

    def truncate(self) -> None:
        """Drop what is queued, except the rest of a frame already begun."""
        while len(self._chunks) > 1:
            self._forget_last()

    def _forget_last(self) -> None:
        chunk = self._chunks.pop()
        self._grow(-len(chunk))
        self.pending_events -= self._chunk_events.pop()

    async def flush(self, *, stall_timeout: float) -> None:
        """Send everything queued, in joined writes. PeerGone / Stalled when it can't."""
        while self._chunks:
            with trio.move_on_after(stall_timeout) as scope:
                await trio.lowlevel.wait_writable(self._sock)
            if scope.cancelled_caught:
                raise Stalled
            self._send_some()
        if self.broken:
            raise PeerGone
        await trio.lowlevel.checkpoint()

    def _send_some(self) -> None:
        chunks = self._chunks
        if len(chunks) == 1 or len(chunks[0]) >= JOIN_LIMIT:
            count, buf = 1, chunks[0]
        else:
            count, size = 0, 0
            for chunk in chunks:
                if size and size + len(chunk) > JOIN_LIMIT:
                    break
                count += 1
                size += len(chunk)
            buf = b"".join(chunks[:count])
        try:
            sent = send_nowait(self._sock, buf)
        except PeerGone:
            self._break()
            return
        self._counters.bytes_sent += sent
        self._grow(-sent)
        chunk_events = self._chunk_events
        events = sum(chunk_events[:count]) if count > 1 else chunk_events[0]
        if sent < len(buf):  # the rest of what was sent at once stays first
            chunks[:count] = [memoryview(buf)[sent:]]
            chunk_events[:count] = [events]
        else:
            del chunks[:count]
            del chunk_events[:count]
            self.pending_events -= events
        if not chunks:
            self._counters.slow_writers -= 1
        self._sent()

    def _break(self) -> None:
        if self._chunks:
            self._counters.slow_writers -= 1
        self.broken = True
        self._forget_all()
        self._sent()
        self._wake()

    def _forget_all(self) -> None:
        self._grow(-self.pending_bytes)
        self._chunks.clear()
        self._chunk_events.clear()
        self.pending_events = 0

    def close(self) -> None:
        """Forget what is queued (the connection is ending)."""
        if self._chunks:
            self._counters.slow_writers -= 1
        self._forget_all()
        self._sent()
        self.sealed = True
        # `wake` is the connection's bound method: dropping it breaks the
        # connection -> outbox -> connection cycle, so reference counting frees
        # a closed connection at once instead of leaving it to a full collection.
        self._wake = _nothing


def _nothing() -> None:
    pass
