"""What one client may hold: how many connections, and how long a request may take.

Rules (the settings are in config.py, the table in the README):

- Connections: at most `max_connections` at once, and `max_connections_per_client`
  from one client address. One over the limit is told `503` (with
  `Connection: close`) and closed at once, without a task or a read; the
  refusals are logged at most once per `LOG_EVERY_SECONDS`, with a count.
- A request head, the first on a connection or any later one, must arrive
  whole within `handshake_timeout` of its first byte; its body, whole within
  `body_timeout` of the head's end (a total per head and per body, so a
  byte trickled every few seconds does not hold the connection). Past
  either: `408` with `Connection: close` when no response was begun, else a
  plain close (a connection's first head: the front door just closes); and a
  log line naming the client's address (never a target or a header, which
  may carry a token), at most once per `LOG_EVERY_SECONDS`, with a count.
- A keep-alive connection waiting for its next request is closed after
  `keep_alive_timeout`, without a word (hypercorn's own idle timer is not
  enough: it is restarted from the app's task, which quart-trio has cancelled
  by then, so it never ran after a connection's first request). A connection
  that is sending a response or carrying a WebSocket is not limited here (a
  stream has its own ping deadline and send stall limit).

`RequestClock` is sans-IO: it is told what the connection is waiting for and
answers with the deadline; `ConnectionCount` only counts; `Throttled` keeps
an attack from writing a log line per connection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("jobserver.frontdoor")

# Refusals, and requests that came too slowly, are logged at most this often.
LOG_EVERY_SECONDS = 10.0

Waiting = Literal["idle", "head", "body"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLimits:
    head_seconds: float  # a request head, from its first byte to its blank line
    body_seconds: float  # a request body, from the head's end to its last byte
    idle_seconds: float  # a keep-alive connection, from its last answer to the next head

    def limit(self, waiting: Waiting) -> float:
        if waiting == "idle":
            return self.idle_seconds
        return self.head_seconds if waiting == "head" else self.body_seconds


class RequestClock:
    """When the request part a connection is waiting for must have arrived.

    `waiting` names the part (None: nothing bounded here) and the request's
    number on the connection, so two heads in a row are timed apart.
    """

    __slots__ = ("_key", "_since", "limits")

    def __init__(self, limits: ReadLimits) -> None:
        self.limits = limits
        self._key: tuple[Waiting, int] | None = None
        self._since = 0.0

    def deadline(self, waiting: Waiting | None, request: int, now: float) -> float:
        if waiting is None:
            self._key = None
            return math.inf
        key = (waiting, request)
        if key != self._key:
            self._key, self._since = key, now
        return self._since + self.limits.limit(waiting)


class Throttled:
    """One kind of log line, at most once per `LOG_EVERY_SECONDS`; the ones held
    back in between are counted into the next."""

    __slots__ = ("_held", "_logged_at", "level")

    def __init__(self, level: int = logging.WARNING) -> None:
        self.level = level
        self._held = 0
        self._logged_at = -math.inf

    def log(self, now: float, message: str, *args: object) -> None:
        if now - self._logged_at < LOG_EVERY_SECONDS:
            self._held += 1
            return
        if self._held:
            message += f" (and {self._held} more since the last such line)"
        log.log(self.level, message, *args)
        self._held, self._logged_at = 0, now


class ConnectionCount:
    """The connections held, in total and per client address."""

    def __init__(self, *, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._by_client: dict[str, int] = {}
        self.open = 0
        self._refusals = Throttled()

    def admit(self, client: str, now: float) -> bool:
        """Count one more connection from `client`, or refuse it (False)."""
        held = self._by_client.get(client, 0)
        if self.open >= self.total:
            self._refusals.log(now, "refused a connection from %s: %d open in all", client,
                               self.open)
            return False
        if held >= self.per_client:
            self._refusals.log(now, "refused a connection from %s: %d open from there",
                               client, held)
            return False
        self._by_client[client] = held + 1
        self.open += 1
        return True

    def release(self, client: str) -> None:
        held = self._by_client.get(client, 0) - 1
        if held > 0:
            self._by_client[client] = held
        else:
            self._by_client.pop(client, None)
        self.open -= 1
