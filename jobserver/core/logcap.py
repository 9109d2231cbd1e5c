"""A job's log cap: keep the first half and a rolling tail of `max_bytes`.

Rules (sans-IO, plain numbers in and out):
- A line counts `len(line) + 1` (its characters and the newline): the same for
  every line, cheap (one `sum(map(len, ...))` per batch) and, for ASCII, the
  bytes written to disk.
- The head is the lines up to `max_bytes // 2`; every later line is tail. Every
  line is published and stored as it comes; when the stored tail passes its
  share by a slack (1/8 of it), its oldest part is cut down to the share:
  `add` returns the seq range the store removes (log lines only: other events
  in it stay). So the kept log stays within `max_bytes` plus the slack.
- A dropped seq is simply absent on replay; no seq ever names other content.
  `marker` gives the counts for the one `truncated` event, recorded after the
  job's last line.
- Memory is bounded: the tail is tracked in ranges of about 1/TAIL_ENTRIES of
  its share (one pipe read's worth at most more), whatever the number of lines.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# The tail is tracked in ranges of about 1/TAIL_ENTRIES of its share: the cut
# is this precise, and this is the bound on the ranges kept.
TAIL_ENTRIES = 64
# The stored tail may pass its share by 1/SLACK of it before a cut: cuts are
# that rare (one per share/SLACK bytes of output), and disk that bounded.
SLACK = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Dropped:
    """What the cap removed: `lines` log lines of `bytes` bytes, every log line
    with a seq in first_seq..last_seq."""

    lines: int
    bytes: int
    first_seq: int
    last_seq: int


class LogCap:
    """The accounting for one job's log (owned by the engine, under the job's lock)."""

    __slots__ = ("_cut_at", "_granule", "_head_left", "_tail", "_tail_bytes",
                 "_tail_share", "dropped_bytes", "dropped_lines", "first_dropped",
                 "last_dropped", "max_bytes", "reached")

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self._head_left = max_bytes // 2
        self._tail_share = max_bytes - self._head_left
        self._cut_at = self._tail_share + max(self._tail_share // SLACK, 1)
        self._granule = max(self._tail_share // TAIL_ENTRIES, 1)
        # [first_seq, last_seq, lines, bytes] of the stored tail, oldest first.
        self._tail: deque[list[int]] = deque()
        self._tail_bytes = 0
        self.reached = False  # more than max_bytes were written
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.first_dropped = 0
        self.last_dropped = 0

    def add(self, first: int, lines: list[str]) -> tuple[int, int] | None:
        """Lines numbered from `first` were written: the seq range to cut now, if any."""
        size = sum(map(len, lines)) + len(lines)
        if size <= self._head_left:  # the common case: still in the head
            self._head_left -= size
            return None
        if self._head_left:
            # The batch fills the head: the rest of it is the start of the tail.
            index = 0
            for index, line in enumerate(lines):  # noqa: B007
                n = len(line) + 1
                if n > self._head_left:
                    break
                self._head_left -= n
                size -= n
            self._head_left = 0
            first, lines = first + index, lines[index:]
        if size > self._granule and len(lines) > 1:
            self._add_pieces(first, lines)
        else:
            self._add_tail(first, first + len(lines) - 1, len(lines), size)
        if self._tail_bytes > self._tail_share:
            self.reached = True
        if self._tail_bytes <= self._cut_at:
            return None
        return self._cut()

    def _add_pieces(self, first: int, lines: list[str]) -> None:
        """A batch bigger than a tail range, in ranges of about one (only with a
        cap so small that one read of a pipe passes 1/TAIL_ENTRIES of it)."""
        start, size = 0, 0
        for index, line in enumerate(lines):
            size += len(line) + 1
            if size >= self._granule:
                self._add_tail(first + start, first + index, index + 1 - start, size)
                start, size = index + 1, 0
        if start < len(lines):
            self._add_tail(first + start, first + len(lines) - 1, len(lines) - start, size)

    def _add_tail(self, first: int, last: int, lines: int, size: int) -> None:
        tail = self._tail
        if tail and tail[-1][3] < self._granule:
            entry = tail[-1]
            entry[1] = last
            entry[2] += lines
            entry[3] += size
        else:
            tail.append([first, last, lines, size])
        self._tail_bytes += size

    def _cut(self) -> tuple[int, int]:
        tail = self._tail
        low = tail[0][0]
        high = low
        while tail and self._tail_bytes > self._tail_share:
            _, high, lines, size = tail.popleft()
            self._tail_bytes -= size
            self.dropped_lines += lines
            self.dropped_bytes += size
        if not self.first_dropped:
            self.first_dropped = low
        self.last_dropped = high
        return low, high

    def marker(self) -> Dropped | None:
        """What was dropped so far (None: nothing)."""
        if not self.dropped_lines:
            return None
        return Dropped(lines=self.dropped_lines, bytes=self.dropped_bytes,
                       first_seq=self.first_dropped, last_seq=self.last_dropped)
