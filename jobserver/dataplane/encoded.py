"""Encodings kept for reuse: the frame cache and a channel's recent events.

Rules: both are bounded in entries and bytes and hold only bytes a channel
already encoded; `FrameCache` is keyed by (channel key, seq) and shared by
members catching up over the same history, `Recent` keeps a channel's last
contiguous events for members joining just behind. Nothing here awaits.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

from ..core.events import Event
from ..core.topics import Topic

ChannelKey = tuple[Topic, Hashable, str]  # (topic, renderer key, encoding)

# Encoded events the frame cache keeps, and their bytes at most.
FRAME_CACHE_ENTRIES = 8192
FRAME_CACHE_BYTES = 8 * 1024 * 1024
# The last events a channel keeps encoded for members joining just behind.
RECENT_EVENTS = 1024
RECENT_BYTES = 1024 * 1024


class FrameCache:
    """Encoded bytes of recently rendered events by (channel key, seq); FIFO, bounded."""

    def __init__(self, *, max_entries: int = FRAME_CACHE_ENTRIES,
                 max_bytes: int = FRAME_CACHE_BYTES) -> None:
        # An OrderedDict evicts its oldest in O(1); a dict's next(iter()) walks
        # every slot left behind by earlier evictions.
        self._entries: OrderedDict[tuple[ChannelKey, int], tuple[bytes, bool]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[ChannelKey, int]) -> tuple[bytes, bool] | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: tuple[ChannelKey, int], value: tuple[bytes, bool]) -> None:
        if len(value[0]) > self._max_bytes or key in self._entries:
            return
        self._entries[key] = value
        self._bytes += len(value[0])
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._bytes -= len(self._entries.popitem(last=False)[1][0])


class Recent:
    """The encodings of a channel's last events, while they are contiguous: a
    member that joins a few events behind catches up from here, at once,
    instead of from the store (a thousand subscribers arriving together would
    each wait for a read). Bounded in events and bytes; the bytes are the ones
    the live members got, shared."""

    __slots__ = ("_bytes", "_entries")

    def __init__(self) -> None:
        self._entries: deque[tuple[int, bytes, bool]] = deque()
        self._bytes = 0

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def extend(self, events: Sequence[Event], parts: Sequence[bytes], end: bool) -> None:
        entries = self._entries
        last = len(parts) - 1
        for i, part in enumerate(parts):
            entries.append((events[i].seq, part, end and i == last))
            self._bytes += len(part)
        while len(entries) > RECENT_EVENTS or self._bytes > RECENT_BYTES:
            self._bytes -= len(entries.popleft()[1])

    def prepend(self, entries: Sequence[tuple[int, bytes, bool]]) -> None:
        """Earlier events (a catch-up's, read from the store) in front of these, when
        they join up and fit: later joiners need no store read for them."""
        held = self._entries
        if not entries or len(entries) + len(held) > RECENT_EVENTS or (
                held and held[0][0] != entries[-1][0] + 1):
            return
        size = sum(len(part) for _, part, _ in entries)
        if size + self._bytes <= RECENT_BYTES:
            held.extendleft(reversed(entries))
            self._bytes += size

    def after(self, cursor: int, last_seq: int, upto: int | None = None
              ) -> tuple[bytes, int, bool] | None:
        """(bytes, events, ended) of the events after `cursor` up to `last_seq` (or
        only up to `upto`), or None when they are not all here."""
        entries = self._entries
        if cursor == last_seq or cursor == upto:
            return b"", 0, False
        if not entries or entries[-1][0] != last_seq or entries[0][0] > cursor + 1:
            return None
        parts = []
        for seq, part, end in entries:
            if upto is not None and seq > upto:
                break
            if seq > cursor:
                parts.append(part)
                if end:
                    return b"".join(parts), len(parts), True
        return b"".join(parts), len(parts), False
