"""The "jobs" dialect (specs/dialect-jobs-sse.md), rendered from the one model.

Rules: pure functions of the job record and its events, no I/O. A job's
`jobId` is its UUID (the spec's `J-...` is a placeholder; `J-<uuid>` is
accepted on the way in). Statuses are PascalCase: Queued, Running, Succeeded,
Failed, Canceled (one L: the spelling of the dialect's original client's types,
in the document, in job-failed and job-cancelled, and as the error code alike).
Times are ISO 8601 UTC whole seconds with `Z`, as the spec's examples show.
Words shown to a person (messages, remediations) are a person's, never an API
call. Choices the spec leaves open are in docs/dialects/jobs.md.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.jobs_views import (
    CANCELED,
    STATUS_NAMES,
    cancelled_error,
    error_view,
    failed_error,
    parse_jobs_id,
    problem,
    result_output,
)
from ..auth import Principal, anonymous, bearer
from ..core import events as ev
from ..core.job import Job
from ..core.states import Status
from ..core.timefmt import iso_s
from ..core.topics import JobTopic
from ..errors import Unauthenticated
from . import (
    Accept,
    Action,
    Authenticate,
    BaseSession,
    Close,
    LookUp,
    Message,
    Need,
    ReadEvents,
    Refuse,
    Rendered,
    SessionEnv,
    SseEvent,
    StreamRequest,
    Subscribe,
    dumps,
    json_string,
)

DIALECT = "jobs"
# Event names a client may listen for; the stream ends after a terminal one
# (job-failed ends a cancelled job's stream too, after job-cancelled).
TERMINAL_EVENTS = ("job-completed", "job-failed")
# A log line's severity as the original server guessed it from the text.
_ERROR_WORD = re.compile("error", re.IGNORECASE)
_WARNING_WORD = re.compile("warn", re.IGNORECASE)


# One job event can make several SSE events (the first Started makes job-status
# and step-status). The last of them carries `id: SEQ`, the ones before it
# `id: SEQ.K` (K from 0), so a Last-Event-ID names exactly what was seen.


@dataclass(frozen=True, slots=True)
class Cursor:
    """What a client has seen: every SSE event up to `seq`, or of `seq` the first `seen`."""

    seq: int = 0
    seen: int | None = None  # None: all of seq's events

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """From a Last-Event-ID; anything unreadable means "from the start"."""
        seq, dot, sub = (text or "").strip().partition(".")
        digits = (seq + sub).isascii() and seq.isdigit() and len(seq) <= 18
        if not digits or (dot and (not sub.isdigit() or len(sub) > 4)):
            return cls()
        return cls(int(seq), int(sub) + 1 if dot else None)


class JobsRenderer:
    """One job's events as the dialect's SSE messages; shared by all its followers.

    Deterministic in the job's history, so every follower gets the same bytes
    for the same seq. What the spec's events need that one event lacks is
    state: whether the job-status Running was sent since the job was (re)queued,
    the errors so far (job-failed lists them) and the last result (job-completed
    shows its output). A renderer made from the job record (`for_job`) is
    placed anywhere in the history by `after(event at the cursor)`, exactly:
    the errors are the record's plus those rendered after the record's last
    seq, the result is the record's until a Result is rendered, and "running"
    follows from the one event (only Queued, Bounce and the Skipped marks of a
    resumed attempt's first steps come before its first process starts).
    Progress or errors without a step are the job's `kind`'s.
    """

    __slots__ = ("_base_errors", "_base_seq", "_log_head", "_log_stamp", "_pre_start_skips",
                 "correlation_id", "done",
                 "errors", "kind", "result", "running")

    @property
    def key(self) -> str:
        return DIALECT

    def __init__(self, *, correlation_id: str | None, kind: str,
                 result: Mapping[str, Any] | None = None,
                 errors: tuple[Mapping[str, Any], ...] = (), errors_seq: int = 0,
                 pre_start_skips: frozenset[str] = frozenset()) -> None:
        self.correlation_id = correlation_id
        self.kind = kind
        self.result = result
        self._base_errors = tuple(error_view(e) for e in errors)
        self._base_seq = errors_seq
        self._pre_start_skips = pre_start_skips
        self.errors: list[dict[str, Any]] = []  # reported after the record's last seq
        self.running = False
        self.done = False
        self._log_head = ""  # '{"jobId":"...","message":' once known
        self._log_stamp: tuple[float, str] = (-1.0, "")  # lines of one read share a ts

    @classmethod
    def for_job(cls, job: Job) -> JobsRenderer:
        return cls(correlation_id=job.correlation_id, kind=job.kind, result=job.result,
                   errors=job.errors, errors_seq=job.last_seq,
                   pre_start_skips=frozenset(s.name for s in job.steps[:job.resume_from]))

    def after(self, event: ev.Event | None) -> JobsRenderer:
        """A copy in the state right after `event` (None: before the first event)."""
        twin = JobsRenderer(correlation_id=self.correlation_id, kind=self.kind,
                            result=self.result, errors=self._base_errors,
                            errors_seq=self._base_seq, pre_start_skips=self._pre_start_skips)
        match event:
            case None | ev.Queued() | ev.Bounce():
                twin.running = False
            case ev.Step(status="Skipped", name=name) if name in self._pre_start_skips:
                twin.running = False
            case ev.Finished() | ev.Deleted():
                twin.done = True
            case _:
                twin.running = True
        return twin

    def advance(self, event: ev.Event) -> None:
        self.render(event)

    def render(self, event: ev.Event) -> Rendered:
        """The messages for `event`; `end` (and `done`) after the job's last one."""
        if type(event) is ev.Log:
            assert isinstance(event, ev.Log)
            return Rendered((SseEvent(data=self.log_json(event), event="job-log",
                                      id=str(event.seq)),))
        out = self._render(event)
        last = len(out) - 1
        messages = tuple(
            SseEvent(data=dumps({**data, "correlationId": self.correlation_id}), event=name,
                     id=str(event.seq) if k == last else f"{event.seq}.{k}")
            for k, (name, data) in enumerate(out))
        return Rendered(messages, end=self.done)

    def log_json(self, event: ev.Log) -> str:
        """A job-log event's data, `dumps({**log_data(...), "correlationId": ...})`
        byte for byte, built by hand: it is the one event made per line of output."""
        head = self._log_head
        if not head:
            head = self._log_head = f'{{"jobId":{json_string(event.job_id)},"message":'
        ts, stamp = self._log_stamp
        if ts != event.ts:
            stamp = dumps(iso_s(event.ts))
            self._log_stamp = (event.ts, stamp)
        line = event.line
        return (f'{head}{json_string(line)},"stream":{json_string(event.stream)},'
                f'"severity":"{severity_of(line)}","timestamp":{stamp},'
                f'"correlationId":{dumps(self.correlation_id)}}}')

    def _render(self, event: ev.Event) -> list[tuple[str, dict[str, Any]]]:
        match event:
            case ev.Queued() | ev.Bounce():
                self.running = False
                return [("job-status", {"status": "Queued"})]
            case ev.Started(step=step):
                out: list[tuple[str, dict[str, Any]]] = []
                if not self.running:
                    self.running = True
                    out.append(("job-status", {"status": "Running"}))
                if step is not None:
                    out.append(("step-status", {"step": step, "status": "Running"}))
                return out
            case ev.Progress(step=step, pct=pct):
                return [("step-progress", {"step": step or self.kind,
                                           "progressPct": round(pct)})]
            case ev.Step(name=name, status=status):
                return [("step-status", {"step": name, "status": status})]
            case ev.Result(data=data):
                self.result = data
            case ev.Error():
                error = {"code": event.code, "message": event.message,
                         "remediation": event.remediation}
                if event.seq > self._base_seq:
                    self.errors.append(error)
                return [("step-error", {"step": event.step or self.kind, **error})]
            case ev.Warning(message=message):
                return [("warning", {"message": message})]
            case ev.Finished(status=status):
                self.done = True
                if status == Status.SUCCEEDED:
                    return [("job-completed", {"status": "Succeeded",
                                               "output": result_output(self.result)})]
                errors = self._final_errors(event)
                failed = ("job-failed", {"status": STATUS_NAMES[Status(status)],
                                         "errors": errors,
                                         "errorMessage": errors[-1]["message"]})
                if status != Status.CANCELLED:
                    return [failed]
                return [("job-cancelled", {"status": CANCELED, "jobId": event.job_id,
                                           "message": errors[-1]["message"]}), failed]
            case ev.Deleted():
                self.done = True
        return []

    def _final_errors(self, event: ev.Finished) -> list[dict[str, Any]]:
        errors = [*self._base_errors, *self.errors]
        if event.status == Status.CANCELLED:
            return [*errors, cancelled_error(event.message)]
        return errors or [failed_error(event.message)]


def log_data(job_id: str, ts: float, stream: str, line: str) -> dict[str, Any]:
    """A job-log event's data (`JobsRenderer.log_json` writes it by hand)."""
    return {"jobId": job_id, "message": line, "stream": stream, "severity": severity_of(line),
            "timestamp": iso_s(ts)}


def severity_of(line: str) -> str:
    """The original server's guess from the text: "error", else "warn", else info."""
    if _ERROR_WORD.search(line):
        return "error"
    return "warning" if _WARNING_WORD.search(line) else "info"


def resume(renderer: JobsRenderer, cursor: Cursor, events: Sequence[ev.Event]
           ) -> tuple[JobsRenderer, tuple[Message, ...]]:
    """Place `renderer` at `cursor`: the renderer to follow from `cursor.seq` on, and
    what to send first (the rest of seq's messages, for a `SEQ.K` cursor). `events`
    are the stored events with seq > cursor.seq - 2 (at most two are used)."""
    at = next((e for e in events if e.seq == cursor.seq), None)
    if cursor.seen is None:
        return renderer.after(at), ()
    placed = renderer.after(next((e for e in events if e.seq == cursor.seq - 1), None))
    messages = placed.render(at).messages if at is not None else ()
    return placed, messages[cursor.seen:]


def seen_the_end(job: Job, cursor: Cursor) -> bool:
    """The client saw the job's terminal event: answer 204, which stops EventSource
    reconnecting, instead of an empty stream it would reopen forever."""
    return job.status.terminal and cursor.seq >= job.last_seq and cursor.seen is None


# X-Correlation-ID values taken as they are (app.py checks them the same way).
_CORRELATION = re.compile(r"^[\x21-\x7e]{1,128}$")


class JobsEventsSession(BaseSession):
    """GET /api/jobs/{jobId}/events: one client's side of the stream.

    Its opening checks the token (the Bearer header, `?token=`, or an anonymous
    loopback peer), looks the job up, and for a `SEQ.K` cursor reads the events
    around it; then it answers a problem (401, 404) before any stream, 204 when
    the client has seen the end, or the stream: the rest of a half-seen seq,
    then the job's events after the cursor, rendered by the shared
    `JobsRenderer`, ending after job-completed/job-failed.
    """

    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        headers, query = request.headers, request.query
        config = env.config
        self.bearer = bearer(headers.get("authorization", ""))
        self.query_token = query.get("token")
        self.anonymous = anonymous(enabled=config.anonymous_loopback,
                                   user=config.anonymous_user, peer=request.peer)
        self.job_id = parse_jobs_id(request.params.get("job_id", ""))
        self.cursor = Cursor.parse(headers.get("last-event-id"))
        given = headers.get("x-correlation-id", "")
        self.request_correlation = given if _CORRELATION.match(given) else None
        self.correlation_id = self.request_correlation or uuid.uuid4().hex
        self.trace_id = secrets.token_hex(7).upper()
        self._job: Job | None = None

    def open(self) -> Sequence[Action]:
        token = self.bearer if self.bearer is not None else self.query_token
        if token is not None:
            return (Authenticate(token),)
        if self.anonymous is None:
            return self._unauthenticated(Unauthenticated("missing bearer token",
                                                         code="missing_token"))
        return self._look_up(self.anonymous)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if isinstance(result, Principal):
                return self._look_up(result)
            assert isinstance(result, Unauthenticated)
            return self._unauthenticated(result)
        if isinstance(need, LookUp):
            job = self._job = result if isinstance(result, Job) else None
            if job is not None and self.cursor.seen is not None:  # a half-seen seq
                return (ReadEvents(job.id, max(self.cursor.seq - 2, 0), 2),)
            return self._opening(job, ())
        if isinstance(need, ReadEvents):
            assert isinstance(result, list)
            return self._opening(self._job, result)
        return ()

    def _look_up(self, principal: Principal) -> Sequence[Action]:
        if self.job_id is None:
            return self._opening(None, ())
        return (LookUp(self.job_id, principal),)

    def _unauthenticated(self, exc: Unauthenticated) -> Sequence[Action]:
        return (self._problem(401, "Unauthorized", exc.message, exc.code,
                              (("WWW-Authenticate", "Bearer"),)),)

    def _opening(self, job: Job | None, around: Sequence[ev.Event]) -> Sequence[Action]:
        """The answer, once the job is looked up (None: missing, malformed or not
        the principal's). `around`: stored events with seq > cursor.seq - 2."""
        if job is None:
            return (self._problem(404, "Not Found", "job not found", "job_not_found"),)
        correlation = self.request_correlation or job.correlation_id or self.correlation_id
        headers = (("X-Correlation-ID", correlation),)
        if self.cursor.seq > job.last_seq:  # from the future (stale or made up): from now on
            self.cursor = Cursor(job.last_seq)
        if seen_the_end(job, self.cursor):
            return (Refuse(204, b"", "", headers),)
        renderer, first = resume(JobsRenderer.for_job(job), self.cursor, around)
        if renderer.done:
            return (Accept(headers), *first, Close())
        return (Accept(headers), *first,
                Subscribe(JobTopic(job.id), self.cursor.seq, renderer))

    def _problem(self, status: int, title: str, detail: str, code: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> Refuse:
        body = problem(status, title, detail, correlation_id=self.correlation_id,
                       trace_id=self.trace_id, kind=code)
        return Refuse(status, dumps(body).encode(), "application/problem+json",
                      (*headers, ("X-Correlation-ID", self.correlation_id)))
