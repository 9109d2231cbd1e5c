"""Topics: what a stream can follow, each with its own monotonic sequence.

Rules: a topic is a small frozen value, hashable, the hub's key. Four kinds:

- `JobTopic(job_id)`: every event of one job; its sequence is the job's `seq`,
  persisted, so a subscriber resumes from any seq, across restarts.
- `OwnerTopic(owner)`: the job events of every job of one owner, output lines
  excepted (a client that wants lines follows the job's topic);
- `ALL_JOBS`: the same for every job (admins' view);
- `SYSTEM`: `SystemStatus` snapshots (queue depth, running count, component
  health), one each time one of them changes.

The three aggregate topics carry `TopicEvent`s (and `SystemStatus`) numbered by
the hub in publishing order: monotonic per topic within one server process,
so a subscriber dedupes and orders by them, but they are not persisted. A
subscriber of an aggregate topic starts from "now" (after a snapshot its
session reads) and one that falls too far behind is told (`on_lag`), since
there is no store to catch up from. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .events import Event
from .ids import JobId, UserId


@dataclass(frozen=True, slots=True)
class JobTopic:
    job_id: JobId


@dataclass(frozen=True, slots=True)
class OwnerTopic:
    owner: UserId


@dataclass(frozen=True, slots=True)
class AllJobsTopic:
    pass


@dataclass(frozen=True, slots=True)
class SystemTopic:
    pass


ALL_JOBS = AllJobsTopic()
SYSTEM = SystemTopic()

Topic = JobTopic | OwnerTopic | AllJobsTopic | SystemTopic


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicEvent:
    """A job's event on an aggregate topic: `seq` is the topic's position, `event`
    the job's own event (with the job's seq)."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemStatus:
    """The system topic's one kind of event: the state of the whole server."""

    seq: int
    ts: float
    queued: int
    running: int
    # component -> "up" | "down" | "degraded": only components actually checked.
    health: Mapping[str, str] = field(default_factory=dict)


class Sequenced(Protocol):
    """Anything a topic carries: it has the topic's position."""

    @property
    def seq(self) -> int: ...


def is_persisted(topic: Topic) -> bool:
    """A topic the store can replay (by seq) for a subscriber that is behind."""
    return type(topic) is JobTopic
