"""Split a byte stream into text lines: safely, quickly, in bounded memory.

Rules: a line ends at b"\\n" (one trailing b"\\r" is dropped with it); bytes are
split before they are decoded, so a character cut across two reads is joined
again, and invalid UTF-8 becomes U+FFFD, never an exception. A line longer than
`max_line` bytes keeps its first `max_line` bytes (cut back to a character
boundary) plus a marker saying how many bytes were dropped; the rest is counted,
never buffered. This is the hot path of every job's output: whole-chunk
`bytes.split` / `decode` / `str.split`, no per-byte work in Python.
"""

from __future__ import annotations

__all__ = ["LineSplitter", "truncation_marker"]


def truncation_marker(dropped: int) -> str:
    return f" …[truncated {dropped} bytes]"


def _utf8_boundary(data: bytes | bytearray, n: int) -> int:
    """The largest k <= n such that data[:k] does not end inside a character."""
    i = n - 1
    stop = max(n - 4, -1)
    while i > stop and data[i] & 0xC0 == 0x80:  # continuation byte
        i -= 1
    if i > stop and data[i] >= 0xC0:  # a lead byte: is its sequence complete?
        lead = data[i]
        size = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if n - i < size:
            return i
    return n


def _decode(data: bytes | bytearray) -> str:
    return data.decode("utf-8", "replace")


class LineSplitter:
    """Incremental splitter: `feed(chunk)` returns the lines it completed."""

    __slots__ = ("_buf", "_last_cr", "_max", "_over")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._max = max_line
        self._buf = bytearray()  # the current partial line, at most max_line bytes
        self._over = 0  # bytes of the current line dropped so far
        self._last_cr = False  # did the dropped part end with b"\r"?

    def feed(self, data: bytes) -> list[str]:
        first = data.find(b"\n")
        if first < 0:
            self._append(data)
            return []
        last = data.rfind(b"\n")
        out: list[str]
        if self._buf or self._over:
            self._append(data[:first])
            out = [self._take()]
            if last > first:
                out += self._complete(data[first + 1:last])
        else:
            out = self._complete(data[:last])
        self._append(data[last + 1:])
        return out

    def close(self) -> list[str]:
        """The last line, if the stream did not end with a newline."""
        if self._buf or self._over:
            return [self._take()]
        return []

    # ---- internals ----------------------------------------------------------

    def _append(self, data: bytes) -> None:
        """Add bytes of the current line (no newline in them), within the cap."""
        if not data:
            return
        if self._over:
            self._over += len(data)
            self._last_cr = data[-1] == 0x0D
            return
        room = self._max - len(self._buf)
        if len(data) <= room:
            self._buf += data
        else:
            self._buf += data[:room]
            self._over = len(data) - room
            self._last_cr = data[-1] == 0x0D

    def _take(self) -> str:
        """End the current line and return it."""
        buf, over = self._buf, self._over
        self._buf = bytearray()
        self._over = 0
        if over:
            if self._last_cr:  # the \r of a \r\n is not content
                over -= 1
            return self._capped(buf, len(buf) + over) if over else _decode(buf)
        if buf.endswith(b"\r"):
            del buf[-1]
        return _decode(buf)

    def _capped(self, head: bytes | bytearray, total: int) -> str:
        """A line of `total` bytes, of which `head` (>= max_line bytes) is the start."""
        cut = _utf8_boundary(head, self._max)
        return _decode(head[:cut]) + truncation_marker(total - cut)

    def _complete(self, region: bytes) -> list[str]:
        """Lines from bytes holding only whole lines, separated by b"\\n"."""
        text = _decode(region)  # safe on the whole: b"\n" is never inside a character
        lines = text.split("\n")
        # For ASCII, characters are bytes and the cap can be checked on the text.
        if len(region) > self._max and (
                not text.isascii() or max(map(len, lines)) > self._max):
            parts = region.split(b"\n")
            if max(map(len, parts)) > self._max:
                return [self._one(p) for p in parts]
        if b"\r" in region:
            return [s[:-1] if s.endswith("\r") else s for s in lines]
        return lines

    def _one(self, line: bytes) -> str:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) <= self._max:
            return _decode(line)
        return self._capped(line, len(line))

