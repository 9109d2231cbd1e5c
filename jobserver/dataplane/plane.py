"""The data plane's shared state: routes, channels, the frame cache, statistics.

Rules: one `DataPlane` per server, built from the engine and handed to the
front door and to the ASGI fallback; it starts no task and holds no nursery.
A channel exists while it has members and is the hub's subscriber for just
that long. `statistics()` is a frozen snapshot for /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..auth import KeyRing, Principal
from ..config import Config
from ..core.ids import JobId
from ..core.job import Job
from ..dialects import Follow
from ..engine import Engine
from ..errors import NotFound, Unauthenticated
from .fanout import Channel, ChannelKey, FrameCache, Member, Sink
from .outbox import Counters
from .routes import DEFAULT_ROUTES, RouteTable
from .wire import ENCODERS


@dataclass(frozen=True, slots=True)
class DataPlaneStatistics:
    connections: int  # stream connections open (raw and ASGI fallback)
    handed_off: int  # connections hypercorn serves now
    subscribers: int  # followed topics on raw connections ...
    live: int  # ... of which written to directly by the publisher
    catching_up: int  # ... of which reading from the store
    slow_writers: int  # raw connections with a backlog (socket full)
    backlog_bytes: int  # queued in those backlogs, all together
    channels: int  # (topic, dialect variant, encoding) rendered once each
    bytes_sent: int  # by the raw data plane, since start
    frame_cache_hits: int
    frame_cache_misses: int


class DataPlane:
    def __init__(self, *, config: Config, engine: Engine, keyring: KeyRing,
                 routes: RouteTable = DEFAULT_ROUTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.engine = engine
        self.keyring = keyring
        self.routes = routes
        self.clock = clock
        self.cache = FrameCache()
        self.counters = Counters()
        self._channels: dict[ChannelKey, Channel] = {}
        self.connections = 0
        self.handed_off = 0
        self.subscribers = 0

    @property
    def stall_timeout(self) -> float:
        """How long a peer may leave its socket full before it is dropped."""
        return self.config.ws_ping_interval + self.config.ws_ping_timeout

    def now(self) -> float:
        return self.clock()

    # ---- who and what ----------------------------------------------------

    def principal(self, token: str | None) -> Principal | None:
        if token is None:
            return None
        try:
            return self.keyring.verify(token)
        except Unauthenticated:
            return None

    async def job_for(self, principal: Principal, job_id: JobId) -> Job | None:
        try:
            return await self.engine.get(principal, job_id)
        except NotFound:
            return None

    # ---- channels --------------------------------------------------------

    def join(self, sink: Sink, follow: Follow, encoding: str) -> Member:
        """A member of the channel for `follow` (it starts out catching up)."""
        key: ChannelKey = (follow.topic, follow.renderer.key, encoding)
        channel = self._channels.get(key)
        if channel is None:
            channel = Channel(key, ENCODERS[encoding], self.cache, release=self._release)
            # Where the hub stands now, so that a member whose catch-up reaches it
            # goes live at once, not at the job's next event (the hub delivers only
            # what is published after this, in the same step).
            channel.last_seq = self.engine.published_seq(follow.topic)
            self._channels[key] = channel
            self.engine.hub.subscribe(follow.topic, channel)
        self.subscribers += 1
        return Member(sink, channel, follow, max_lag=self.config.max_lag_events)

    def leave(self, member: Member) -> None:
        if not member.detached:
            member.detach()
        self.subscribers -= 1

    def _release(self, channel: Channel) -> None:
        if self._channels.get(channel.key) is channel:
            del self._channels[channel.key]
            self.engine.hub.unsubscribe(channel.topic, channel)

    async def settle(self) -> None:
        """Return once every subscriber is live and every socket drained: what was
        published has been written (the server's last events before it stops).
        Polls; the caller bounds it."""
        while True:
            stats = self.statistics()
            if stats.live == stats.subscribers and stats.slow_writers == 0:
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
            backlog_bytes=self.counters.backlog_bytes,
            channels=len(self._channels),
            bytes_sent=self.counters.bytes_sent,
            frame_cache_hits=self.cache.hits,
            frame_cache_misses=self.cache.misses,
        )

