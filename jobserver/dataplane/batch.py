"""Batching channels: a topic's events to every live subscriber as one message per
window, encoded once for all of them.

A session that subscribes with a `Batch` (dialects/__init__.py) gets a
`BatchChannel`: its renderer's messages are items (wire.encode_items: UTF-8,
each followed by a comma), and instead of writing each delivery to its live
members the channel keeps the items in its window; `window` seconds after the
first of them (the `BatchClock`'s task), at once when they pass `max_bytes`,
and at once when the stream ends, it builds one message, head + items + tail,
framed for its transport (wire.FRAMING), and writes those same bytes to every
live member, as `Channel.deliver` does with an event. So under load a client
gets few large messages, and the cost per message is the same as the plain
data plane's per event.

Rules: the publisher never awaits (deliver and flush are sync); the clock is
one task for every batching channel of the data plane, and a channel whose
clock is not running still sends when an event finds its window due and when
its stream ends; `sent_seq` (the last seq sent to live members) is where a
member catching up may join the live set (fanout.Member), never `last_seq`,
so no member gets an event twice or misses one; a catch-up's pages are each
wrapped as one message (`wrap`). Nothing here grows beyond the window's bound.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ..dialects import Batch
from .encoded import ChannelKey, FrameCache
from .fanout import Channel
from .wakeup import Wakeup
from .wire import Encoder, Framing


class BatchClock:
    """Sends batching channels' windows when they are due: one task for them all."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, BatchChannel]] = []
        self._order = itertools.count()  # ties in the heap never compare channels
        self._wakeup = Wakeup()

    def schedule(self, channel: BatchChannel, deadline: float) -> None:
        heapq.heappush(self._due, (deadline, next(self._order), channel))
        if self._due[0][2] is channel:
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            while True:
                self._wakeup.clear()
                now = trio.current_time()
                while self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2].send_due(now)
                with trio.move_on_at(self._due[0][0] if self._due else math.inf):
                    await self._wakeup.wait()
        finally:
            self._due.clear()  # no channel is kept alive by a stopped clock


class BatchChannel(Channel):
    """A channel whose live members get its events one window at a time."""

    batched = True

    def __init__(self, key: ChannelKey, encode: Encoder, cache: FrameCache, *,
                 release: Callable[[Channel], None], batch: Batch, framing: Framing,
                 clock: BatchClock) -> None:
        super().__init__(key, encode, cache, release=release)
        self._head = batch.head.encode()
        self._tail = batch.tail.encode()
        self._window = batch.window
        self._max_bytes = batch.max_bytes
        self._framing = framing
        self._clock = clock
        self._items: list[bytes] = []
        self._size = 0
        self._events = 0
        self._end = False
        self._deadline = math.inf
        self._sent_seq = 0

    @property
    def sent_seq(self) -> int:
        return self._sent_seq if self._items else self.last_seq

    @property
    def pending_window(self) -> bool:
        return bool(self._items)

    def deliver(self, events: Sequence[Any]) -> None:
        before = self.sent_seq
        events = self.take(events)
        if not events:
            return
        renderer = self.renderer
        if renderer is None or not self.live:
            # Nobody to send to: members catching up take these from their buffers.
            self.recent.clear()
            if renderer is not None:
                for event in events:
                    renderer.advance(event)
            self._reset()
            return
        parts, used, end = self.render_live(renderer, events)
        fresh = not self._items
        for part in parts:
            if part:
                self._items.append(part)
                self._size += len(part)
        self._events += used
        if not self._items and not end:
            return  # nothing to send (output lines, say): live members are at last_seq
        if fresh:
            self._sent_seq = before
        if end:
            self._end = True
        now = trio.current_time()
        if end or self._size >= self._max_bytes or now >= self._deadline:
            self._deadline = now
            self.send_due(now)
        elif fresh:
            self._deadline = now + self._window
            self._clock.schedule(self, self._deadline)

    def send_due(self, now: float) -> None:
        """Send the window if it is due at `now` (math.inf: send it whatever)."""
        if now < self._deadline or not (self._items or self._end):
            return
        items, events, end = self._items, self._events, self._end
        self._reset()
        data = self.wrap(b"".join(items)) if items else b""
        for member in tuple(self.live):
            member.push(data, events, self.last_seq, end)
        for member in self.pending:
            member.wake_catch_up()  # one waiting for this window may join the live set

    def wrap(self, data: bytes) -> bytes:
        """The items `data` (each ending in a comma) as one framed message."""
        if not data:
            return b""
        length = len(self._head) + len(data) - 1 + len(self._tail)
        before, after = self._framing(length)
        return b"".join((before, self._head, memoryview(data)[:-1], self._tail, after))

    def _reset(self) -> None:
        self._items = []
        self._size = 0
        self._events = 0
        self._end = False
        self._deadline = math.inf
