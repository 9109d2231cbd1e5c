"""The stream routes: which requests the data plane serves, and how each opens.

Rules: a route is a transport (`ws` or `sse`), a path pattern and an opener.
The opener does the I/O a session cannot (token check, job lookup) and asks
the session what to answer; it returns the session and its `Opening`. Adding
a dialect is adding a session in dialects/ and a row in `DEFAULT_ROUTES`.
Matching is by path and transport only: every WebSocket upgrade is the data
plane's (an unknown path gets a 404 here, never hypercorn's deflate), and
a plain request on a WebSocket path gets 426.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..core.events import Event
from ..dialects import Opening, Session, StreamRequest
from ..dialects.jobs import JobsEventsSession
from ..dialects.logs import LogsSession
from ..dialects.native import NativeEventsSession

if TYPE_CHECKING:
    from .plane import DataPlane

Transport = Literal["ws", "sse"]
Opener = Callable[["DataPlane", StreamRequest], Awaitable[tuple[Session, Opening]]]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    transport: Transport
    pattern: re.Pattern[str]
    open: Opener

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """Not a stream, but the data plane's to answer: `status` with these headers."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


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
                    return Answer(426, "This is a WebSocket endpoint.",
                                  (("Upgrade", "websocket"),))
                if method != "GET":
                    return Answer(405, "Method Not Allowed", (("Allow", "GET"),))
                return Match(route, params)
            if method == "GET" and not websocket:
                return Match(route, params)
        if websocket:
            return Answer(404, "No WebSocket endpoint here.")
        return None


async def open_logs(plane: DataPlane, request: StreamRequest) -> tuple[Session, Opening]:
    session = LogsSession(request)
    principal = plane.principal(session.token)
    job = None
    if principal is not None and session.job_id is not None:
        job = await plane.job_for(principal, session.job_id)
    return session, session.open(job, now=plane.now())


async def open_native_events(plane: DataPlane, request: StreamRequest
                             ) -> tuple[Session, Opening]:
    session = NativeEventsSession(request)
    principal = plane.principal(session.token)
    job = None
    if principal is not None and session.job_id is not None:
        job = await plane.job_for(principal, session.job_id)
    return session, session.open(job, authenticated=principal is not None)


async def open_jobs_events(plane: DataPlane, request: StreamRequest
                           ) -> tuple[Session, Opening]:
    session = JobsEventsSession(request)
    refused = session.authorize(plane.keyring, plane.config)
    if refused is not None or session.principal is None or session.job_id is None:
        return session, refused or session.open(None)
    job = await plane.job_for(session.principal, session.job_id)
    around: list[Event] = []
    if job is not None and session.cursor.seen is not None:  # a half-seen seq
        await plane.engine.store.wait_flushed()
        around = await plane.engine.store.events_after(job.id, max(session.cursor.seq - 2, 0),
                                                       limit=2)
    return session, session.open(job, around)


_SEGMENT = r"[^/]+"

DEFAULT_ROUTES = RouteTable((
    Route("logs", "ws", re.compile(rf"/api/v1/ws/jobs/(?P<job_id>{_SEGMENT})/logs"), open_logs),
    Route("native-events", "sse", re.compile(rf"/api/v1/jobs/(?P<job_id>{_SEGMENT})/stream"),
          open_native_events),
    Route("jobs-events", "sse", re.compile(rf"/api/jobs/(?P<job_id>{_SEGMENT})/events"),
          open_jobs_events),
))
