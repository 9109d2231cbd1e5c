"""Encoded bytes kept for members joining behind: the frame cache and `Recent`.

`FrameCache` keeps each event's encoding by (channel key, seq) for members
catching up over the same history (renderers are deterministic in the topic's
history, dialects/__init__.py). `Recent` keeps a channel's last encodings while
they are contiguous, for members joining a few events behind (or a young job's
whole history, seeded by the member that placed the channel's renderer).
Both are bounded in entries and bytes; neither touches trio or a socket.
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

    __slots__ = ("_bytes", "_entries", "_joined")

    def __init__(self) -> None:
        self._entries: deque[tuple[int, bytes, bool]] = deque()
        self._bytes = 0
        # The last `after` answered: (cursor, its answer), while nothing changed.
        self._joined: tuple[int, tuple[bytes, int, bool]] | None = None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._joined = None

    def extend(self, events: Sequence[Event], parts: Sequence[bytes], end: bool) -> None:
        entries = self._entries
        self._joined = None
        last = len(parts) - 1
        for i, part in enumerate(parts):
            entries.append((events[i].seq, part, end and i == last))
            self._bytes += len(part)
        while len(entries) > RECENT_EVENTS or self._bytes > RECENT_BYTES:
            self._bytes -= len(entries.popleft()[1])

    def after(self, cursor: int, last_seq: int) -> tuple[bytes, int, bool] | None:
        """(bytes, events, ended) of the events after `cursor` up to `last_seq`, or
        None when they are not all here. Members joining together at one cursor
        get the same joined bytes (the last answer is kept until the next change)."""
        entries = self._entries
        if cursor == last_seq:
            return b"", 0, False
        if not entries or entries[-1][0] != last_seq or entries[0][0] > cursor + 1:
            return None
        joined = self._joined
        if joined is not None and joined[0] == cursor:
            return joined[1]
        parts = []
        found: tuple[bytes, int, bool] | None = None
        for seq, part, end in entries:
            if seq > cursor:
                parts.append(part)
                if end:
                    found = b"".join(parts), len(parts), True
                    break
        if found is None:
            found = b"".join(parts), len(parts), False
        self._joined = (cursor, found)
        return found

    def reaches(self, cursor: int) -> bool:
        """Whether these hold every event after `cursor` that they ever got."""
        return not self._entries or self._entries[0][0] <= cursor + 1

    @property
    def first_seq(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    @property
    def last_seq(self) -> int | None:
        return self._entries[-1][0] if self._entries else None

    def adopt(self, other: Recent) -> None:
        """Take `other`'s entries (a placing member's, ending where these end or
        reaching further back), leaving `other` empty."""
        self._entries, other._entries = other._entries, deque()
        self._bytes, other._bytes = other._bytes, 0
        self._joined = other._joined = None
