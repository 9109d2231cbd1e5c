"""The native event stream: a job's events as Server-Sent Events.

`GET /api/v1/jobs/{id}/stream`: `id:` is the event's seq, `event:` its type,
`data:` the same JSON as one item of `GET /api/v1/jobs/{id}/events`. History
first (from `Last-Event-ID`, else `?after=`, else the beginning), then live;
the body ends after `finished` or `deleted`. Auth: `Authorization: Bearer` or
`?token=`; a bad token is 401, someone else's or an unknown job 404, and a
finished job with nothing after the client's cursor 204 (which tells an
EventSource to stop reconnecting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..auth import Principal, bearer
from ..core import events as ev
from ..core.ids import JobId, parse_job_id
from ..core.job import Job
from ..core.timefmt import iso_ms
from ..core.topics import JobTopic
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


def event_view(event: ev.Event) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.TYPE, "ts": iso_ms(event.ts), **ev.to_data(event)}


class NativeRenderer:
    """Stateless: every event is one SSE event."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return DIALECT

    def render(self, event: ev.Event) -> Rendered:
        sse = SseEvent(data=_dumps(event_view(event)), event=event.TYPE, id=str(event.seq))
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
