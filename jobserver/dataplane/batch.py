"""Batches: one connection's pending items of a subscription, sent as one message.

A session that subscribes with a `Batch` (dialects/__init__.py) still shares
its channel's rendering: the channel encodes each event's items once, as bare
UTF-8 items each followed by a comma (`wire.encode_items`), for every
subscriber of every transport. What differs per connection is only when they
go: a member's `BatchOutbox` stands in for the connection's outbox, collects
the items it is given (live pushes and catch-up pages alike, in seq order)
and writes them as one message, `head` + items + `tail`, framed for the
transport (`wire.FRAMING`), into the connection's real outbox.

Rules: `write_nowait` never blocks (the publisher calls it); the first item
of a batch sets its `deadline` (`window` seconds on trio's clock) and wakes
the connection, whose writer flushes it then; a batch past `max_bytes` is
flushed at once, so a batch is bounded; the connection flushes a member's
batch before it drops the member or closes, so the last events go out before
the close. `Counters.pending_batches` counts batches holding items, so that
`DataPlane.settle` waits for them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from ..dialects import Batch
from .fanout import SinkOutbox
from .outbox import MAX_BACKLOG_BYTES, Counters
from .wire import Framing


class BatchOutbox:
    """A member's outbox that turns the items written to it into batch messages."""

    __slots__ = ("_counters", "_events", "_framing", "_head", "_items", "_max_bytes", "_size",
                 "_tail", "_wake", "deadline", "outbox", "window")

    def __init__(self, outbox: SinkOutbox, framing: Framing, batch: Batch, counters: Counters,
                 *, wake: Callable[[], None]) -> None:
        self.outbox = outbox
        self._framing = framing
        self._head = batch.head.encode()
        self._tail = batch.tail.encode()
        self.window = batch.window
        self._max_bytes = batch.max_bytes
        self._counters = counters
        self._wake = wake
        self._items: list[bytes] = []
        self._size = 0
        self._events = 0
        self.deadline = math.inf  # when the pending batch is due (trio's clock)

    # ---- the SinkOutbox interface a member uses --------------------------

    @property
    def pending_bytes(self) -> int:
        return self.outbox.pending_bytes + self._size

    @property
    def broken(self) -> bool:
        return self.outbox.broken

    @property
    def idle(self) -> bool:
        return not self._items and self.outbox.idle

    def over(self, max_events: int) -> bool:
        return self._size > MAX_BACKLOG_BYTES or self.outbox.over(max_events)

    def write_nowait(self, data: bytes, events: int = 0, *, seal: bool = False) -> None:
        if not data or self.outbox.broken:
            return
        if not self._items:
            self.deadline = trio.current_time() + self.window
            self._counters.pending_batches += 1
            self._wake()
        self._items.append(data)
        self._size += len(data)
        self._events += events
        if self._size >= self._max_bytes:
            self.flush_nowait()

    async def wait_drained(self, limit: int = 0) -> None:
        # A catch-up waits for the socket, not for the batch: the history it
        # writes page after page goes out as few batches as `max_bytes` allows.
        await self.outbox.wait_drained(limit)

    async def flush(self, *, stall_timeout: float) -> None:
        self.flush_nowait()
        await self.outbox.flush(stall_timeout=stall_timeout)

    def truncate(self) -> None:
        self.outbox.truncate()

    def close(self) -> None:
        """Forget the pending batch (the connection is ending)."""
        if self._items:
            self._reset()

    # ---- the connection's side -------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._items)

    def flush_nowait(self) -> None:
        """Write the pending batch (if any) into the connection's outbox now."""
        items = self._items
        if not items:
            return
        # Each item ends in a comma: the last one's is left out.
        length = len(self._head) + self._size - 1 + len(self._tail)
        before, after = self._framing(length)
        last = memoryview(items[-1])[:-1]
        data = b"".join((before, self._head, *items[:-1], last, self._tail, after))
        events = self._events
        self._reset()
        self.outbox.write_nowait(data, events)

    def _reset(self) -> None:
        self._items = []
        self._size = 0
        self._events = 0
        self.deadline = math.inf
        self._counters.pending_batches -= 1
