"""The "logs" dialect (specs/dialect-logs-ws.md): one job's logs over WebSocket.

Rules: every server message is `{"type", "payload"}` with type `system`, `log`,
`info`, `status` or `error`; times are ISO 8601 UTC with milliseconds and `Z`.
The session sends `system` first; a bad token, a malformed or unknown id and
someone else's job all look the same: `error` "Job not found or access denied."
then close 1008. Then the job's history from its first event (what its
original client, a hook that shows only what arrives on the socket, needs),
then its live events; the connection closes 1000 right after the terminal
`status`, so a finished job gets its whole log, its final `status` and the
close. Opt-in, beyond the spec: `?since=SEQ` (or `?replay=1`, i.e. since 0)
starts after SEQ instead, and then every message carries the event's `seq`
next to `type`. Choices the spec leaves open are written down in
docs/dialects/logs.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..auth import Principal
from ..core import events as ev
from ..core.ids import JobId, parse_job_id
from ..core.job import Job
from ..core.states import CANCELLED_EXIT_CODE, Status
from ..core.timefmt import iso_ms
from ..core.topics import JobTopic, Topic
from . import (
    NOTHING,
    Accept,
    Action,
    Authenticate,
    BaseSession,
    Close,
    LookUp,
    Need,
    Rendered,
    SessionEnv,
    StreamRequest,
    Subscribe,
    dumps,
    json_string,
)

DIALECT = "logs"
ACCESS_DENIED = "Job not found or access denied."
BAD_SINCE = "Invalid 'since': expected a non-negative integer."
STREAMING_STARTED = "Log streaming started."
CANCELLED_MESSAGE = "Job cancelled by user request."
MESSAGE_TOO_BIG = "Message too big."
PROTOCOL_ERROR = "Protocol error."
# The largest `since` accepted (seq numbers are far below it).
MAX_SINCE = 2**62
TRUE_WORDS = ("1", "true", "yes", "on")


def message(type_: str, payload: dict[str, Any], seq: int | None = None) -> str:
    if seq is None:
        return dumps({"type": type_, "payload": payload})
    return dumps({"type": type_, "seq": seq, "payload": payload})


def error_message(text: str, *, now: float) -> str:
    return message("error", {"message": text, "ts": iso_ms(now)})


def status_payload(status: str, *, job_id: str, ts: float | None, exit_code: int | None,
                   message: str | None, log_snippet: str | None) -> dict[str, Any]:
    """The payload of a terminal `status` message, from an event or a job record."""
    stamp = iso_ms(ts)
    payload: dict[str, Any] = {"status": status, "ts": stamp, "job_id": job_id,
                               "completed_at": stamp}
    if status == Status.SUCCEEDED:
        payload.update(exit_code=exit_code if exit_code is not None else 0,
                       result_message=message)
    elif status == Status.FAILED:
        payload.update(exit_code=exit_code, error_message=message, log_snippet=log_snippet)
    else:
        payload.update(exit_code=CANCELLED_EXIT_CODE,
                       result_message=message or CANCELLED_MESSAGE)
    return payload


class LogsRenderer:
    """Renders one job's events as logs-dialect messages (shared by its subscribers).

    Its one piece of state is whether the job is RUNNING, so that a `Started`
    of a later pipeline step is an `info` but not another RUNNING `status`.
    Inferred from a single event (`after`): RUNNING after `Started` and after
    anything a running job does (log, progress, step, result, error, warning,
    spawned); not after `Queued`, `Bounce`, `Finished`, or a step `Skipped`
    (skips are recorded before a retried job's first process starts).
    """

    __slots__ = ("_label", "_last_head", "_running", "job_id", "with_seq")

    def __init__(self, job_id: JobId, label: str, *, with_seq: bool, running: bool) -> None:
        self.job_id = job_id
        self.with_seq = with_seq
        self._label = label
        self._running = running
        # Log lines of one read share a timestamp: format it once.
        self._last_head: tuple[float, str, str] | None = None

    @property
    def key(self) -> tuple[str, bool]:
        return (DIALECT, self.with_seq)

    @property
    def running(self) -> bool:
        return self._running

    def after(self, event: ev.Event | None) -> LogsRenderer:
        return LogsRenderer(self.job_id, self._label, with_seq=self.with_seq,
                            running=event is not None and running_after(event))

    def advance(self, event: ev.Event) -> None:
        self._running = running_next(self._running, event)

    def log_message(self, event: ev.Log, seq: int | None) -> str:
        """`message("log", {ts, stream, message}, seq)`, byte for byte, built by hand:
        a log line is the one message rendered per line of output."""
        head = self._last_head
        if head is None or head[0] != event.ts or head[1] != event.stream:
            stamp = dumps(iso_ms(event.ts))
            text = f'"payload":{{"ts":{stamp},"stream":{json_string(event.stream)},"message":'
            head = self._last_head = (event.ts, event.stream, text)
        if seq is None:
            return '{"type":"log",' + head[2] + json_string(event.line) + "}}"
        return f'{{"type":"log","seq":{seq},{head[2]}{json_string(event.line)}}}}}'

    def render(self, event: ev.Event) -> Rendered:
        seq = event.seq if self.with_seq else None
        kind = type(event)
        if kind is ev.Log:
            assert isinstance(event, ev.Log)
            return Rendered((self.log_message(event, seq),))
        if isinstance(event, ev.Started):
            return self._started(event, seq)
        if isinstance(event, ev.Finished):
            self._running = False
            payload = status_payload(event.status, job_id=self.job_id, ts=event.ts,
                                     exit_code=event.exit_code, message=event.message,
                                     log_snippet=event.log_snippet)
            return Rendered((message("status", payload, seq),), end=True)
        if isinstance(event, ev.Bounce):
            self._running = False
            text = f"Job returned to the queue: {event.reason}."
            payload = {"message": text, "job_id": self.job_id, "ts": iso_ms(event.ts)}
            return Rendered((message("system", payload, seq),))
        if kind is ev.Queued:
            self._running = False
        elif kind is ev.Deleted:
            return Rendered(end=True)
        return NOTHING

    def _started(self, event: ev.Started, seq: int | None) -> Rendered:
        name = self._label if event.step is None else f"{self._label} step {event.step!r}"
        stamp = iso_ms(event.ts)
        out = [message("info", {
            "message": f"{name} process (PID: {event.pid}) started execution.",
            "ts": stamp, "pid": event.pid, "command": event.command}, seq)]
        if not self._running:
            self._running = True
            out.append(message("status", {"status": Status.RUNNING.value, "ts": stamp,
                                          "job_id": self.job_id, "started_at": stamp}, seq))
        return Rendered(tuple(out))


def running_next(running: bool, event: ev.Event) -> bool:
    """Whether the job is RUNNING after `event`, given whether it was before."""
    kind = type(event)
    if kind is ev.Started:
        return True
    if kind in (ev.Queued, ev.Bounce, ev.Finished):
        return False
    return running


def running_after(event: ev.Event) -> bool:
    """Whether the job is RUNNING right after `event` (what a renderer infers from one event)."""
    if isinstance(event, (ev.Queued, ev.Bounce, ev.Finished, ev.Deleted)):
        return False
    return not (isinstance(event, ev.Step) and event.status == "Skipped")


class LogsSession(BaseSession):
    """One logs-dialect client: checks its token, looks its job up, opens, and
    closes after the end."""

    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.env = env
        self.token = request.query.get("token") or None
        self.job_id: JobId | None = parse_job_id(request.params.get("job_id", ""))
        self.since: int | None = None
        self.bad_since = False
        raw = request.query.get("since")
        if raw is not None:
            if raw.isascii() and raw.isdigit() and int(raw) <= MAX_SINCE:
                self.since = int(raw)
            else:
                self.bad_since = True
        elif request.query.get("replay", "").lower() in TRUE_WORDS:
            self.since = 0

    def open(self) -> Sequence[Action]:
        if self.token is None or self.job_id is None:
            return self._denied()
        return (Authenticate(self.token),)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if not isinstance(result, Principal) or self.job_id is None:
                return self._denied()
            return (LookUp(self.job_id, result),)
        if isinstance(need, LookUp):
            return self._opening(result if isinstance(result, Job) else None)
        return ()

    def _denied(self) -> Sequence[Action]:
        """A bad token, id or access all look the same."""
        return (Accept(), error_message(ACCESS_DENIED, now=self.env.now()),
                Close(1008, "access denied"))

    def _opening(self, job: Job | None) -> Sequence[Action]:
        now = self.env.now()
        if job is None or job.id != self.job_id:
            return self._denied()
        if self.bad_since:
            return (Accept(), error_message(BAD_SINCE, now=now), Close(1008, "invalid since"))
        with_seq = self.since is not None
        system = message("system", {"message": STREAMING_STARTED, "job_id": job.id,
                                    "ts": iso_ms(now)})
        renderer = LogsRenderer(job.id, job.template, with_seq=with_seq,
                                running=job.status is Status.RUNNING)
        topic = JobTopic(job.id)
        # No `since`: the log so far, then live (the catch-up reads the store a
        # page at a time, so a long log streams, bounded). A finished job's
        # history ends with its final status, and the renderer ends there.
        after = 0 if self.since is None else self.since
        if after < job.last_seq:
            return (Accept(), system, Subscribe(topic, after, renderer))
        if job.status.terminal:
            return (Accept(), system, final_status(job, with_seq=with_seq), Close(1000))
        # A `since` at or past the job's last event: what comes next.
        return (Accept(), system, Subscribe(topic, job.last_seq, renderer))

    def on_end(self, topic: Topic) -> Sequence[Action]:
        return (Close(1000),)

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        # "Sent if a protocol-level error occurs before the connection closes."
        text = MESSAGE_TOO_BIG if close.code == 1009 else PROTOCOL_ERROR
        return (error_message(text, now=now),)


def final_status(job: Job, *, with_seq: bool) -> str:
    payload = status_payload(job.status.value, job_id=job.id, ts=job.completed_at,
                             exit_code=job.exit_code,
                             message=job.error_message if job.status is Status.FAILED
                             else job.result_message,
                             log_snippet=job.log_snippet)
    return message("status", payload, job.last_seq if with_seq else None)
