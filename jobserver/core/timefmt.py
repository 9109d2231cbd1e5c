"""Timestamps on the wire: ISO 8601, UTC, milliseconds, `Z`."""

from __future__ import annotations

import datetime as dt
import math
import time

# The last whole second iso_ms formatted and its text up to the milliseconds:
# the events of one read share their second, and strftime is most of the cost.
_last_second: tuple[int, str] = (-1, "")


def iso_ms(ts: float | None) -> str | None:
    """`2023-10-27T10:30:01.123Z` for epoch seconds; None stays None. The same
    text as `datetime.fromtimestamp(ts, UTC)` gives (microseconds rounded half
    to even, then cut to milliseconds), made without the datetime."""
    global _last_second
    if ts is None:
        return None
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    second = int(whole)
    cached = _last_second
    if cached[0] == second:
        head = cached[1]
    else:
        head = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _last_second = (second, head)
    return f"{head}{micros // 1000:03d}Z"


def iso_s(ts: float | None) -> str | None:
    """`2025-10-18T20:50:00Z` (whole seconds) for epoch seconds; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
