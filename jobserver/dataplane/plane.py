"""The data plane's shared state: routes, channels, the frame cache, statistics,
and the one place a session's needs are fulfilled.

Rules: one `DataPlane` per server, built from the engine and handed to the
front door and to the ASGI fallback; it starts no task and holds no nursery:
its one task, the batching channels' clock (`batches.run`, batch.py), runs in
the front door's nursery. A channel exists while it has members and is the
hub's subscriber for just that long. `open_session` runs a session's opening
(its needs, then its one Accept or Refuse) for every transport; `fulfil` is
the table of needs (dialects/__init__.py) to the engine and the key ring: add
a need, add a row. `statistics()` is a frozen snapshot for /metrics (read at
scrape time: the per-event paths make no metric call; an opening is counted
once, here).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import trio

from ..auth import KeyRing, progress_signer
from ..config import Config
from ..core.topics import JobTopic
from ..dialects import (
    Accept,
    Action,
    Authenticate,
    CancelJob,
    LookUp,
    Need,
    PlacedByRecord,
    PlacedByRecords,
    ReadEvents,
    ReadSystem,
    Refuse,
    Session,
    SessionEnv,
    StreamRequest,
    Submit,
    Subscribe,
)
from ..engine import Engine
from ..errors import JobserverError, NotFound, Unauthenticated
from ..livejob import Submission
from ..metrics import Metrics
from .batch import BatchChannel, BatchClock
from .encoded import ChannelKey, FrameCache
from .fanout import Channel, Member
from .outbox import Counters
from .routes import DEFAULT_ROUTES, Route, RouteTable
from .sinks import Sink
from .wire import ENCODERS, FRAMING, ITEMS

log = logging.getLogger("jobserver.dataplane")


@dataclass(frozen=True, slots=True)
class DataPlaneStatistics:
    connections: int  # stream connections open (raw and ASGI fallback)
    handed_off: int  # connections hypercorn serves now
    subscribers: int  # followed topics on raw connections ...
    live: int  # ... of which written to directly by the publisher
    catching_up: int  # ... of which reading from the store
    slow_writers: int  # raw connections with a backlog (socket full)
    pending_batches: int  # batching channels with events waiting for their window
    backlog_bytes: int  # queued in those backlogs, all together
    channels: int  # (topic, dialect variant, encoding) rendered once each
    bytes_sent: int  # by the raw data plane, since start
    messages_sent: int  # events and session messages queued for stream sockets, since start
    lagged: int  # subscribers dropped from the live path for falling behind, since start
    stalled: int  # stream connections closed: the peer stopped reading or answering pings
    frame_cache_hits: int
    frame_cache_misses: int


class DataPlane:
    def __init__(self, *, config: Config, engine: Engine, keyring: KeyRing,
                 routes: RouteTable = DEFAULT_ROUTES,
                 clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.engine = engine
        self.keyring = keyring
        self.routes = routes
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.env = SessionEnv(config=config, clock=clock,
                              sign_progress=progress_signer(keyring, config.progress_token_ttl))
        self.cache = FrameCache()
        self.batches = BatchClock()  # its task runs in the front door (`run_batches`)
        self.counters = Counters()
        self._channels: dict[ChannelKey, Channel] = {}
        # Claim keys -> places held; a key leaves with its last place.
        self._claims: dict[Hashable, int] = {}
        self.connections = 0
        self.handed_off = 0
        self.subscribers = 0

    @property
    def stall_timeout(self) -> float:
        """How long a peer may leave its socket full before it is dropped."""
        return self.config.ws_ping_interval + self.config.ws_ping_timeout

    def now(self) -> float:
        return self.clock()

    # ---- sessions and their needs ----------------------------------------

    async def open_session(self, route: Route, request: StreamRequest
                           ) -> tuple[Session, Accept | Refuse, list[Action]]:
        """Make the route's session and run its opening: its needs, up to its
        Accept or Refuse; the actions after an Accept are for the open stream."""
        session: Session = route.session(request, self.env)
        pending: deque[Action] = deque(session.open())
        while pending:
            action = pending.popleft()
            if isinstance(action, (Accept, Refuse)):
                status = action.status if isinstance(action, Refuse) else \
                    101 if route.transport == "ws" else 200
                self.metrics.stream_accepted(route.name, status)
                return session, action, list(pending)
            if type(action) in _HANDLERS:
                result = await self.fulfil(action)
                pending.extendleft(reversed(session.on_result(action, result)))  # type: ignore[arg-type]
            else:
                log.error("%s session acted before it accepted: %r", route.name, action)
                break
        return session, Refuse(500, b"", ""), []

    def can_fulfil(self, action: object) -> bool:
        return type(action) in _HANDLERS

    async def fulfil(self, need: Need | Any) -> Any:
        """What a need gives (see the needs in dialects/__init__.py)."""
        handler = _HANDLERS[type(need)]
        return await handler(self, need)

    def claim(self, key: Hashable, limit: int) -> bool:
        """Take one of `limit` places under `key` (dialects.Claim); False when full."""
        held = self._claims.get(key, 0)
        if held >= limit:
            return False
        self._claims[key] = held + 1
        return True

    def release(self, key: Hashable) -> None:
        held = self._claims.get(key, 0) - 1
        if held > 0:
            self._claims[key] = held
        else:
            self._claims.pop(key, None)

    def claims(self, key: Hashable) -> int:
        return self._claims.get(key, 0)

    # ---- channels --------------------------------------------------------

    def join(self, sink: Sink, subscribe: Subscribe, encoding: str) -> Member:
        """A member of the channel for `subscribe` (a job topic's starts out catching
        up; an aggregate topic's is live at once). A subscription with a `Batch` has
        a batching channel of its own kind (batch.py)."""
        batch = subscribe.batch
        key: ChannelKey = (subscribe.topic, subscribe.renderer.key if batch is None
                           else (subscribe.renderer.key, batch), encoding)
        channel = self._channels.get(key)
        if channel is None:
            if batch is None:
                channel = Channel(key, ENCODERS[encoding], self.cache, release=self._release,
                                  counters=self.counters)
            else:
                channel = BatchChannel(key, ENCODERS[ITEMS], self.cache, release=self._release,
                                       batch=batch, framing=FRAMING[encoding],
                                       clock=self.batches)
                channel.counters = self.counters
            # Where the hub stands now, so that a member whose catch-up reaches it
            # goes live at once, not at the topic's next event (the hub delivers
            # only what is published after this, in the same step).
            channel.last_seq = self.engine.published_seq(subscribe.topic)
            if isinstance(subscribe.renderer, PlacedByRecords):
                # Its state from the records of the jobs it will hear of, as published.
                channel.renderer = subscribe.renderer.placed_all(
                    self.engine.published_jobs(subscribe.topic))
            self._channels[key] = channel
            self.engine.hub.subscribe(subscribe.topic, channel)
        self.subscribers += 1
        member = Member(sink, channel, subscribe, max_lag=self.config.max_lag_events)
        topic = subscribe.topic
        if subscribe.after is None and type(topic) is JobTopic:
            live = self.engine.live(topic.job_id)
            if live is None:
                # "From now" on a job that is no longer live: it has said everything.
                member.end_nowait()
            elif isinstance(subscribe.renderer, PlacedByRecord):
                # Live now, with nothing to read: what it is told next is what
                # the hub publishes next.
                member.go_live_nowait(subscribe.renderer.placed(live.published))
        return member

    def leave(self, member: Member) -> None:
        if not member.detached:
            member.detach()
        self.subscribers -= 1

    def _release(self, channel: Channel) -> None:
        if self._channels.get(channel.key) is channel:
            del self._channels[channel.key]
            self.engine.hub.unsubscribe(channel.topic, channel)

    async def settle(self) -> None:
        """Return once every subscriber is live, every batch sent and every socket
        drained: what was published has been written (the server's last events
        before it stops). Polls; the caller bounds it."""
        while True:
            stats = self.statistics()
            if stats.live == stats.subscribers and stats.slow_writers == 0 \
                    and stats.pending_batches == 0:
                return
            await trio.sleep(0.01)

    def statistics(self) -> DataPlaneStatistics:
        live = sum(len(c.live) for c in self._channels.values())
        pending = sum(len(c.pending) for c in self._channels.values())
        return DataPlaneStatistics(
            connections=self.connections,
            handed_off=self.handed_off,
            subscribers=self.subscribers,
            live=live,
            catching_up=pending,
            slow_writers=self.counters.slow_writers,
            pending_batches=sum(1 for c in self._channels.values()
                                if isinstance(c, BatchChannel) and c.pending_window),
            backlog_bytes=self.counters.backlog_bytes,
            channels=len(self._channels),
            bytes_sent=self.counters.bytes_sent,
            messages_sent=self.counters.messages_sent,
            lagged=self.counters.lagged,
            stalled=self.counters.stalled,
            frame_cache_hits=self.cache.hits,
            frame_cache_misses=self.cache.misses,
        )



async def _authenticate(plane: DataPlane, need: Authenticate) -> Any:
    if need.token is None:
        return Unauthenticated("missing token", code="missing_token")
    try:
        return plane.keyring.verify(need.token, purpose=need.rules)
    except Unauthenticated as exc:
        return exc


async def _look_up(plane: DataPlane, need: LookUp) -> Any:
    try:
        job = await plane.engine.get(need.principal, need.job_id)
    except NotFound:
        return None
    # What subscribers have been told: a batch being written is not in it yet,
    # so a session's cursor (job.last_seq) and its "finished?" agree with the hub.
    live = plane.engine.live(job.id)
    return job if live is None else live.published


async def _read_events(plane: DataPlane, need: ReadEvents) -> Any:
    return await plane.engine.events_after(need.job_id, need.after, limit=need.limit)


async def _submit(plane: DataPlane, need: Submit) -> Any:
    submission = Submission(template=need.template, params=need.params,
                            correlation_id=need.correlation_id)
    try:
        return await plane.engine.submit(need.principal, submission)
    except JobserverError as exc:
        return exc


async def _cancel(plane: DataPlane, need: CancelJob) -> Any:
    try:
        return await plane.engine.cancel(need.principal, need.job_id)
    except JobserverError as exc:
        return exc


async def _read_system(plane: DataPlane, need: ReadSystem) -> Any:
    await trio.lowlevel.checkpoint()
    return plane.engine.system_status()


_HANDLERS: dict[type, Callable[[DataPlane, Any], Awaitable[Any]]] = {
    Authenticate: _authenticate,
    LookUp: _look_up,
    ReadEvents: _read_events,
    Submit: _submit,
    CancelJob: _cancel,
    ReadSystem: _read_system,
}

