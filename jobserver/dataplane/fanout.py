"""Direct-write fan-out: one encoding per event, the same bytes to every socket.

A `Channel` is one topic rendered by one renderer variant in one encoding
(WebSocket frames or SSE chunks). It is the hub's subscriber: `deliver` renders
and encodes a batch once, then hands the joined bytes to every live `Member`,
whose outbox sends them straight into its socket (or queues them behind a
backlog). The publisher never awaits and nothing is copied per subscriber.

A member is *live* (in the channel's live set, fed by `deliver`) or *catching
up* (fed from the store by its connection's writer task). Every member starts
catching up, and so does a live member whose outbox passes its bound
(`max_lag` events or outbox.MAX_BACKLOG_BYTES): it leaves the live set at once,
keeping what it has queued, and its writer reads on from the store by seq.
Catching up is the one routine every transport uses (`Member.catch_up`, run
in a task of its own per member): join the channel's pending set first (a
bounded buffer of raw events, dropped whole on overflow), then read the store
after the cursor with read-your-writes (`Engine.events_after`), page by page,
then the buffer, deduplicated by seq; the member goes live only when the
channel has published exactly up to its cursor, checked and done with no await
in between. So a member never misses, repeats or reorders an event, and a slow
one holds at most its bounded backlog plus one page. The members of one
connection catch up concurrently; the connection's `readers` semaphore bounds
how many read a page at once, so its memory is bounded whatever the number of
its subscriptions. Aggregate topics (core/topics.py) have no store behind them:
their members go live at once, from "now", and one that falls behind leaves
with `lagged` set (its session is told) instead of catching up. Either way
the member counts once in `Counters.lagged` (a job topic's here, as it is
demoted; an aggregate one's by its connection, as it tells the session).

Joining is cheap when a channel is live already: a member whose cursor is at
the channel's last seq, or within the last events it encoded (`Recent`), gets
those bytes and goes live at once, with no store read; while the channel's
first member reads the store to place the renderer, members arriving with it
wait for that instead of each reading too.

A raw channel (encoding `EVENTS`, a session's `Watch`) renders nothing: its
live members hand each batch of events to their connection, which gives them
to its session (`on_events`) from its writer task; catching up, the same
pages, each handed over before the next is read. Its members come and go as the
others do, and one with more than `max_lag` events waiting for its session
goes back to catching up from the store. A member with `lines` False gets
no output lines (filtered once per batch for all such members; the cursor
still moves past them), and a session flips it at any time, without a read.

The metrics' message count (`Counters.messages_sent`) is added once per
delivery (events x live members) and once per catch-up write, never per member
on the publisher's path.

Renderers are deterministic in the topic's history (dialects/__init__.py), so
`FrameCache` (encoded.py, with `Recent`) can keep each event's encoding by
(channel key, seq), and members catching up over the same history share it.

A batching channel (batch.py's `BatchChannel`, for a `Subscribe` with a
`Batch`) sends its live members one message per window instead of one per
event; its `sent_seq` is the last seq of what it has sent (events after it
wait in its window), and a member catching up joins its live set only at
`sent_seq`, so the next window brings it exactly the events after its cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import trio

from ..core.events import Event, Log
from ..core.ids import JobId
from ..core.topics import JobTopic, Topic
from ..dialects import Renderer, Subscribe
from .encoded import RECENT_EVENTS, ChannelKey, FrameCache, Recent
from .outbox import Counters
from .sinks import EVENTS, EventSink, Sink
from .wakeup import Wakeup
from .wire import Encoder

# Events one store read of a catch-up returns (engine.REPLAY_PAGE's reason:
# a page of typical lines is a few hundred KB, sent before the next is read).
REPLAY_PAGE = 2000
# How long a joining member waits for another to place the channel's renderer
# before it reads the store itself.
PLACING_WAIT = 1.0
# A catch-up writes its next page once its connection's backlog is below this.
CATCH_UP_LOW_WATER = 256 * 1024

def without_lines(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if type(e) is not Log]


class EventReader(Protocol):
    async def events_after(self, job_id: JobId, after: int, *, limit: int) -> list[Event]: ...


class Channel:
    """One topic x renderer variant x encoding; the hub subscriber that writes for all."""

    batched = False  # see batch.BatchChannel

    def __init__(self, key: ChannelKey, encode: Encoder, cache: FrameCache, *,
                 release: Callable[[Channel], None], counters: Counters | None = None) -> None:
        self.key = key
        self.counters = counters if counters is not None else Counters()
        self.topic = key[0]
        self.persisted = type(self.topic) is JobTopic  # the store can replay it
        self.raw = key[2] == EVENTS  # members get the events, not bytes
        self.encode = encode
        self.cache = cache
        self._release = release
        self.renderer: Renderer | None = None  # set by the first member to go live
        self.last_seq = 0  # the highest seq the hub delivered here
        self.live: dict[Member, None] = {}
        self.pending: dict[Member, None] = {}
        self.behind: dict[Member, None] = {}  # demoted, not yet catching up
        self.recent = Recent()
        # Set while the first member reads the store to place the renderer.
        self.placing: trio.Event | None = None

    def deliver(self, events: Sequence[Any]) -> None:
        events = self.take(events)
        if not events:
            return
        if self.raw:
            without: list[Event] | None = None  # filtered once for all who want no lines
            for member in tuple(self.live):
                if member.lines:
                    member.push_events(events, self.last_seq)
                else:
                    if without is None:
                        without = without_lines(events)
                    member.push_events(without, self.last_seq)
            return
        renderer = self.renderer
        if not events or renderer is None:
            return
        if not self.live:
            self.recent.clear()  # no longer contiguous: nothing is encoded now
            for event in events:
                renderer.advance(event)
            return
        parts, used, end = self.render_live(renderer, events)
        data = b"".join(parts)
        live = tuple(self.live)
        self.counters.messages_sent += used * len(live)  # once per delivery, not per member
        for member in live:
            member.push(data, used, self.last_seq, end)

    def take(self, events: Sequence[Any]) -> Sequence[Any]:
        """The events of a delivery after `last_seq` (now moved past them), also
        buffered for the members catching up."""
        if events[-1].seq <= self.last_seq:
            return ()
        if events[0].seq <= self.last_seq:
            events = [e for e in events if e.seq > self.last_seq]
        self.last_seq = events[-1].seq
        for member in tuple(self.pending):
            member.buffer_nowait(events)
        return events

    def render_live(self, renderer: Renderer, events: Sequence[Any]
                    ) -> tuple[list[bytes], int, bool]:
        """Encode `events` for the live members (up to an end), the renderer moved
        past all of them, the recent encodings kept."""
        # While every member is live nobody will read these events again: the
        # cache is for members behind (catching up over the events after theirs).
        parts, used, end = self.encode_parts(renderer, events,
                                             cached=bool(self.pending or self.behind))
        for event in events[used:]:
            renderer.advance(event)
        self.recent.extend(events, parts, end)
        return parts, used, end

    def encode_events(self, renderer: Renderer, events: Sequence[Any], *,
                      cached: bool = True) -> tuple[bytes, int, bool]:
        """(bytes, events used, ended): the encoding of `events` up to an end, via
        the cache unless not `cached`."""
        parts, used, end = self.encode_parts(renderer, events, cached=cached)
        return b"".join(parts), used, end

    def encode_parts(self, renderer: Renderer, events: Sequence[Any], *,
                     cached: bool = True) -> tuple[list[bytes], int, bool]:
        """Like `encode_events`, each event's bytes apart."""
        parts: list[bytes] = []
        used = 0
        end = False
        encode = self.encode
        if not cached:
            for event in events:
                messages, end = renderer.render(event)
                parts.append(encode(messages))
                used += 1
                if end:
                    break
            return parts, used, end
        cache = self.cache
        for event in events:
            ckey = (self.key, event.seq)
            hit = cache.get(ckey)
            if hit is None:
                messages, end = renderer.render(event)
                data = encode(messages)
                cache.put(ckey, (data, end))
            else:
                renderer.advance(event)
                data, end = hit
            parts.append(data)
            used += 1
            if end:
                break
        return parts, used, end

    def add_pending(self, member: Member) -> None:
        self.behind.pop(member, None)
        self.pending[member] = None

    def promote(self, member: Member, renderer: Renderer) -> None:
        del self.pending[member]
        if self.renderer is None:
            self.renderer = renderer
        self.live[member] = None

    def demote(self, member: Member) -> None:
        self.live.pop(member, None)
        self.behind[member] = None

    def remove(self, member: Member) -> None:
        self.live.pop(member, None)
        self.pending.pop(member, None)
        self.behind.pop(member, None)
        if self.empty:
            self._release(self)

    @property
    def empty(self) -> bool:
        return not self.live and not self.pending and not self.behind

    @property
    def sent_seq(self) -> int:
        """The last seq of what live members have been sent (or queued)."""
        return self.last_seq

    def wrap(self, data: bytes) -> bytes:
        """What a catch-up writes for the encodings `data` (a batching channel makes
        them one message)."""
        return data


