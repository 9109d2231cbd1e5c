"""One stream connection: the part every transport shares (raw WebSocket, raw SSE,
and the ASGI fallback's two).

A `StreamConnection` owns its outbox, its members (followed topics, by topic)
and its session, and applies the session's actions (`handle`): messages go to
the outbox, Subscribe/Unsubscribe join and leave channels, a Timer sets the
session's one deadline, a Watch joins a raw channel whose events the writer
hands to the session (`on_events`), needs are fulfilled by the data plane with their
results fed back to the session, in order, and a `Claim` takes a place in the
plane's server-wide counts that this connection gives back when it ends. Its main
task is the writer: it flushes backlogs in joined writes, starts a catch-up task
for each member that needs one (members catch up concurrently, a few store reads
at a time), tells the session when a followed topic ended or lagged, and runs
its timer. A reader
task (the transport's) runs beside it in the connection's own nursery.
Rules: the publisher only ever calls the sync `wake`; calls into the session
are serialised (`handle` holds a lock while a need is awaited); a peer that
leaves its socket full for `plane.stall_timeout` or goes away is dropped; when
the front door is cancelled the connection says the session's goodbye in a
shielded, bounded moment and the socket is closed by whoever opened it, after
this returns.
"""

from __future__ import annotations

import abc
import logging
import math
import socket
from collections import deque
from collections.abc import Hashable, Sequence

import trio

from ..core.events import Event
from ..core.topics import JobTopic, Topic
from ..dialects import (
    Action,
    Claim,
    Close,
    Session,
    SseEvent,
    Subscribe,
    Timer,
    Unsubscribe,
    Watch,
    WatchLines,
)
from .fanout import Member
from .outbox import RECV_SIZE, Outbox, PeerGone, Stalled, send_all
from .plane import DataPlane
from .sinks import EVENTS, UNRENDERED, SinkOutbox
from .wakeup import Wakeup
from .wire import ENCODERS, http_response

log = logging.getLogger("jobserver.dataplane")

# After a close frame or a refusal, how long the peer gets to read it and
# hang up before the socket is closed (and the bytes it may still send).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
# On shutdown, how long a connection may spend saying goodbye (1001).
GOING_AWAY_SECONDS = 1.0
# Members of one connection reading a page from the store at once: what a
# connection may hold in catch-up pages, whatever its number of subscriptions.
CATCH_UP_READERS = 4


