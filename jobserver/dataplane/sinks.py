"""What a fan-out member writes to: its connection's side (`Sink`, the outbox
it sends through, and for a raw channel the session it hands events to), and
the renderer of a raw channel, which renders nothing.

These are the seams between fanout.py (channels and members, on the
publisher's path) and the connections of stream.py and the ASGI fallback;
nothing here blocks or awaits a subscriber.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..core.events import Event
from ..dialects import NOTHING, Rendered

if TYPE_CHECKING:
    from .fanout import Member

# The encoding of a raw channel: a session's `Watch`, whose members get the
# events themselves (handed to their connection's session), nothing encoded.
EVENTS = "events"


class SinkOutbox(Protocol):
    """A connection's outbox (outbox.Outbox, or the ASGI fallback's QueueOutbox)."""

    pending_bytes: int
    broken: bool

    @property
    def idle(self) -> bool: ...

    def write_nowait(self, data: bytes, events: int = 0, *, seal: bool = False) -> None: ...

    def over(self, max_events: int) -> bool: ...

    async def wait_drained(self, limit: int = 0) -> None: ...

    async def flush(self, *, stall_timeout: float) -> None: ...

    def truncate(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A connection's side of its members: where their bytes go, and its writer."""

    @property
    def outbox(self) -> SinkOutbox: ...

    @property
    def readers(self) -> trio.Semaphore:
        """Bounds how many of the connection's members read the store at once."""

    def wake(self) -> None:
        """Tell the connection's writer task there is work (a lag, an end, a backlog)."""


class EventSink(Sink, Protocol):
    """The sink of a raw channel's member: its connection hands events to its session."""

    def take_events(self, member: Member, events: Sequence[Event]) -> int:
        """Queue `events` for the session (never blocks); how many are queued now."""

    async def wait_events_taken(self) -> None:
        """Return once the session has had every queued event."""


class Unrendered:
    """The renderer of a raw channel: nothing is rendered, the events go as they are."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return EVENTS

    def render(self, event: Any) -> Rendered:
        return NOTHING

    def advance(self, event: Any) -> None:
        pass

    def after(self, event: Any | None) -> Unrendered:
        return self


UNRENDERED = Unrendered()
