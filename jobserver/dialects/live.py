"""The "live" dialect (specs/dialect-live-batches.md): `/api/2/jobs/live`, a job's
progress in event batches, authorized in-band by a per-job progress JWT.

Rules: the client's first packet is `{"type": "authorize", "data": {"job_uid",
"jwt"}}`; the server answers `auth_response` and then only `event_batch`
packets (keep-alives are WebSocket pings, the transport's), each the events
that were pending when its window closed (`Batch`, `live_batch_window`).
The first batch carries the job's history (every connection subscribes from
seq 0: the spec has no cursor). An error is one packet `{"success": false,
"type": "error", "uid", "data": {code, type, message}}` with exactly the
spec's pairs, 422 `unprocessable_entity` (the packet), 403 `forbidden` (the
token, checked by auth.py's "progress" rules, or a token for another job),
404 `not_found` (no such job, or a finished one whose last event is older
than `live_stream_retention`), checked in that order, then the close
4000 + code with the type as reason. After the terminal event the socket
closes 1000. A client that sends no packet within `live_auth_timeout` is
closed 1008; once authorized, nothing it sends matters and nothing but the
transport's ping deadline drops it. Output lines are not progress and are
not sent. Choices the spec leaves open: docs/dialects/live.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from ..auth import Principal
from ..core import events as ev
from ..core import jsontext
from ..core.ids import parse_job_id
from ..core.job import Job
from ..core.states import Status
from ..core.topics import JobTopic, Topic
from ..errors import Unauthenticated
from . import (
    NOTHING,
    Accept,
    Action,
    Authenticate,
    BaseSession,
    Batch,
    Close,
    LookUp,
    Need,
    ProgressSigner,
    Rendered,
    SessionEnv,
    StreamRequest,
    Subscribe,
    Timer,
    dumps,
)
from .logs import running_after, running_next

DIALECT = "live"
BATCH_HEAD = '{"success":true,"type":"event_batch","data":{"events":['
BATCH_TAIL = "]}}"
SPINNER = {"type": "spinner"}
FINAL = {"type": "final"}
QUEUED_MESSAGE = "waiting for a worker to be available"
CANCELLED_MESSAGE = "the job was cancelled"
# Close codes after an error packet: 4000 + its HTTP-style code.
ERROR_CLOSE_BASE = 4000
ERROR_TYPES = {422: "unprocessable_entity", 403: "forbidden", 404: "not_found"}


def packet_uid() -> str:
    """A fresh id for one server packet (for matching a client's report to the log)."""
    return uuid.uuid4().hex


def error_packet(code: int, message: str) -> str:
    return dumps({"success": False, "type": "error", "uid": packet_uid(),
                  "data": {"code": code, "type": ERROR_TYPES[code], "message": message}})


def item(type_: str, message: str, indicator: dict[str, Any] | None, ts: float,
         spawned: dict[str, str] | None = None) -> str:
    return dumps({"type": type_, "message": message, "indicator": indicator,
                  "occurred_at": ts, "spawned": spawned})


def _number(x: float) -> float | int:
    return int(x) if isinstance(x, float) and x.is_integer() else x


class LiveRenderer:
    """Renders a job's events as live-dialect events, one item each (see `Batch`).

    State: whether the job is RUNNING (the first `started` of a run is
    `started`, a later pipeline step's is `progress`), inferred from one event
    as the logs dialect does (`running_after`). A `spawned` event's JWT is
    signed with the event's own time as `iat`, so the same history renders the
    same bytes for every subscriber and every replay.
    """

    __slots__ = ("_running", "_sign", "_ttl")

    def __init__(self, sign: ProgressSigner, *, ttl: float, running: bool = False) -> None:
        self._sign = sign
        self._ttl = ttl
        self._running = running

    @property
    def key(self) -> tuple[str, float]:
        return (DIALECT, self._ttl)

    def after(self, event: ev.Event | None) -> LiveRenderer:
        return LiveRenderer(self._sign, ttl=self._ttl,
                            running=event is not None and running_after(event))

    def advance(self, event: ev.Event) -> None:
        self._running = running_next(self._running, event)

    def render(self, event: ev.Event) -> Rendered:
        kind = type(event)
        if kind is ev.Log:
            return NOTHING
        ts = event.ts
        if isinstance(event, ev.Progress):
            indicator: dict[str, Any] = SPINNER
            if event.of and event.at is not None:
                indicator = {"type": "bar", "at": _number(event.at), "of": _number(event.of)}
            return Rendered((item("progress", event.message or "working", indicator, ts),))
        if isinstance(event, ev.Step):
            running = event.status == "Running"
            text = f"{event.name}: {event.status.lower()}"
            return Rendered((item("progress", text, SPINNER if running else None, ts),))
        if isinstance(event, ev.Started):
            first, self._running = not self._running, True
            if first:
                return Rendered((item("started", "started", SPINNER, ts),))
            return Rendered((item("progress", f"{event.step}: started", SPINNER, ts),))
        if isinstance(event, ev.Queued):
            self._running = False
            return Rendered((item("queued", QUEUED_MESSAGE, SPINNER, ts),))
        if isinstance(event, ev.Spawned):
            name = event.name or event.template
            spawned = {"uid": event.child_id, "jwt": self._sign(event.child_id, ts),
                       "name": name}
            return Rendered((item("spawned", f"started {name}", None, ts, spawned),))
        if isinstance(event, ev.Error):
            return Rendered((item("progress", event.message, None, ts),))
        if isinstance(event, ev.Bounce):
            self._running = False
            text = f"back to the queue ({event.reason}); it will run again"
            return Rendered((item("bounce", text, SPINNER, ts),))
        if isinstance(event, ev.Finished):
            self._running = False
            return Rendered((_finished(event),), end=True)
        if kind is ev.Deleted:
            return Rendered(end=True)
        return NOTHING  # results and warnings are not for a person's progress view


def _finished(event: ev.Finished) -> str:
    if event.status == Status.SUCCEEDED:
        return item("succeeded", event.message or "succeeded", FINAL, event.ts)
    if event.status == Status.CANCELLED:
        text = event.message if event.message and "cancel" in event.message.lower() \
            else CANCELLED_MESSAGE
        return item("failed", text, FINAL, event.ts)
    return item("failed", event.message or "failed", FINAL, event.ts)


class LiveSession(BaseSession):
    """One live-dialect client: waits for its `authorize`, checks it, then streams."""

    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.env = env
        self.job_uid: str | None = None  # set once an authorize packet was accepted
        self.streaming = False

    def open(self) -> Sequence[Action]:
        return (Accept(), Timer(self.env.config.live_auth_timeout))

    def on_tick(self, now: float) -> Sequence[Action]:
        if self.job_uid is None:
            return (Close(1008, "no authorize packet in time"),)
        return ()

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        if self.job_uid is not None:
            return ()  # after the authorize, the client has nothing more to say
        parsed = parse_authorize(message)
        if isinstance(parsed, str):
            return self._error(422, parsed)
        self.job_uid, token = parsed
        return (Timer(None), Authenticate(token, rules="progress"))

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if isinstance(result, Unauthenticated):
                return self._error(403, result.message)
            if not isinstance(result, Principal) or result.job != self.job_uid:
                return self._error(403, "the token is for another job")
            job_id = parse_job_id(self.job_uid or "")
            if job_id is None or job_id != self.job_uid:
                return self._error(404, "no such job")
            return (LookUp(job_id, result),)
        if isinstance(need, LookUp):
            return self._opening(result if isinstance(result, Job) else None)
        return ()

    def _opening(self, job: Job | None) -> Sequence[Action]:
        if job is None:
            return self._error(404, "no such job")
        config = self.env.config
        if job.status.terminal and job.completed_at is not None \
                and self.env.now() - job.completed_at > config.live_stream_retention:
            return self._error(404, "the job's progress stream has expired")
        sign = self.env.sign_progress
        assert sign is not None, "the data plane gives live sessions a signer"
        self.streaming = True
        auth = dumps({"success": True, "type": "auth_response", "uid": packet_uid(),
                      "data": {}})
        renderer = LiveRenderer(sign, ttl=config.progress_token_ttl)
        batch = Batch(BATCH_HEAD, BATCH_TAIL, config.live_batch_window)
        return (auth, Subscribe(JobTopic(job.id), 0, renderer, batch))

    def _error(self, code: int, message: str) -> Sequence[Action]:
        return (error_packet(code, message), Close(ERROR_CLOSE_BASE + code, ERROR_TYPES[code]))

    def on_end(self, topic: Topic) -> Sequence[Action]:
        return (Close(1000, "job finished"),)


def parse_authorize(message: str | bytes) -> tuple[str, str] | str:
    """(job_uid, jwt) from an authorize packet, or why it is not one."""
    if isinstance(message, bytes):
        return "expected a text message"
    try:
        packet = jsontext.loads(message)
    except (ValueError, RecursionError):
        return "the packet is not JSON"
    if not isinstance(packet, dict):
        return "the packet must be a JSON object"
    if packet.get("type") != "authorize":
        return "the first packet must be of type 'authorize'"
    data = packet.get("data")
    if not isinstance(data, dict):
        return "'data' must be an object"
    job_uid, token = data.get("job_uid"), data.get("jwt")
    if not isinstance(job_uid, str) or not job_uid:
        return "'data.job_uid' must be a non-empty string"
    if not isinstance(token, str) or not token:
        return "'data.jwt' must be a non-empty string"
    return job_uid, token
