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
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..auth import Principal
from ..config import Config
from ..core.events import Event
from ..core.ids import JobId
from ..core.job import Job
from ..core.topics import JobTopic, Topic


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

    def render(self, event: Any) -> Rendered:
        """The messages for `event` (an `Event` of a job topic, a `TopicEvent` or
        `SystemStatus` of an aggregate one); moves the renderer's state past it."""

    def advance(self, event: Any) -> None:
        """Move past `event` without rendering it (its messages came from a cache)."""

    def after(self, event: Any | None) -> Renderer:
        """A renderer of this variant in the state right after `event` (None: before the
        topic's first event). A renderer infers its state from that one event; each
        dialect documents how."""


@runtime_checkable
class PlacedByRecord(Protocol):
    """A renderer that can take its state from a job record instead of an event:
    a job topic followed "from now" with one goes live at once (see Subscribe)."""

    def placed(self, job: Job) -> Renderer:
        """A renderer of this variant in the state right after the job's last event,
        `job` being the record as of that event."""


@runtime_checkable
class PlacedByRecords(Protocol):
    """An aggregate topic's renderer that can take its state from the records of
    the topic's live jobs: a channel made for it starts in that state, not empty."""

    def placed_all(self, jobs: Sequence[Job]) -> Renderer:
        """A renderer of this variant that knows `jobs` (records as published)."""


# ---- actions: what a session asks of its transport ------------------------


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request with a plain HTTP response instead of a stream (opening only)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Accept:
    """Open the stream (opening only): the WebSocket upgrade or the SSE response head,
    with these extra headers. The actions after it run on the open stream."""

    headers: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Batch:
    """Send a subscription's messages together: each message its renderer gives is
    one item (a JSON value); what is pending goes out as one message, `head` +
    the items joined by "," + `tail`, `window` seconds after the first of them
    arrived, at once when they pass `max_bytes`, and before any close. The
    channel renders and encodes each item once for every subscriber; only the
    batches are per connection (dataplane/batch.py)."""

    head: str
    tail: str
    window: float
    max_bytes: int = 512 * 1024


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Follow `topic` from `after` on, rendered by `renderer` (in batches with `batch`).

    A job topic: its events with seq > `after`, history from the store first;
    `renderer` is in the state right after seq `after` as far as the session can
    tell from the job record, and the transport re-derives it with
    `renderer.after(e)` when it reads the event `e` at seq `after` from the store.
    A job topic with `after` None: "from now", after the last event the hub
    has published (exact, whatever is in flight); a job no longer live (it
    finished) ends at once (`on_end`), and with a `PlacedByRecord` renderer the
    member is live when the Subscribe returns (placed from the record as
    published), so following and unfollowing topics loses nothing. An
    aggregate topic (owner, all jobs, system): `after` must be None, "from
    now", and `renderer` starts as `renderer.after(None)` (a new channel's as
    `placed_all` of the topic's live jobs, with a `PlacedByRecords` one). A
    second Subscribe to a topic replaces the first.
    """

    topic: Topic
    after: int | None
    renderer: Renderer
    batch: Batch | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    """Follow the job topic `topic` from seq `after` on, its events handed to the
    session's `on_events` as they are, not rendered for the wire: for a session
    whose messages are per client (coalesced on its own timer, say). History from
    the store first, then live, nothing missed, repeated or reordered, as for a
    Subscribe; a second Watch or Subscribe of the topic replaces the first, and
    `Unsubscribe` ends it. The events are the job's own; with `lines` False its
    output lines (`Log` events, most of a chatty job's) are left out (see
    `WatchLines`)."""

    topic: JobTopic
    after: int
    lines: bool = True


@dataclass(frozen=True, slots=True)
class WatchLines:
    """Hand a watched topic's output lines to the session, or stop: from the next
    batch on, with no store read (events already waiting for the session keep
    theirs). Nothing happens when `topic` is not watched."""

    topic: JobTopic
    lines: bool


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop following `topic` (nothing happens when it is not followed)."""

    topic: Topic


@dataclass(frozen=True, slots=True)
class Timer:
    """Call the session's `on_tick` once, `delay` seconds from now (trio's clock);
    replaces the session's earlier timer. None cancels it."""

    delay: float | None


