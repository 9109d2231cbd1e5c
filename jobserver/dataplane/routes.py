"""The stream routes: which requests the data plane serves, and with which session.

Rules: a route is a row of (name, transport, path pattern, session class); the
one generic opener is `DataPlane.open_session`. Adding a dialect is writing a
session in dialects/ and adding a row to `DEFAULT_ROUTES`. Matching is by path
and transport only: every WebSocket upgrade is the data plane's (an unknown
path gets a 404 here, never hypercorn's deflate), and a plain request on a
WebSocket path gets 426 (or what the route's `plain` answer says).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..dialects import Session, SessionEnv, StreamRequest
from ..dialects.async_jobs import UPGRADE_REQUIRED_BODY, AsyncJobSession
from ..dialects.jobs import JobsEventsSession
from ..dialects.live import LiveSession
from ..dialects.logs import LogsSession
from ..dialects.multiplex import MultiplexSession
from ..dialects.native import NativeEventsSession, NativeJobsSession

Transport = Literal["ws", "sse"]
SessionFactory = Callable[[StreamRequest, SessionEnv], Session]


@dataclass(frozen=True, slots=True)
class Answer:
    """Not a stream, but the data plane's to answer: `status` with these headers."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"


UPGRADE_REQUIRED = Answer(426, "This is a WebSocket endpoint.", (("Upgrade", "websocket"),))
ASYNC_UPGRADE_REQUIRED = Answer(426, UPGRADE_REQUIRED_BODY, (("Upgrade", "websocket"),),
                                "application/json")


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    transport: Transport
    pattern: re.Pattern[str]
    session: SessionFactory
    # A WebSocket route's answer to a request without the upgrade.
    plain: Answer = UPGRADE_REQUIRED

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def classify(self, method: str, path: str, websocket: bool) -> Match | Answer | None:
        """A stream route, an answer of the data plane's, or None (hypercorn's)."""
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.transport == "ws":
                if not websocket:
                    return route.plain
                if method != "GET":
                    return Answer(405, "Method Not Allowed", (("Allow", "GET"),))
                return Match(route, params)
            if method == "GET" and not websocket:
                return Match(route, params)
        if websocket:
            return Answer(404, "No WebSocket endpoint here.")
        return None


_SEGMENT = r"[^/]+"

DEFAULT_ROUTES = RouteTable((
    Route("logs", "ws", re.compile(rf"/api/v1/ws/jobs/(?P<job_id>{_SEGMENT})/logs"), LogsSession),
    Route("native-events", "sse", re.compile(rf"/api/v1/jobs/(?P<job_id>{_SEGMENT})/stream"),
          NativeEventsSession),
    Route("native-jobs-events", "sse", re.compile(r"/api/v1/events"), NativeJobsSession),
    Route("jobs-events", "sse", re.compile(rf"/api/jobs/(?P<job_id>{_SEGMENT})/events"),
          JobsEventsSession),
    Route("async", "ws", re.compile(rf"/v1/async/(?P<kind>{_SEGMENT})/(?P<job_id>{_SEGMENT})/ws"),
          AsyncJobSession, plain=ASYNC_UPGRADE_REQUIRED),
    Route("multiplex", "ws", re.compile(r"/ws"), MultiplexSession),
    Route("live", "ws", re.compile(r"/api/2/jobs/live"), LiveSession),
))
