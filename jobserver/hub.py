"""The hub: in-process broadcast of job events, per-job topics plus `system`.

Rules: `publish` is synchronous and never awaits a subscriber. Each subscriber
decides, in its own non-blocking `deliver`, what to do with a batch: write it
straight to a socket, buffer it within a fixed bound, or mark itself lagged and
drop it (a lagged subscriber catches up from the store by `seq`, see
`Engine.follow`). Nothing here grows without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from .core.events import Event


class Subscriber(Protocol):
    def deliver(self, events: Sequence[Event]) -> None:
        """Take a batch of events of one topic, in seq order. Never blocks, never raises."""


@dataclass(frozen=True, slots=True)
class HubStatistics:
    topics: int
    subscribers: int
    published: int


class Hub:
    def __init__(self) -> None:
        # dict-as-ordered-set: O(1) unsubscribe, stable delivery order.
        self._topics: dict[str, dict[Subscriber, None]] = {}
        self._published = 0

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self._topics.setdefault(topic, {})[subscriber] = None

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(subscriber, None)
            if not subs:
                del self._topics[topic]

    @contextmanager
    def subscription(self, topic: str, subscriber: Subscriber) -> Iterator[None]:
        self.subscribe(topic, subscriber)
        try:
            yield
        finally:
            self.unsubscribe(topic, subscriber)

    def publish(self, topic: str, events: Sequence[Event]) -> None:
        if not events:
            return
        self._published += len(events)
        subs = self._topics.get(topic)
        if not subs:
            return
        for subscriber in tuple(subs):
            subscriber.deliver(events)

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            topics=len(self._topics),
            subscribers=sum(len(s) for s in self._topics.values()),
            published=self._published,
        )


# How many events an in-process subscriber may hold before it is lagged: a few
# read chunks of a chatty job. Past it, the reader catches up from the store.
QUEUE_SUBSCRIBER_CAPACITY = 4096


class QueueSubscriber:
    """A bounded buffer for in-process consumers (the ASGI fallback, tests).

    Past `capacity` buffered events it drops everything and reports `lagged`,
    so the consumer re-reads from the store by seq; memory stays bounded.
    """

    def __init__(self, capacity: int = QUEUE_SUBSCRIBER_CAPACITY) -> None:
        self._capacity = capacity
        self._buffer: deque[Event] = deque()
        self._wakeup = trio.Event()
        self.lagged = False

    def deliver(self, events: Sequence[Event]) -> None:
        if self.lagged:
            return
        if len(self._buffer) + len(events) > self._capacity:
            self.lagged = True
            self._buffer.clear()
        else:
            self._buffer.extend(events)
        self._wakeup.set()

    def drain_nowait(self) -> list[Event]:
        out = list(self._buffer)
        self._buffer.clear()
        return out

    def reset(self) -> None:
        """Leave the lagged state (after the consumer caught up from the store)."""
        self.lagged = False
        self._buffer.clear()

    async def wait_ready(self) -> None:
        """Wait until there is something to drain or the subscriber lagged."""
        while not self._buffer and not self.lagged:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