# ---- needs: I/O a session cannot do; the result comes back in `on_result` ----


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Check a token by the rules named (auth.py: "api" is the server's own tokens).
    Result: the `Principal`, or the `Unauthenticated` error saying why not."""

    token: str | None
    rules: str = "api"


@dataclass(frozen=True, slots=True)
class LookUp:
    """The job `job_id` as `principal` may see it. Result: the `Job` as published
    (a live job's record as of the last event handed to the hub, so its
    `last_seq` is a cursor that misses nothing), or None when it does not exist
    or is not theirs (the same answer for both)."""

    job_id: JobId
    principal: Principal


@dataclass(frozen=True, slots=True)
class ReadEvents:
    """A job's stored events with seq > `after`, at most `limit`, reading what was
    written before (read-your-writes). Result: a list of events."""

    job_id: JobId
    after: int
    limit: int


@dataclass(frozen=True, slots=True)
class Submit:
    """Submit a job of template `template` for `principal` (validated by the
    template's typed params, as every other way in). Result: the new `Job`, or
    the `JobserverError` (errors.py) that refused it."""

    principal: Principal
    template: str
    params: Mapping[str, Any]
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel a job `principal` may see. Result: the `Job`, or the `JobserverError`
    (NotFound for someone else's, Conflict for a finished one)."""

    principal: Principal
    job_id: JobId


@dataclass(frozen=True, slots=True)
class ReadSystem:
    """The system topic's state now. Result: a `SystemStatus`."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One of at most `limit` places under `key`, counted across every connection
    of the server (e.g. a user's connections), held until this connection ends.
    On an open stream only (after the Accept). Result: True, or False when all
    `limit` are held already."""

    key: Hashable
    limit: int


Need = Authenticate | LookUp | ReadEvents | Submit | CancelJob | ReadSystem | Claim
Action = (Message | Close | Accept | Refuse | Subscribe | Watch | WatchLines | Unsubscribe
          | Timer | Need)


class Session(Protocol):
    """One client's side of a dialect: made from the request, then driven by the
    transport. Every method returns actions, applied in order; a need's result
    comes back through `on_result` and the actions it returns run before the rest."""

    def open(self) -> Sequence[Action]:
        """The first actions: needs, then exactly one `Accept` or `Refuse`, and
        (after an Accept) what to send and follow."""

    def on_result(self, need: Need, result: Any) -> Sequence[Action]:
        """What a need (one of this session's own actions) gave."""

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        """A complete message from the client (WebSocket dialects)."""

    def on_events(self, topic: JobTopic, events: Sequence[Event]) -> Sequence[Action]:
        """Events of a watched topic (`Watch`), in seq order, each once."""

    def on_end(self, topic: Topic) -> Sequence[Action]:
        """A followed topic ended (its renderer said so); it is no longer followed."""

    def on_lag(self, topic: Topic) -> Sequence[Action]:
        """A followed aggregate topic fell too far behind and was dropped (a job
        topic never is: it catches up from the store)."""

    def on_tick(self, now: float) -> Sequence[Action]:
        """The session's timer went off; `now` is trio's clock."""

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        """The client broke the transport's rules (a message too big, a bad frame):
        what to send before the transport closes with `close`."""

    def on_shutdown(self) -> Sequence[Action]:
        """The server is stopping: the goodbye (ends with a Close)."""


class BaseSession:
    """Defaults for a session's callbacks: nothing to say, 1000/1001 closes."""

    def on_result(self, need: Need, result: Any) -> Sequence[Action]:
        return ()

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        return ()

    def on_events(self, topic: JobTopic, events: Sequence[Event]) -> Sequence[Action]:
        return ()

    def on_end(self, topic: Topic) -> Sequence[Action]:
        return (Close(),)

    def on_lag(self, topic: Topic) -> Sequence[Action]:
        return (Close(1013, "too far behind"),)

    def on_tick(self, now: float) -> Sequence[Action]:
        return ()

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        return ()

    def on_shutdown(self) -> Sequence[Action]:
        return (Close(1001, "server shutting down"),)


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A stream request as the transport parsed it: names lower-cased, first value wins."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    params: Mapping[str, str]  # from the route's path pattern
    peer: str | None = None  # the client's address (a loopback check), when known


# Signs a progress token (auth.py) for a job, issued at a time: pure CPU, and
# deterministic (RS256), so a renderer may call it.
ProgressSigner = Callable[[str, float], str]


@dataclass(frozen=True, slots=True)
class SessionEnv:
    """What every session may read: the server's settings, the wall clock, and the
    progress-token signer (the live dialect's `spawned` events carry one)."""

    config: Config
    clock: Callable[[], float]
    sign_progress: ProgressSigner | None = None

    def now(self) -> float:
        return self.clock()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 left as it is (the transports encode it once)."""
    return _ENCODER.encode(data)


# A JSON string literal as `dumps` writes one (for messages built by hand).
json_string: Callable[[str], str] = json.encoder.encode_basestring
