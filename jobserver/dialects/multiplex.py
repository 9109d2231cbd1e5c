"""The "multiplex" dialect (specs/dialect-multiplex-ws.md): `/ws?token=JWT`, one
socket, many subscriptions, requests in band.

Rules: every message is `{"type", "data"}` both ways. The session keeps the
client's *logical* subscriptions (tasks by id, `tasks`, workflows by id,
`system_status`) and derives the topics it follows from them, so that each
task's updates reach the client exactly once whatever it subscribed to:
while `tasks` is on, the owner's topic (every job of the user; `ALL_JOBS` for
an admin) carries every task message, and a subscribed task's own topic is
rendered without task messages (only its workflow messages, if subscribed,
and its end, which ends the subscription) until `tasks` is off again, when it
is rendered with them "from now", in the same step, with nothing published in
between. A bad message gets an
`error` and the connection stays open; a limit (connections per user, messages
per minute, subscriptions) gets `error`, `connection_closed`, close 1008. The
one timer multiplexes the ping, the pong deadline, the idle timeout and the
periodic system status. Choices the spec leaves open: docs/dialects/multiplex.md.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from ..auth import Principal
from ..core import jsontext
from ..core.ids import JobId, parse_job_id
from ..core.job import Job
from ..core.timefmt import iso_ms
from ..core.topics import ALL_JOBS, SYSTEM, JobTopic, OwnerTopic, SystemStatus, Topic
from ..errors import Conflict, JobserverError, NotFound, Unavailable
from . import (
    Accept,
    Action,
    Authenticate,
    BaseSession,
    CancelJob,
    Claim,
    Close,
    LookUp,
    Need,
    ReadSystem,
    SessionEnv,
    StreamRequest,
    Submit,
    Subscribe,
    Timer,
    Unsubscribe,
)
from .multiplex_render import (
    STATUS_WORDS,
    JobRenderer,
    SystemRenderer,
    TasksRenderer,
    TaskState,
    final_task_message,
    message,
    system_message,
    task_update,
    workflow_update,
)

# Close codes: a limit or a bad token is a policy violation; the rest as RFC 6455.
POLICY = 1008
RATE_WINDOW = 60.0  # seconds: "100 messages per minute"
# The channels and the request field naming each one's id.
CHANNEL_IDS = {"task": "task_id", "tasks": None, "workflow_execution": "execution_id",
               "system_status": None}
CLOSED_MESSAGES = {
    "unauthorized": "A valid token is required: /ws?token=JWT",
    "connection_limit_exceeded": "Too many connections for this user",
    "rate_limit_exceeded": "Too many messages per minute",
    "subscription_limit_exceeded": "Too many subscriptions on this connection",
    "ping_timeout": "No pong in time",
    "server_shutdown": "The server is shutting down",
    "too_slow": "The connection fell too far behind its subscriptions",
    "message_too_large": "Message too large",
    "protocol_error": "WebSocket protocol error",
}


def error(code: str, text: str, request_type: str | None = None,
          request_data: Any = None) -> str:
    data: dict[str, Any] = {"code": code, "message": text}
    if request_type is not None:
        data["request_type"] = request_type
        data["request_data"] = request_data
    return message("error", data)


def closed(reason: str, text: str | None = None) -> str:
    return message("connection_closed", {"reason": reason,
                                         "message": text or CLOSED_MESSAGES[reason]})


def idle_message(seconds: float) -> str:
    """The spec's words for the default (30 minutes), and the same for others."""
    if seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"Session timed out after {minutes} minute{'s' * (minutes != 1)} of inactivity"
    return f"Session timed out after {seconds:g} second{'s' * (seconds != 1)} of inactivity"


