"""Wire dialects: sans-IO renderings of the one event model.

A stream dialect comes in two parts, both plain data in, plain data out:

- a **session**, one per client: it reads the request (path, query, headers),
  decides what to answer once the transport has looked up the principal and
  the job (`Refuse` the request, or `Accept` it with first messages and a
  `Follow`), takes the client's messages and the end of the followed stream,
  and answers with messages to send and `Close` decisions;
- a **renderer**, one per (topic, dialect variant) and shared: it turns each
  event of a topic into wire messages. A renderer is deterministic in the
  topic's history, so two renderers of one variant that have seen the same
  events render the next one identically. That is what lets the data plane
  encode an event once and write the same bytes to every subscriber.

Messages are JSON text (WebSocket dialects) or `SseEvent`s (SSE dialects);
the transports turn them into frames or chunks. Nothing here knows sockets,
ASGI or trio.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..core.events import Event
from ..core.ids import JobId


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event; `data` may span lines."""

    data: str
    event: str | None = None
    id: str | None = None


# A message to the client: JSON text (WebSocket) or one SSE event.
Message = str | SseEvent


@dataclass(frozen=True, slots=True)
class Close:
    """End the stream: a WebSocket close frame with `code`, or the end of an SSE body."""

    code: int = 1000
    reason: str = ""


class Rendered(NamedTuple):
    """What one event becomes: messages, and whether the followed stream ends after them.

    A named tuple, not a dataclass: one is made per event and per line of output."""

    messages: tuple[Message, ...] = ()
    end: bool = False


NOTHING = Rendered()


class Renderer(Protocol):
    """Turns one topic's events into one dialect variant's messages (see above)."""

    @property
    def key(self) -> Hashable:
        """Equal keys render equal bytes for equal histories (the cache and channel key)."""

    def render(self, event: Event) -> Rendered:
        """The messages for `event`; moves the renderer's state past it."""

    def advance(self, event: Event) -> None:
        """Move past `event` without rendering it (its messages came from a cache)."""

    def after(self, event: Event | None) -> Renderer:
        """A renderer of this variant in the state right after `event` (None: before the
        topic's first event). A renderer infers its state from that one event; each
        dialect documents how."""


@dataclass(frozen=True, slots=True)
class Follow:
    """Stream a topic's events with seq > `after`, rendered by `renderer`.

    `renderer` is in the state right after seq `after` as far as the session can
    tell from the job record; the transport re-derives it with `renderer.after(e)`
    when it reads the event `e` at seq `after` from the store.
    """

    topic: JobId
    after: int
    renderer: Renderer


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request with a plain HTTP response instead of a stream."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Accept:
    """Open the stream: send `messages`, then follow `follow` (if any), and close with
    `close` once done (None: leave it to the session's `on_end`)."""

    messages: tuple[Message, ...] = ()
    follow: Follow | None = None
    close: Close | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())


Opening = Refuse | Accept
Action = Message | Close


class Session(Protocol):
    """One client's side of a dialect, after the stream was accepted."""

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        """A complete message from the client (WebSocket dialects)."""

    def on_end(self) -> Sequence[Action]:
        """The followed stream ended (a renderer said so)."""

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        """The client broke the transport's rules (a message too big, a bad frame):
        what to send before the transport closes with `close`."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A stream request as the transport parsed it: names lower-cased, first value wins."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    params: Mapping[str, str]  # from the route's path pattern
    peer: str | None = None  # the client's address (a loopback check), when known


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 left as it is (the transports encode it once)."""
    return _ENCODER.encode(data)


# A JSON string literal as `dumps` writes one (for messages built by hand).
json_string: Callable[[str], str] = json.encoder.encode_basestring
