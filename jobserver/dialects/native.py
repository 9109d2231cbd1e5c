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

from ..core import events as ev
from ..core.ids import JobId, parse_job_id
from ..core.job import Job
from ..core.timefmt import iso_ms
from . import Accept, Action, Close, Follow, Opening, Refuse, Rendered, SseEvent, StreamRequest
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


def bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class NativeEventsSession:
    def __init__(self, request: StreamRequest) -> None:
        self.token = bearer(request.headers.get("authorization", "")) or \
            request.query.get("token") or None
        self.job_id: JobId | None = parse_job_id(request.params.get("job_id", ""))
        raw = request.headers.get("last-event-id") or request.query.get("after") or "0"
        self.after: int | None = None
        if raw.isascii() and raw.isdigit() and int(raw) <= MAX_CURSOR:
            self.after = int(raw)

    def open(self, job: Job | None, *, authenticated: bool) -> Opening:
        if not authenticated:
            return _problem(401, "unauthenticated", "missing, invalid or expired token",
                            extra=(("www-authenticate", "Bearer"),))
        if job is None:
            return _problem(404, "job_not_found", "job not found")
        if self.after is None:
            return _problem(422, "validation_failed", "Last-Event-ID / after must be a seq")
        if job.status.terminal and self.after >= job.last_seq:
            return Refuse(204, b"", "")
        # A cursor past the last event (a stale or made-up one) means "from now".
        return Accept(follow=Follow(job.id, min(self.after, job.last_seq), NativeRenderer()))

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        return ()

    def on_end(self) -> Sequence[Action]:
        return (Close(),)

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        return ()  # an event stream reads nothing from its client
