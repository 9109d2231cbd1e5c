"""Timestamps on the wire: ISO 8601, UTC, milliseconds, `Z`."""

from __future__ import annotations

import datetime as dt


def iso_ms(ts: float | None) -> str | None:
    """`2023-10-27T10:30:01.123Z` for epoch seconds; None stays None."""
    if ts is None:
        return None
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_s(ts: float | None) -> str | None:
    """`2025-10-18T20:50:00Z` (whole seconds) for epoch seconds; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
