"""The "async" dialect (specs/dialect-async-kind-ws.md): one job's state over WebSocket.

`/v1/async/{kind}/{id}/ws`, where `kind` is a template's `kind`. Rules: the
opening is decided before the upgrade, as plain HTTP answers with a JSON body
`{"error": {"code", "message"}}`: 401 for a missing or bad token (Bearer, or
`?token=` for browsers), 400 for a bad `interval_ms` or `close_on_terminal`,
404 `async_job_not_found_or_not_owned` alike for an unknown kind, a missing
job, a job of another kind and someone else's job; else 101. Every message is
`{"type", "data"}`. The session keeps the job's latest state itself (the
looked-up record, folded forward with `core.job.apply` over the watched
topic's events) and renders in the session: `job.snapshot` at once and on
`refresh`; `job.updated` when the payload changed, at most one per interval
(the first change after a quiet interval goes at once, later ones wait for the
session's timer and go as one, carrying the latest state, the final one
included); `job.deleted` then close 1000; `pong` for `ping`; `error` for a bad
client message, the socket staying open. With `close_on_terminal` the socket
closes 1000 right after the first message that carries a terminal state.
Payload fields are only what the server knows (see `payload`); the choices
the spec leaves open are written down in docs/dialects/async.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..auth import Principal, bearer
from ..core import events as ev
from ..core import jsontext
from ..core.ids import JobId, parse_job_id
from ..core.job import Job, apply
from ..core.states import InvalidTransition, Status
from ..core.timefmt import iso_ms
from ..core.topics import JobTopic
from . import (
    Accept,
    Action,
    Authenticate,
    BaseSession,
    Close,
    LookUp,
    Need,
    ReadEvents,
    Refuse,
    SessionEnv,
    StreamRequest,
    Timer,
    Watch,
    WatchLines,
    dumps,
)

DIALECT = "async"
DEFAULT_INTERVAL_MS = 2500
MAX_INTERVAL_MS = 10_000
# The longest `interval_ms` text read as a number (anything longer is clamped).
MAX_DIGITS = 9
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
# The job's first events, read at the opening to find its current run's first
# output line (latency_ms); when it is not among them, latency_ms is left out.
# Few: a line may be up to max_line_bytes, and every opening reads these.
LATENCY_SCAN = 32

STATUS_WORDS = {
    Status.QUEUED: "queued",
    Status.RUNNING: "in_progress",
    Status.SUCCEEDED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
}

NOT_FOUND = "async_job_not_found_or_not_owned"


def error_body(code: str, message: str) -> bytes:
    return dumps({"error": {"code": code, "message": message}}).encode()


UPGRADE_REQUIRED_BODY = dumps({"error": {
    "code": "websocket_upgrade_required",
    "message": "This is a WebSocket endpoint: send a GET with Upgrade: websocket."}})

_UNAUTHENTICATED = Refuse(401, error_body("unauthorized", "Missing, invalid or expired token."),
                          headers=(("WWW-Authenticate", "Bearer"),))
_NOT_FOUND = Refuse(404, error_body(NOT_FOUND, "Async job not found or not owned by the caller."))


def envelope(type_: str, data: Mapping[str, Any]) -> str:
    return dumps({"type": type_, "data": data})


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def payload(job: Job, *, first_output_at: float | None) -> dict[str, Any]:
    """The job as this dialect shows it: only what the server recorded or measured."""
    data: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "template": job.template,
        "status": STATUS_WORDS[job.status],
        "request_id": job.correlation_id,
        "created_at": iso_ms(job.created_at),
        "started_at": iso_ms(job.started_at),
        "completed_at": iso_ms(job.completed_at),
    }
    result = job.result
    if result is not None:
        native = result.get("native_id")
        if isinstance(native, str) and native:
            data["native_id"] = native
    if job.progress is not None:
        data["progress"] = dict(job.progress)
    if job.steps:
        data["steps"] = [{"name": s.name, "status": s.status, "progress_pct": s.progress_pct}
                         for s in job.steps]
    if result is not None:
        data["result"] = dict(result)
    if first_output_at is not None:
        data["latency_ms"] = _ms(first_output_at - job.created_at)
    if job.status.terminal and job.completed_at is not None:
        total = _ms(job.completed_at - job.created_at)
        data["total_duration_ms"] = total
        data["duration_ms"] = total
        if first_output_at is not None:
            data["generation_ms"] = _ms(job.completed_at - first_output_at)
        data["finalized_at"] = iso_ms(job.completed_at)
    if job.status is Status.FAILED:
        data["upstream_error"] = upstream_error(job)
    return data


def upstream_error(job: Job) -> dict[str, Any]:
    """A failed job's error in the spec's `upstream_error` shape: the code the job
    reported last (else the outcome), the server's message, the exit code."""
    reported = job.errors[-1] if job.errors else None
    code = reported.get("code") if reported is not None else None
    error: dict[str, Any] = {"code": code if isinstance(code, str) else job.outcome or "failed",
                             "message": job.error_message or "The job failed."}
    if job.log_snippet:
        error["description"] = job.log_snippet
    if job.exit_code is not None:
        error["status"] = job.exit_code
    return error


