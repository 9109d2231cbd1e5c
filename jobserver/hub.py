"""The hub: in-process broadcast of events by typed topic (core/topics.py).

Rules: `publish` is synchronous and never awaits a subscriber. Each subscriber
decides, in its own non-blocking `deliver`, what to do with a batch: write it
straight to a socket, buffer it within a fixed bound, or mark itself lagged and
drop it (a lagged subscriber of a job topic catches up from the store by
`seq`, see dataplane/fanout.py). Events of a job topic pass as they are; those
of an aggregate topic are numbered here (`publish_aggregate`), once for all its
subscribers, from one counter, so every aggregate topic's positions increase.
Nothing here grows without bound: a topic exists while it has subscribers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .core.events import Event
from .core.topics import SYSTEM, SystemStatus, Topic, TopicEvent


class Subscriber(Protocol):
    def deliver(self, events: Sequence[Any]) -> None:
        """Take a batch of one topic's events in its order. Never blocks, never raises."""


@dataclass(frozen=True, slots=True)
class HubStatistics:
    topics: int
    subscribers: int
    published: int


class Hub:
    def __init__(self) -> None:
        # dict-as-ordered-set: O(1) unsubscribe, stable delivery order.
        self._topics: dict[Topic, dict[Subscriber, None]] = {}
        self._published = 0
        self._position = 0  # the last position given to an aggregate topic's event

    def subscribe(self, topic: Topic, subscriber: Subscriber) -> None:
        self._topics.setdefault(topic, {})[subscriber] = None

    def unsubscribe(self, topic: Topic, subscriber: Subscriber) -> None:
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(subscriber, None)
            if not subs:
                del self._topics[topic]

    def publish(self, topic: Topic, events: Sequence[Any]) -> None:
        """Hand a batch of `topic`'s events (already numbered) to its subscribers."""
        if not events:
            return
        self._published += len(events)
        subs = self._topics.get(topic)
        if not subs:
            return
        for subscriber in tuple(subs):
            subscriber.deliver(events)

    def publish_aggregate(self, topic: Topic, events: Sequence[Event]) -> None:
        """Job events on an aggregate topic: numbered, then published (only when
        somebody listens: positions need not be contiguous, only increasing)."""
        if events and topic in self._topics:
            start = self._position
            self._position += len(events)
            self.publish(topic, [TopicEvent(seq=start + i + 1, event=e)
                                 for i, e in enumerate(events)])

    def next_position(self) -> int:
        self._position += 1
        return self._position

    def publish_system(self, status: SystemStatus) -> None:
        self.publish(SYSTEM, (status,))

    def position(self) -> int:
        """The last position given out: a subscriber joining now starts after it."""
        return self._position

    def subscriber_count(self, topic: Topic) -> int:
        return len(self._topics.get(topic, ()))

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            topics=len(self._topics),
            subscribers=sum(len(s) for s in self._topics.values()),
            published=self._published,
        )