class Member:
    """One connection's subscription to one channel, from a cursor on."""

    __slots__ = ("_buffer", "_buffered", "_max_lag", "_overflow", "_prototype", "_seed",
                 "channel", "cursor", "detached", "ended", "lagged", "lines", "needs_catch_up",
                 "outbox", "sink")

    def __init__(self, sink: Sink, channel: Channel, subscribe: Subscribe, *,
                 max_lag: int) -> None:
        self.sink = sink
        self.outbox = sink.outbox  # looked up once: push runs per member per event
        self.channel = channel
        # The last seq written (or queued) for this member; "now" when not given.
        self.cursor = channel.last_seq if subscribe.after is None else subscribe.after
        self._prototype = subscribe.renderer
        self._max_lag = max_lag
        self.needs_catch_up = channel.persisted
        self.ended = False  # the renderer said the stream ends here
        self.lagged = False  # an aggregate topic's member fell behind and left
        self.detached = False
        self.lines = True  # a raw channel's member: its output lines too
        if not channel.persisted:
            # Nothing to read: live from now, rendered by the channel's renderer.
            channel.pending[self] = None
            channel.promote(self, self._prototype.after(None))
        self._buffer: list[Event] = []
        self._overflow = False
        self._buffered = Wakeup()
        # A batching channel's member reading its topic from seq 1 keeps what it
        # wrote (seq, bytes, end) for the channel's Recent (see _catch_up_from_store).
        self._seed: list[tuple[int, bytes, bool]] | None = None

    @property
    def live(self) -> bool:
        return self in self.channel.live

    @property
    def topic(self) -> Topic:
        return self.channel.topic

    # ---- called by Channel.deliver, in the publisher's task: never block --

    def push(self, data: bytes, count: int, last_seq: int, end: bool) -> None:
        self.cursor = last_seq
        outbox = self.outbox
        outbox.write_nowait(data, count)
        if end:
            self._finish()
        elif outbox.pending_bytes and outbox.over(self._max_lag):
            if self.channel.persisted:
                self.channel.demote(self)
                self.needs_catch_up = True
                self.channel.counters.lagged += 1  # an aggregate one's: its connection's
            else:
                self.lagged = True
                self.detach()
            self.sink.wake()

    def push_events(self, events: Sequence[Event], last_seq: int) -> None:
        """A raw channel's delivery: the events to the connection's session (none
        when all were lines left out); past `max_lag` queued there, back to
        catching up (from the store) like `push`."""
        self.cursor = last_seq
        if not events:
            return
        sink = cast(EventSink, self.sink)
        if sink.take_events(self, events) > self._max_lag:
            self.channel.demote(self)
            self.needs_catch_up = True
            self.channel.counters.lagged += 1
            sink.wake()

    def wake_catch_up(self) -> None:
        """Let a catch-up waiting for the channel look again (batch.BatchChannel)."""
        self._buffered.set()

    def buffer_nowait(self, events: Sequence[Any]) -> None:
        if not self._overflow:
            if len(self._buffer) + len(events) > self._max_lag:
                self._overflow = True
                self._buffer.clear()
            else:
                self._buffer.extend(events)
        self._buffered.set()

    # ---- called by the connection ----------------------------------------

    def detach(self) -> None:
        """Leave the channel for good (the connection is closing)."""
        self.detached = True
        self.channel.remove(self)
        self._buffered.set()  # a catch-up waiting for events sees it and stops

    def go_live_nowait(self, renderer: Renderer) -> None:
        """Join the live set now, at the channel's last seq (the caller knows the
        renderer's state there); the channel's own renderer wins if it has one."""
        self.needs_catch_up = False
        self.cursor = self.channel.last_seq
        self.channel.pending[self] = None
        self.channel.promote(self, renderer)

    def end_nowait(self) -> None:
        """End the member now, as if its renderer had said so (nothing will come)."""
        self._finish()

    def _finish(self) -> None:
        self.ended = True
        self.detach()
        self.sink.wake()

    async def catch_up(self, store: EventReader) -> None:
        """Send what the store has after the cursor, then go live (or end)."""
        self.needs_catch_up = False
        channel = self.channel
        channel.add_pending(self)
        try:
            await self._catch_up(store)
        finally:
            if not self.live and not self.detached:
                channel.remove(self)

    async def _catch_up(self, store: EventReader) -> None:
        channel = self.channel
        if channel.raw and self.cursor == channel.last_seq:
            # No renderer state to place: nothing to read (no await until promoted).
            channel.promote(self, self._prototype)
            return
        if channel.renderer is None and channel.placing is not None:
            # Another member is reading the store to place the channel's
            # renderer: wait for it (briefly) rather than read too.
            with trio.move_on_after(PLACING_WAIT):
                await channel.placing.wait()
            if self.detached:  # the connection closed meanwhile
                return
        if channel.renderer is not None and self.cursor <= channel.sent_seq:
            # The channel renders for live members already: a member with
            # nothing to catch up on, or only what the channel has just sent,
            # joins them now, without a store read (a thousand subscribers
            # arriving at once would each wait for one). No await until promoted.
            # (A channel's Recent goes back to seq 1 while the story is short, as
            # the first member to read it from the store left it: a client that
            # starts from 0, as the logs and live dialects' do, joins so too.)
            sent = channel.sent_seq
            recent = channel.recent.after(self.cursor, channel.last_seq, upto=sent)
            if recent is not None:
                data, count, end = recent
                self.cursor = sent
                channel.counters.messages_sent += count
                self.outbox.write_nowait(channel.wrap(data), count)
                if end:
                    self._finish()
                else:
                    channel.promote(self, channel.renderer)
                return
        if channel.renderer is None and channel.placing is None and (
                self.cursor == channel.last_seq > 0
                or (self.cursor == 0 and channel.last_seq <= RECENT_EVENTS)):
            # Nothing to send, only the renderer's state to read; or a story short
            # enough for the channel's Recent, where this read leaves it: others
            # wait for it. (Else the first thousand joiners of a young job, all
            # arriving while the first one reads, would each queue a store read,
            # and the last of them would still be reading seconds later.)
            channel.placing = trio.Event()
            try:
                await self._catch_up_from_store(store)
            finally:
                channel.placing.set()
                channel.placing = None
            return
        await self._catch_up_from_store(store)

    async def _catch_up_from_store(self, store: EventReader) -> None:
        channel = self.channel
        assert isinstance(channel.topic, JobTopic)
        job_id = channel.topic.job_id
        renderer = self._prototype
        first = True
        self._seed = [] if self.cursor == 0 else None
        while True:
            async with self.sink.readers:  # a page at a time per connection, bounded
                start = self.cursor - 1 if first and self.cursor > 0 else self.cursor
                page = await store.events_after(job_id, start, limit=REPLAY_PAGE)
                more = len(page) == REPLAY_PAGE
                if page and self._buffer and not self._overflow:
                    page = _with_buffered(page, self._buffer, start)
                if first:
                    first = False
                    if self.cursor == 0:
                        renderer = renderer.after(None)
                    elif page and page[0].seq == self.cursor:
                        renderer = renderer.after(page[0])
                        page = page[1:]
                if await self._write(renderer, page):
                    return
            if more:
                continue
            while not self._overflow:
                if channel.batched:
                    # Only what the channel has sent: the rest comes with its next window.
                    fresh, self._buffer = _split(self._buffer, self.cursor, channel.sent_seq)
                else:
                    fresh = [e for e in self._buffer if e.seq > self.cursor]
                    self._buffer.clear()
                if fresh and self._put(renderer, fresh):
                    return
                if (self.cursor == channel.sent_seq or not (fresh or channel.batched)) \
                        and (not fresh or self._low()):
                    # Caught up, and nothing awaited since the buffer was taken: live
                    # now. (Waiting after each write would let the next delivery in:
                    # under a flood such a member never joins and is fed all along by
                    # this loop, per member and per event, up to the stream's end.)
                    self._go_live(renderer)
                    return
                if fresh:
                    if await self._drain():
                        return
                else:
                    self._buffered.clear()
                    await self._buffered.wait()
                    if self.detached:
                        return
            self._overflow = False  # the buffer overflowed: back to the store

    def _go_live(self, renderer: Renderer) -> None:
        if self._seed:
            # The whole story so far, for members joining after this one.
            self.channel.recent.prepend(self._seed)
        self._seed = None
        self._buffer = []  # a batching channel's next window brings the rest
        self.channel.promote(self, renderer)

    def _low(self) -> bool:
        """Whether what this member has queued is low enough to go live on."""
        return self.channel.raw or self.outbox.pending_bytes <= CATCH_UP_LOW_WATER

    async def _write(self, renderer: Renderer, events: Sequence[Any]) -> bool:
        """Write `events` and wait until the backlog is low again (the connection's
        writer sends it); True when done (ended/detached)."""
        if self._put(renderer, events):
            return True
        return bool(events) and await self._drain()

    def _put(self, renderer: Renderer, events: Sequence[Any]) -> bool:
        """Write `events` (no await); True when done (ended/detached)."""
        if self.detached:
            return True
        if not events:
            return False
        channel = self.channel
        if channel.raw:
            self.cursor = events[-1].seq
            given = events if self.lines else without_lines(events)
            if given:
                cast(EventSink, self.sink).take_events(self, given)
            return False
        # Shared encodings help when the channel encodes these too (it has live
        # members) or others read the same history; alone, caching costs only.
        shared = bool(channel.live) or len(channel.pending) + len(channel.behind) > 1
        parts, used, end = channel.encode_parts(renderer, events, cached=shared)
        seed = self._seed
        if seed is not None:
            if len(seed) + used <= RECENT_EVENTS:
                seed.extend((events[i].seq, parts[i], end and i == used - 1)
                            for i in range(used))
            else:
                self._seed = None
        data = channel.wrap(b"".join(parts))
        self.cursor = events[used - 1].seq
        channel.counters.messages_sent += used
        self.outbox.write_nowait(data, used)
        if end:
            self._finish()
            return True
        self.sink.wake()
        return False

    async def _drain(self) -> bool:
        """Wait until what was written is mostly sent (or taken by the session);
        True when detached meanwhile."""
        if self.channel.raw:
            await cast(EventSink, self.sink).wait_events_taken()
        else:
            await self.outbox.wait_drained(CATCH_UP_LOW_WATER)
        return self.detached


def _split(events: list[Any], cursor: int, upto: int) -> tuple[list[Any], list[Any]]:
    """(the events in (cursor, upto], the events after upto)."""
    return [e for e in events if cursor < e.seq <= upto], [e for e in events if e.seq > upto]


def _with_buffered(page: list[Any], buffer: list[Any], start: int) -> list[Any]:
    """A store page with the buffered events inside its range that the store no
    longer has (output a log cap trimmed after it was published): a member that
    was catching up while it was trimmed gets it like the live members did."""
    last = page[-1].seq
    if len(page) == last - start:
        return page  # no gap in the page
    have = {e.seq for e in page}
    missing = [e for e in buffer if start < e.seq <= last and e.seq not in have]
    if not missing:
        return page
    return sorted([*page, *missing], key=_seq_of)


def _seq_of(event: Any) -> int:
    return int(event.seq)