def parse_interval(raw: str | None, *, minimum: int) -> int | None:
    """Milliseconds: the default when absent, clamped into [minimum, MAX]; None when
    not a non-negative decimal integer."""
    if raw is None:
        return max(minimum, min(DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS))
    if not raw or not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw) if len(raw) <= MAX_DIGITS else MAX_INTERVAL_MS
    return max(minimum, min(value, MAX_INTERVAL_MS))


def parse_flag(raw: str | None, *, default: bool) -> bool | None:
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def first_output(events: Sequence[ev.Event], job: Job) -> tuple[float | None, bool]:
    """(ts of the current run's first output line, whether that is known) from the
    job's first events: the run is the one that started at `job.started_at`."""
    in_run = False
    for event in events:
        if isinstance(event, ev.Started) and event.ts == job.started_at:
            in_run = True
        elif in_run and isinstance(event, ev.Log):
            return event.ts, True
        elif in_run and isinstance(event, (ev.Bounce, ev.Queued)):
            return None, False  # a later run: not the one recorded
    complete = len(events) < LATENCY_SCAN
    return None, in_run and complete


class AsyncJobSession(BaseSession):
    """One client of one job: the opening, then snapshots and coalesced updates."""

    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.env = env
        self.kind = request.params.get("kind", "")
        self.job_id: JobId | None = parse_job_id(request.params.get("job_id", ""))
        self.token = bearer(request.headers.get("authorization", "")) or \
            request.query.get("token") or None
        self.interval_ms = parse_interval(request.query.get("interval_ms"),
                                          minimum=env.config.async_min_interval_ms)
        self.close_on_terminal = parse_flag(request.query.get("close_on_terminal"), default=True)
        self.job: Job | None = None
        self.first_output_at: float | None = None
        # Whether a first output line of the current run would be its first.
        self.watching_output = False
        self.lines_watched = False  # whether the watch gives output lines
        self.sent: dict[str, Any] | None = None  # the payload the client has now
        self.cooling = False  # a job.updated went out less than an interval ago
        self.closed = False

    # ---- the opening -----------------------------------------------------

    def open(self) -> Sequence[Action]:
        if self.token is None:
            return (_UNAUTHENTICATED,)
        return (Authenticate(self.token),)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if not isinstance(result, Principal):
                return (_UNAUTHENTICATED,)
            if self.interval_ms is None:
                return (Refuse(400, error_body(
                    "invalid_interval_ms", "interval_ms must be a whole number of milliseconds "
                    f"(clamped to {self.env.config.async_min_interval_ms}..{MAX_INTERVAL_MS})."
                )),)
            if self.close_on_terminal is None:
                return (Refuse(400, error_body(
                    "invalid_close_on_terminal",
                    "close_on_terminal must be true or false (also 1/0, yes/no, on/off).")),)
            if self.job_id is None or not self._known_kind():
                return (_NOT_FOUND,)
            return (LookUp(self.job_id, result),)
        if isinstance(need, LookUp):
            job = result if isinstance(result, Job) else None
            if job is None or job.kind != self.kind:
                return (_NOT_FOUND,)
            self.job = job
            if job.started_at is not None and job.status is not Status.QUEUED:
                return (ReadEvents(job.id, 0, LATENCY_SCAN),)
            self.watching_output = True
            return self._accept()
        if isinstance(need, ReadEvents) and self.job is not None:
            self.first_output_at, known = first_output(
                result if isinstance(result, list) else [], self.job)
            self.watching_output = (known and self.first_output_at is None
                                    and not self.job.status.terminal)
            return self._accept()
        return ()

    def _known_kind(self) -> bool:
        return any(t.kind == self.kind for t in self.env.config.templates.values())

    def _accept(self) -> Sequence[Action]:
        job = self.job
        assert job is not None
        assert self.interval_ms is not None
        accept = Accept((("X-Interval-Ms", str(self.interval_ms)),))
        out: list[Action] = [accept, *self._send("job.snapshot")]
        if not self.closed:
            self.lines_watched = self.watching_output
            out.append(Watch(JobTopic(job.id), job.last_seq, lines=self.lines_watched))
        return out

    # ---- the open socket -------------------------------------------------

    def on_events(self, topic: JobTopic, events: Sequence[ev.Event]) -> Sequence[Action]:
        job = self.job
        if job is None or self.closed:
            return ()
        changed = False  # output lines change nothing but the first one's latency
        for event in events:
            if type(event) is ev.Log:
                if self.watching_output and job.status is Status.RUNNING:
                    self.first_output_at = event.ts
                    self.watching_output = False
                    changed = True
                continue
            if isinstance(event, ev.Deleted):
                self.closed = True
                return (envelope("job.deleted", {"id": job.id, "kind": job.kind,
                                                 "deleted_at": iso_ms(event.ts)}),
                        Close(1000, "job deleted"))
            if isinstance(event, ev.Started) and job.status is Status.QUEUED:
                self.first_output_at = None  # a new run: its own first line
                self.watching_output = True
            try:
                job = apply(job, event)
            except InvalidTransition:
                continue  # (never, for the job's own events in order)
            changed = True
        self.job = job
        out: list[Action] = []
        if changed and not self.cooling and self._current() != self.sent:
            out.extend(self._update())
        if self.watching_output != self.lines_watched and not self.closed:
            # Output lines only while waiting for the run's first one.
            self.lines_watched = self.watching_output
            out.append(WatchLines(topic, self.lines_watched))
        return out

    def on_tick(self, now: float) -> Sequence[Action]:
        self.cooling = False
        if self.closed or self._current() == self.sent:
            return ()
        return self._update()

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        if self.closed:
            return ()
        kind = _message_type(message)
        if kind == "ping":
            return (envelope("pong", {"ts": iso_ms(self.env.now())}),)
        if kind == "refresh":
            return self._send("job.snapshot")
        if kind is None:
            return (self._error("invalid_message", 'Expected JSON like {"type": "ping"} '
                                '(or "ping" / "refresh").'),)
        return (self._error("unknown_message_type",
                            f"Unknown message type {kind[:64]!r}: use ping or refresh."),)

    def _error(self, code: str, text: str) -> str:
        return envelope("error", {"code": code, "message": text})

    # ---- what goes out ---------------------------------------------------

    def _current(self) -> dict[str, Any]:
        assert self.job is not None
        return payload(self.job, first_output_at=self.first_output_at)

    def _update(self) -> Sequence[Action]:
        """A job.updated now, and no other until the interval has passed."""
        assert self.interval_ms is not None
        out = self._send("job.updated")
        if not self.closed:
            self.cooling = True
            out.append(Timer(self.interval_ms / 1000))
        return out

    def _send(self, type_: str) -> list[Action]:
        data = self._current()
        self.sent = data
        out: list[Action] = [envelope(type_, data)]
        job = self.job
        assert job is not None
        if self.close_on_terminal and job.status.terminal:
            self.closed = True
            out.append(Close(1000, "job finished"))
        return out


def _message_type(message: str | bytes) -> str | None:
    """The type a client message names, or None when it is not one."""
    if isinstance(message, bytes):
        return None
    text = message.strip()
    if text in ("ping", "refresh"):
        return text
    try:
        data = jsontext.loads(text)
    except ValueError:
        return None
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        type_: str = data["type"]
        return type_
    return None