class Rejected(Exception):
    """A request answered with an `error` (the connection stays open)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class MultiplexSession(BaseSession):
    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.env = env
        config = env.config
        self.token = request.query.get("token") or None
        self.principal: Principal | None = None
        self.client_id = f"client-{uuid.uuid4()}"
        self.ended = False
        # Logical subscriptions, as the client made them.
        self.tasks: dict[JobId, TaskState] = {}
        self.workflows: dict[JobId, TaskState] = {}
        self.all_tasks = False
        self.system = False
        # What is followed for them: job topic -> (task messages?, workflow messages?).
        self.followed: dict[JobTopic, tuple[bool, bool]] = {}
        self.aggregate_followed = False
        # Requests waiting for a need's result, by the need (its identity).
        self.waiting: dict[int, tuple[str, Any]] = {}
        self.recent: deque[float] = deque()  # times of the last messages (the rate limit)
        self.max_messages = config.multiplex_messages_per_minute
        self.max_subscriptions = config.multiplex_max_subscriptions
        self.idle_at = self.ping_at = self.pong_by = self.status_at = float("inf")

    # ---- the opening -------------------------------------------------------

    def open(self) -> Sequence[Action]:
        if self.token is None:
            return self._refused("unauthorized", "missing token")
        return (Authenticate(self.token),)

    def _refused(self, reason: str, text: str) -> Sequence[Action]:
        self.ended = True
        return (Accept(), error(reason, text), closed(reason), Close(POLICY, reason))

    def on_result(self, need: Need, result: Any) -> Sequence[Action]:
        if isinstance(need, Authenticate):
            if not isinstance(result, Principal):
                return self._refused("unauthorized", "invalid or expired token")
            self.principal = result
            return (Accept(), Claim(("multiplex", result.sub),
                                    self.env.config.multiplex_max_connections))
        if isinstance(need, Claim):
            if not result:
                return self._violation("connection_limit_exceeded")
            return self._established()
        waiting = self.waiting.pop(id(need), None)
        if self.ended:
            return ()
        if isinstance(need, ReadSystem):
            return self._system_read(result, waiting)
        if waiting is None:
            return ()
        request_type, data = waiting
        try:
            if isinstance(need, LookUp):
                return self._looked_up(need, result, request_type, data)
            if isinstance(need, Submit):
                return self._submitted(result)
            if isinstance(need, CancelJob):
                return self._cancelled(result)
        except Rejected as exc:
            return (error(exc.code, exc.text, request_type, data),)
        return ()

    def _established(self) -> Sequence[Action]:
        config = self.env.config
        now = self.env.now()
        self.idle_at = now + config.multiplex_idle_timeout
        self.ping_at = now + config.multiplex_ping_interval
        return (message("connection_established", {"client_id": self.client_id,
                                                   "server_time": iso_ms(now)}),
                self._timer(now))

    # ---- the client's messages ----------------------------------------------

    def on_message(self, raw: str | bytes) -> Sequence[Action]:
        if self.ended or self.principal is None:
            return ()
        now = self.env.now()
        recent = self.recent
        while recent and recent[0] <= now - RATE_WINDOW:
            recent.popleft()
        if len(recent) >= self.max_messages:
            return self._violation("rate_limit_exceeded")
        recent.append(now)
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            parsed = jsontext.loads(text)
        except (UnicodeDecodeError, ValueError):
            return (error("invalid_request", "Invalid request format: not JSON"),)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
            return (error("invalid_request", 'Invalid request format: expected {"type", "data"}'),)
        kind, data = parsed["type"], parsed.get("data", {})
        handler = _REQUESTS.get(kind)
        if handler is None:
            return (error("invalid_request", f"Unknown message type {kind!r}", kind, data),)
        if kind != "pong":
            self.idle_at = now + self.env.config.multiplex_idle_timeout
        if not isinstance(data, dict):
            return (error("invalid_request", "data must be an object", kind, data),)
        try:
            actions: Sequence[Action] = handler(self, data)
        except Rejected as exc:
            return (error(exc.code, exc.text, kind, data),)
        except _LimitReached:
            return self._violation("subscription_limit_exceeded")
        return actions

    def _subscribe(self, data: dict[str, Any]) -> Sequence[Action]:
        channel, job_id = self._channel(data)
        if channel == "tasks":
            if self.all_tasks:
                return ()
            self._check_room(1)
            self.all_tasks = True
            return self._follow()
        if channel == "system_status":
            if self.system:
                return ()
            self._check_room(1)
            need = ReadSystem()
            self.waiting[id(need)] = ("subscribe", data)
            return (need,)
        assert job_id is not None
        assert self.principal is not None
        if job_id in (self.tasks if channel == "task" else self.workflows):
            return ()
        self._check_room(1)
        look_up = LookUp(job_id, self.principal)
        self.waiting[id(look_up)] = ("subscribe", data)
        return (look_up,)

    def _unsubscribe(self, data: dict[str, Any]) -> Sequence[Action]:
        channel, job_id = self._channel(data)
        if channel == "tasks":
            on, self.all_tasks = self.all_tasks, False
        elif channel == "system_status":
            if not self.system:
                raise Rejected("invalid_subscription", f"Not subscribed to {channel}")
            self.system = False
            self.status_at = float("inf")
            return (Unsubscribe(SYSTEM),)
        else:
            subs = self.tasks if channel == "task" else self.workflows
            on = subs.pop(job_id, None) is not None  # type: ignore[arg-type]
        if not on:
            raise Rejected("invalid_subscription", f"Not subscribed to {channel}")
        return self._follow()

    def _execute(self, data: dict[str, Any]) -> Sequence[Action]:
        assert self.principal is not None
        agent = data.get("agent_id")
        if not isinstance(agent, str) or not agent:
            raise Rejected("invalid_request", "agent_id (a string) is required")
        params = data.get("parameters", {})
        if not isinstance(params, dict):
            raise Rejected("invalid_request", "parameters must be an object")
        params = dict(params)
        for name in ("task", "model_id"):
            if name in data:
                if name in params:
                    raise Rejected("invalid_request", f"{name} given twice (and in parameters)")
                if not isinstance(data[name], str):
                    raise Rejected("invalid_request", f"{name} must be a string")
                params[name] = data[name]
        self._check_room(1)
        need = Submit(self.principal, agent, params)
        self.waiting[id(need)] = ("execute_agent", data)
        return (need,)

    def _cancel(self, data: dict[str, Any]) -> Sequence[Action]:
        assert self.principal is not None
        job_id = self._job_id(data, "task_id", "task_not_found")
        need = CancelJob(self.principal, job_id)
        self.waiting[id(need)] = ("cancel_task", data)
        return (need,)

    def _pong(self, data: dict[str, Any]) -> Sequence[Action]:
        self.pong_by = float("inf")
        return ()

    def _ping(self, data: dict[str, Any]) -> Sequence[Action]:
        stamp = data.get("timestamp")
        return (message("pong", {"timestamp": stamp if isinstance(stamp, str)
                                 else iso_ms(self.env.now())}),)

    def _channel(self, data: dict[str, Any]) -> tuple[str, JobId | None]:
        channel = data.get("channel")
        if not isinstance(channel, str):
            raise Rejected("invalid_request", "channel (a string) is required")
        if channel not in CHANNEL_IDS:
            raise Rejected("invalid_subscription", f"Unknown channel {channel!r}")
        field = CHANNEL_IDS[channel]
        return channel, None if field is None else self._job_id(data, field,
                                                                "invalid_subscription")

    def _job_id(self, data: dict[str, Any], field: str, missing: str) -> JobId:
        raw = data.get(field)
        if not isinstance(raw, str):
            raise Rejected("invalid_request", f"{field} (a string) is required")
        job_id = parse_job_id(raw)
        if job_id is None:  # not an id: no such task
            raise Rejected(missing, _NOT_FOUND[missing])
        return job_id

    def _check_room(self, more: int) -> None:
        count = len(self.tasks) + len(self.workflows) + self.all_tasks + self.system
        if count + more > self.max_subscriptions:
            raise _LimitReached

    # ---- what needs gave -----------------------------------------------------

    def _looked_up(self, need: LookUp, job: Job | None, request_type: str,
                   data: dict[str, Any]) -> Sequence[Action]:
        channel = data.get("channel")
        if job is None:
            raise Rejected("invalid_subscription", _NOT_FOUND["invalid_subscription"])
        if job.status.terminal:  # nothing more will happen: its end, at once
            if channel == "task":
                return (final_task_message(job),)
            return (workflow_update(job.id, STATUS_WORDS[job.status],
                                    TaskState.of(job).step, job.completed_at or 0.0),)
        (self.tasks if channel == "task" else self.workflows)[job.id] = TaskState.of(job)
        return self._follow()

    def _submitted(self, result: Job | JobserverError) -> Sequence[Action]:
        if isinstance(result, JobserverError):
            raise Rejected(*_submit_error(result))
        self.tasks[result.id] = TaskState.of(result)
        actions = list(self._follow())
        if not self.all_tasks:  # else the owner's topic has just said so
            actions.append(task_update(result.id, "pending", 0.0, result.created_at))
        return actions

    def _cancelled(self, result: Job | JobserverError) -> Sequence[Action]:
        if isinstance(result, NotFound):
            raise Rejected("task_not_found", _NOT_FOUND["task_not_found"])
        if isinstance(result, Conflict):
            raise Rejected("task_not_cancellable", result.message)
        if isinstance(result, JobserverError):
            raise Rejected(*_submit_error(result))
        if self.all_tasks or result.id in self.tasks:
            return ()  # its end comes on the subscription
        if result.status.terminal:
            return (final_task_message(result),)
        return (task_update(result.id, STATUS_WORDS[result.status], TaskState.of(result).progress,
                            self.env.now()),)

    def _system_read(self, status: SystemStatus, waiting: tuple[str, Any] | None
                     ) -> Sequence[Action]:
        if waiting is not None:  # a subscribe: the snapshot, then the topic from now
            if self.system:  # subscribed twice before the first answer
                return ()
            self.system = True
            now = self.env.now()
            self.status_at = now + self.env.config.multiplex_status_interval
            return (system_message(status), Subscribe(SYSTEM, None, SystemRenderer()),
                    self._timer(now))
        if not self.system:
            return ()
        return (system_message(status),)

    # ---- following topics --------------------------------------------------

    def _follow(self) -> Sequence[Action]:
        """Subscribe and unsubscribe so that what is followed matches what the client
        asked for (see the module's rules); all at once, with no need between."""
        assert self.principal is not None
        wanted: dict[JobTopic, tuple[bool, bool]] = {}
        for job_id in self.tasks:
            # Under `tasks` still followed, rendering nothing: its end ends it here.
            wanted[JobTopic(job_id)] = (not self.all_tasks, job_id in self.workflows)
        for job_id in self.workflows:
            wanted.setdefault(JobTopic(job_id), (False, True))
        actions: list[Action] = []
        aggregate = self._aggregate_topic()
        if self.all_tasks and not self.aggregate_followed:
            actions.append(Subscribe(aggregate, None, TasksRenderer()))
        for topic, variant in wanted.items():
            if self.followed.get(topic) != variant:
                known = self.tasks.get(topic.job_id) or self.workflows[topic.job_id]
                actions.append(Subscribe(topic, None, JobRenderer(
                    topic.job_id, known, task=variant[0], workflow=variant[1])))
        for topic in self.followed:
            if topic not in wanted:
                actions.append(Unsubscribe(topic))
        if self.aggregate_followed and not self.all_tasks:
            actions.append(Unsubscribe(aggregate))
        self.followed = wanted
        self.aggregate_followed = self.all_tasks
        return actions

    def _aggregate_topic(self) -> Topic:
        assert self.principal is not None
        return ALL_JOBS if self.principal.is_admin else OwnerTopic(self.principal.sub)

    def on_end(self, topic: Topic) -> Sequence[Action]:
        """A followed job finished (its end was rendered): its subscriptions end."""
        if isinstance(topic, JobTopic):
            self.followed.pop(topic, None)
            self.tasks.pop(topic.job_id, None)
            self.workflows.pop(topic.job_id, None)
        return ()

    def on_lag(self, topic: Topic) -> Sequence[Action]:
        return self._goodbye("too_slow", 1013)

    # ---- time ----------------------------------------------------------------

    def _timer(self, now: float) -> Timer:
        at = min(self.idle_at, self.ping_at, self.pong_by, self.status_at)
        return Timer(max(at - now, 0.0))

    def on_tick(self, now: float) -> Sequence[Action]:
        if self.ended or self.principal is None:
            return ()
        config = self.env.config
        wall = self.env.now()
        if wall >= self.idle_at:
            return self._goodbye("session_timeout", 1000)
        if wall >= self.pong_by:
            return self._goodbye("ping_timeout", 1011)
        actions: list[Action] = []
        if wall >= self.ping_at:
            self.ping_at = wall + config.multiplex_ping_interval
            if self.pong_by == float("inf"):  # one ping answered at a time
                self.pong_by = wall + config.multiplex_pong_timeout
                actions.append(message("ping", {"timestamp": iso_ms(wall)}))
        if self.system and wall >= self.status_at:
            self.status_at = wall + config.multiplex_status_interval
            actions.append(ReadSystem())
        actions.append(self._timer(wall))
        return actions

    # ---- the end -------------------------------------------------------------

    def _violation(self, code: str) -> Sequence[Action]:
        self.ended = True
        return (error(code, CLOSED_MESSAGES[code]), closed(code), Close(POLICY, code))

    def _goodbye(self, reason: str, code: int) -> Sequence[Action]:
        self.ended = True
        text = idle_message(self.env.config.multiplex_idle_timeout) \
            if reason == "session_timeout" else None
        return (closed(reason, text), Close(code, reason))

    def on_protocol_error(self, close: Close, *, now: float) -> Sequence[Action]:
        reason = "message_too_large" if close.code == 1009 else "protocol_error"
        self.ended = True
        return (error(reason, CLOSED_MESSAGES[reason]), closed(reason))

    def on_shutdown(self) -> Sequence[Action]:
        if self.ended:
            return (Close(1001, "server shutting down"),)
        return self._goodbye("server_shutdown", 1001)


class _LimitReached(Exception):
    """More subscriptions than allowed: the connection ends."""


_NOT_FOUND = {
    "invalid_subscription": "Cannot subscribe to non-existent task",
    "task_not_found": "No such task",
}


def _submit_error(exc: JobserverError) -> tuple[str, str]:
    if exc.code == "unknown_template":
        return "agent_not_found", f"No such agent: {exc.message}"
    if exc.code == "invalid_param":
        return "invalid_parameters", f"{exc.field} {exc.message}" if exc.field else exc.message
    if isinstance(exc, Unavailable):
        return "unavailable", exc.message
    return exc.code, exc.message


_REQUESTS: Mapping[str, Any] = {
    "subscribe": MultiplexSession._subscribe,
    "unsubscribe": MultiplexSession._unsubscribe,
    "execute_agent": MultiplexSession._execute,
    "cancel_task": MultiplexSession._cancel,
    "pong": MultiplexSession._pong,
    "ping": MultiplexSession._ping,
}