class StreamConnection(abc.ABC):
    """An accepted stream: `actions` (what the session said after its Accept) are
    applied first, `trailing` (bytes the client sent after its request) read first.

    Slotted, and the request it came from is not kept: thousands are held at
    once, so each holds only what it needs for its life.
    """

    __slots__ = ("_claimed", "_encode", "_inbox", "_inbox_events", "_lock", "_outbox",
                 "_readers", "_start", "_taken", "_timer_at", "_wakeup", "closing", "members",
                 "plane", "session", "stalled")
    encoding = "ws"

    def __init__(self, plane: DataPlane, session: Session, outbox: SinkOutbox, *,
                 actions: Sequence[Action], trailing: bytes) -> None:
        self.plane = plane
        self.session = session
        self._outbox = outbox
        self._encode = ENCODERS[self.encoding]
        self.members: dict[Topic, Member] = {}
        self.closing = False
        self.stalled = False  # counted as a slow peer closed (once)
        self._wakeup = Wakeup()
        self._timer_at = math.inf
        self._lock: trio.Lock | None = None  # made when a need is first awaited
        self._readers: trio.Semaphore | None = None
        # Watched topics' events waiting for the session (made at the first).
        self._inbox: deque[tuple[Member, Sequence[Event]]] | None = None
        self._inbox_events = 0
        self._taken: trio.lowlevel.ParkingLot | None = None
        self._start: tuple[Sequence[Action], bytes] | None = (actions, trailing)
        self._claimed: list[Hashable] | None = None  # Claim keys, released at the end

    @property
    def outbox(self) -> SinkOutbox:
        return self._outbox

    @property
    def readers(self) -> trio.Semaphore:
        if self._readers is None:
            self._readers = trio.Semaphore(CATCH_UP_READERS)
        return self._readers

    def wake(self) -> None:
        self._wakeup.set()

    def take_events(self, member: Member, events: Sequence[Event]) -> int:
        """A watched topic's events, for the session (the writer hands them over)."""
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append((member, events))
        self._inbox_events += len(events)
        self.wake()
        return self._inbox_events

    async def wait_events_taken(self) -> None:
        if not self._inbox:
            await trio.lowlevel.checkpoint()
            return
        if self._taken is None:
            self._taken = trio.lowlevel.ParkingLot()
        await self._taken.park()

    # ---- what the transports specialise ----------------------------------

    def drop_slow(self) -> None:
        """Count the peer as a slow one closed (its socket stayed full, or it
        stopped answering pings), once per connection."""
        if not self.stalled:
            self.stalled = True
            self.plane.counters.stalled += 1

    @abc.abstractmethod
    def close(self, close: Close) -> None:
        """Begin the end: detach every member and queue the transport's last bytes."""
        ...

    @abc.abstractmethod
    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        ...

    async def idle(self) -> None:
        """Wait for something to do (a transport may send heartbeats meanwhile)."""
        await self._wakeup.wait()

    async def after_close(self) -> None:
        """Once the last bytes are out (a WebSocket waits for the peer's close)."""
        await trio.lowlevel.checkpoint()

    # ---- the session's actions -------------------------------------------

    def send(self, message: str | SseEvent) -> None:
        if not self.closing:
            self.plane.counters.messages_sent += 1
            self._outbox.write_nowait(self._encode((message,)))

    def apply_nowait(self, actions: Sequence[Action]) -> None:
        """Messages and closes only (a goodbye, a protocol error): nothing to await."""
        for action in actions:
            if isinstance(action, Close):
                self.close(action)
            elif isinstance(action, (str, SseEvent)):
                self.send(action)

    async def handle(self, actions: Sequence[Action]) -> None:
        """Apply a session's actions in order; a need's result goes back to the
        session and the actions it gives run next."""
        pending: deque[Action] = deque(actions)
        while pending:
            action = pending.popleft()
            kind = type(action)
            if kind is str or kind is SseEvent:
                self.send(action)  # type: ignore[arg-type]
            elif kind is Close:
                self.close(action)  # type: ignore[arg-type]
            elif kind is Subscribe:
                self._subscribe(action)  # type: ignore[arg-type]
            elif kind is Watch:
                watch: Watch = action  # type: ignore[assignment]
                self._subscribe(Subscribe(watch.topic, watch.after, UNRENDERED), EVENTS)
                self._watch_lines(watch.topic, watch.lines)
            elif kind is WatchLines:
                flip: WatchLines = action  # type: ignore[assignment]
                self._watch_lines(flip.topic, flip.lines)
            elif kind is Unsubscribe:
                self._drop(action.topic)  # type: ignore[union-attr]
            elif kind is Timer:
                delay = action.delay  # type: ignore[union-attr]
                self._timer_at = math.inf if delay is None else trio.current_time() + delay
                self.wake()
            elif kind is Claim:
                pending.extendleft(reversed(self._claim(action)))  # type: ignore[arg-type]
            elif self.plane.can_fulfil(action):
                if self._lock is None:
                    self._lock = trio.Lock()
                async with self._lock:
                    result = await self.plane.fulfil(action)
                    more = self.session.on_result(action, result)  # type: ignore[arg-type]
                pending.extendleft(reversed(more))
            else:
                log.error("a session asked for %r on an open stream", kind.__name__)

    def _claim(self, claim: Claim) -> Sequence[Action]:
        if self.closing:
            return ()
        held = self.plane.claim(claim.key, claim.limit)
        if held:
            if self._claimed is None:
                self._claimed = []
            self._claimed.append(claim.key)
        return self.session.on_result(claim, held)

    def _subscribe(self, subscribe: Subscribe, encoding: str | None = None) -> None:
        if self.closing:
            return
        self._drop(subscribe.topic)
        self.members[subscribe.topic] = self.plane.join(self, subscribe,
                                                        encoding or self.encoding)
        self.wake()

    def _watch_lines(self, topic: JobTopic, lines: bool) -> None:
        member = self.members.get(topic)
        if member is not None and member.channel.raw:
            member.lines = lines

    def _drop(self, topic: Topic) -> None:
        member = self.members.pop(topic, None)
        if member is not None:
            self.plane.leave(member)

    def detach_all(self) -> None:
        for member in self.members.values():
            if not member.detached:
                member.detach()

    # ---- running ---------------------------------------------------------

    async def run(self) -> None:
        """Serve the accepted stream until it closes, the peer goes, or we are cancelled."""
        assert self._start is not None, "a stream connection runs once"
        plane = self.plane
        plane.connections += 1
        try:
            actions, trailing = self._start
            self._start = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.read_loop, trailing, nursery.cancel_scope)
                try:
                    await self.handle(actions)
                    await self._write_loop(nursery)
                    await self.after_close()
                except Stalled:
                    self.drop_slow()
                except PeerGone:
                    pass
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            if cancelled(exc):
                await self._say_goodbye()
            raise
        finally:
            for member in self.members.values():
                plane.leave(member)
            self.members.clear()  # member.sink is this connection: no cycle left behind
            for key in self._claimed or ():
                plane.release(key)
            self._claimed = None
            self._outbox.close()
            plane.connections -= 1

    async def _write_loop(self, nursery: trio.Nursery) -> None:
        stall = self.plane.stall_timeout
        while True:
            self._wakeup.clear()
            await self._outbox.flush(stall_timeout=stall)
            if self.closing:
                if self._outbox.idle:
                    return
                continue
            if self._inbox:
                await self._give_events()
            for topic, member in list(self.members.items()):
                if member.ended or member.lagged:
                    if not member.ended:
                        self.plane.counters.lagged += 1
                    self._drop(topic)
                    session = self.session
                    await self.handle(session.on_end(topic) if member.ended
                                      else session.on_lag(topic))
                elif member.needs_catch_up and not member.detached:
                    member.needs_catch_up = False
                    nursery.start_soon(self._catch_up, member)
            if self._timer_at <= trio.current_time() and not self.closing:
                self._timer_at = math.inf
                await self.handle(self.session.on_tick(trio.current_time()))
            if self.closing or not self._outbox.idle or self._inbox or any(
                    m.ended or m.lagged or m.needs_catch_up for m in self.members.values()):
                continue
            with trio.move_on_at(self._timer_at):
                await self.idle()

    async def _give_events(self) -> None:
        """Hand the watched topics' waiting events to the session, in order (a
        topic unwatched meanwhile drops its own)."""
        inbox = self._inbox
        assert inbox is not None
        while inbox and not self.closing:
            member, events = inbox.popleft()
            self._inbox_events -= len(events)
            topic = member.topic
            if self.members.get(topic) is member and type(topic) is JobTopic:
                await self.handle(self.session.on_events(topic, events))
        if self.closing:
            inbox.clear()
            self._inbox_events = 0
        if self._taken is not None:
            self._taken.unpark_all()

    async def _catch_up(self, member: Member) -> None:
        try:
            await member.catch_up(self.plane.engine)
        except PeerGone:
            pass  # the writer finds the socket broken too
        self.wake()

    async def _say_goodbye(self) -> None:
        if self.closing or self._outbox.broken:
            return
        self.detach_all()
        self._outbox.truncate()
        self.apply_nowait(self.session.on_shutdown())
        if not self.closing:
            self.close(Close(1001, "server shutting down"))
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + GOING_AWAY_SECONDS
            try:
                await self._outbox.flush(stall_timeout=GOING_AWAY_SECONDS)
            except (PeerGone, Stalled):
                pass


