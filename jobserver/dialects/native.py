"""The native event streams, as Server-Sent Events.

`GET /api/v1/jobs/{id}/stream`: one job's events. `id:` is the event's seq,
`event:` its type, `data:` the same JSON as one item of
`GET /api/v1/jobs/{id}/events`. History first (from `Last-Event-ID`, else
`?after=`, else the beginning), then live; the body ends after `finished` or
`deleted`. Auth: `Authorization: Bearer` or `?token=`; a bad token is 401,
someone else's or an unknown job 404, and a finished job with nothing after
the client's cursor 204 (which tells an EventSource to stop reconnecting).

`GET /api/v1/events`: the events of every job the caller may see (their own;
an admin's: everyone's), output lines aside, live from the moment it opens:
`event:` the type, `data:` the event as above plus `job_id` and `owner`, no
`id:` (the topic's positions are not persisted, so there is nothing to resume
from; a client lists `GET /api/v1/jobs` after the stream opened to have the
state, then applies the events). A client too far behind has its stream
ended; it reconnects and lists again.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..auth import Principal, bearer
from ..core import events as ev
from ..core.ids import JobId, parse_job_id
from ..core.job import Job
from ..core.topics import ALL_JOBS, JobTopic, OwnerTopic, TopicEvent
from . import (
    Accept,
    Action,
    Authenticate,
    BaseSession,
    LookUp,
    Need,
    Refuse,
    Rendered,
    SessionEnv,
    SseEvent,
    StreamRequest,
    Subscribe,
)
from . import dumps as _dumps

DIALECT = "native"
MAX_CURSOR = 2**62


class NativeRenderer:
    """Stateless: every event is one SSE event."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return DIALECT

    def render(self, event: ev.Event) -> Rendered:
        sse = SseEvent(data=_dumps(ev.event_view(event)), event=event.TYPE, id=str(event.seq))
        return Rendered((sse,), end=isinstance(event, (ev.Finished, ev.Deleted)))

    def advance(self, event: ev.Event) -> None:
        pass

    def after(self, event: ev.Event | None) -> NativeRenderer:
        return self


def _problem(status: int, code: str, text: str, *, extra: tuple[tuple[str, str], ...] = ()
             ) -> Refuse:
    body = _dumps({"code": code, "message": text}).encode()
    return Refuse(status, body, "application/json", extra)


class NativeEventsSession(BaseSession):
    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.token = bearer(request.headers.get("authorization", "")) or \
            request.query.get("token") or None
        self.job_id: JobId | None = parse_job_id(request.params.get("job_id", ""))
        raw = request.headers.get("last-event-id") or request.query.get("after") or "0"
        self.after: int | None = None
        if raw.isascii() and raw.isdigit() and int(raw) <= MAX_CURSOR:
            self.after = int(raw)

    def open(self) -> Sequence[Action]:
        if self.token is None:
            return (_UNAUTHENTICATED,)
        return (Authenticate(self.token),)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if not isinstance(result, Principal):
                return (_UNAUTHENTICATED,)
            if self.job_id is None:
                return (_NOT_FOUND,)
            return (LookUp(self.job_id, result),)
        if isinstance(need, LookUp):
            return self._opening(result if isinstance(result, Job) else None)
        return ()

    def _opening(self, job: Job | None) -> Sequence[Action]:
        if job is None:
            return (_NOT_FOUND,)
        if self.after is None:
            return (_problem(422, "validation_failed", "Last-Event-ID / after must be a seq"),)
        if job.status.terminal and self.after >= job.last_seq:
            return (Refuse(204, b"", ""),)
        # A cursor past the last event (a stale or made-up one) means "from now".
        return (Accept(), Subscribe(JobTopic(job.id), min(self.after, job.last_seq),
                                    NativeRenderer()))


_UNAUTHENTICATED = _problem(401, "unauthenticated", "missing, invalid or expired token",
                            extra=(("www-authenticate", "Bearer"),))
_NOT_FOUND = _problem(404, "job_not_found", "job not found")


class NativeJobsRenderer:
    """Stateless: each job event of an owner's (or all) jobs is one SSE event."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return "native-jobs"

    def render(self, event: TopicEvent) -> Rendered:
        job_event = event.event
        data = {"job_id": job_event.job_id, **ev.event_view(job_event)}
        return Rendered((SseEvent(data=_dumps(data), event=job_event.TYPE),))

    def advance(self, event: TopicEvent) -> None:
        pass

    def after(self, event: TopicEvent | None) -> NativeJobsRenderer:
        return self


class NativeJobsSession(BaseSession):
    """GET /api/v1/events: every job event the caller may see, live."""

    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.token = bearer(request.headers.get("authorization", "")) or \
            request.query.get("token") or None

    def open(self) -> Sequence[Action]:
        if self.token is None:
            return (_UNAUTHENTICATED,)
        return (Authenticate(self.token),)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if not isinstance(result, Principal):
            return (_UNAUTHENTICATED,)
        topic = ALL_JOBS if result.is_admin else OwnerTopic(result.sub)
        return (Accept(), Subscribe(topic, None, NativeJobsRenderer()))
