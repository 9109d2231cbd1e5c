"""The benchmark event: one logs-dialect `log` message, about 150 bytes.

Rules: every event's message text starts with `BENCH <seq> <t_ns> ` where t_ns
is the wall-clock time (time.time_ns) at which the event was produced: by the
baseline server just before it fans the event out, or by the job's process just
before it writes the line. The load client counts only messages containing the
marker and takes latency as receive time minus t_ns. bench/servers/fanout.c
builds byte-identical text; keep the two in step.
"""

from __future__ import annotations

import datetime as dt

MARKER = "BENCH "
EVENT_BYTES = 150
_HEAD = '{"type":"log","payload":{"ts":"%s","stream":"stdout","message":"'
_TAIL = '"}}'
# Characters of message text that make a log message EVENT_BYTES long (the
# ISO timestamp always has 24 characters). A job's printed line is this wide.
MESSAGE_WIDTH = EVENT_BYTES - len(_HEAD % "2000-01-01T00:00:00.000Z") - len(_TAIL)
# Longest `BENCH <seq> <t_ns> ` prefix the client reads to find t_ns.
MAX_PREFIX = 48


def iso_ms(t_ns: int) -> str:
    """`2023-10-27T10:30:01.123Z` for a time in nanoseconds since the epoch."""
    moment = dt.datetime.fromtimestamp(t_ns // 1_000_000_000, dt.UTC)
    millis = (t_ns // 1_000_000) % 1000
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def message_text(seq: int, t_ns: int, *, width: int) -> str:
    """The log line itself: marker, seq, timestamp, then dots up to `width` chars."""
    head = f"{MARKER}{seq} {t_ns} "
    return head + "." * max(width - len(head), 0)


def event_text(seq: int, t_ns: int) -> str:
    """The whole logs-dialect message for event `seq`, EVENT_BYTES long."""
    return _HEAD % iso_ms(t_ns) + message_text(seq, t_ns, width=MESSAGE_WIDTH) + _TAIL


def system_text(job_id: str, t_ns: int) -> str:
    """The `system` message a logs-dialect server sends when a subscriber is accepted."""
    return (
        '{"type":"system","payload":{"message":"Log streaming started.","job_id":"'
        + job_id + '","ts":"' + iso_ms(t_ns) + '"}}'
    )


def parse_stamp(text: bytes, start: int) -> tuple[int, int]:
    """(seq, t_ns) of the marker found at `start` in a received message."""
    fields = text[start + len(MARKER):start + MAX_PREFIX].split(b" ", 2)
    return int(fields[0]), int(fields[1])