class SocketConnection(StreamConnection):
    """A stream on a raw socket of the front door's; `preamble` (the response head)
    goes out first."""

    __slots__ = ("sock",)

    def __init__(self, plane: DataPlane, sock: socket.socket, session: Session, *,
                 preamble: bytes, actions: Sequence[Action], trailing: bytes) -> None:
        outbox = Outbox(sock, plane.counters, wake=self.wake)
        super().__init__(plane, session, outbox, actions=actions, trailing=trailing)
        self.sock = sock
        outbox.write_nowait(preamble)


def cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(cancelled(e) for e in exc.exceptions)
    return False


async def answer(sock: socket.socket, status: int, body: bytes = b"", *,
                 content_type: str = "text/plain; charset=utf-8",
                 headers: Sequence[tuple[str, str]] = (), stall_timeout: float) -> None:
    """Send a complete HTTP response, then hang up politely (see `linger`)."""
    data = http_response(status, body, content_type=content_type, headers=headers)
    try:
        await send_all(sock, data, stall_timeout=stall_timeout)
    except (PeerGone, Stalled):
        return
    await linger(sock)


async def linger(sock: socket.socket) -> None:
    """Half-close, then read and drop what the peer still sends, briefly.

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the response before the client read it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    dropped = 0
    with trio.move_on_after(LINGER_SECONDS):
        while dropped < LINGER_MAX_BYTES:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not data:
                return
            dropped += len(data)


def drain_nowait(sock: socket.socket) -> None:
    """Read and drop whatever input is waiting (so close() sends FIN, not RST)."""
    for _ in range(16):
        try:
            if not sock.recv(RECV_SIZE):
                return
        except OSError:
            return

