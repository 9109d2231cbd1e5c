"""The OpenAPI 3.1 document served at /openapi.json: the native API (/api/v1),
the jobs dialect's REST and SSE routes (/api/jobs), the logs WebSocket's
handshake, health and metrics.

Rules: it describes what the server does, every route, parameter, header and
answer a client can get (tests/test_reliability_schema.py runs schemathesis
against it: a response outside it fails). A schema here names the fields the
code writes (core/job.py `to_dict`, dialects/jobs.py `job_document`); change
them together.
"""

from __future__ import annotations

from typing import Any

from ..config import Config

_ERROR = {"$ref": "#/components/schemas/Error"}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_JOB = {"$ref": "#/components/schemas/Job"}
_JOBS_JOB = {"$ref": "#/components/schemas/JobsDialectJob"}
_ID = {"name": "job_id", "in": "path", "required": True,
       "schema": {"type": "string", "format": "uuid"}}
_JOBS_ID = {"name": "job_id", "in": "path", "required": True,
            "description": "The job's id (a UUID)", "schema": {"type": "string"}}
_TOKEN = {"name": "token", "in": "query", "description": "A JWT, for clients that cannot "
          "send headers (EventSource, WebSocket); the Authorization header wins",
          "schema": {"type": "string"}}
_CORRELATION = {"name": "X-Correlation-ID", "in": "header",
                "description": "Echoed in the response (1 to 128 visible ASCII characters; "
                "another value is replaced by a new id)", "schema": {"type": "string"}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "description": (
    "1 to 255 visible ASCII characters (another value is a 400 naming the header). The "
    "same key with the same route and body (as canonical JSON) within `idempotency_ttl` "
    "(24 h) gives back the job it made, 200 with `Idempotent-Replayed: true`, and runs "
    "nothing; with another route or body it is a 422 `idempotency_key_reused`. Keys are "
    "per user."), "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                             "pattern": "^[!-~]+$"}}
_REPLAYED = {"Idempotent-Replayed": {"description": "The job an earlier request with this "
                                     "Idempotency-Key made", "schema": {"const": "true"}}}
_ECHOED = {"X-Correlation-ID": {"description": "The request's correlation id, or a new one",
                                "schema": {"type": "string"}}}
_CHALLENGE = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATUS = {"enum": ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]}


def _obj(props: dict[str, Any], *, required: bool = True, extra: bool = True
         ) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(props)
    if not extra:
        out["additionalProperties"] = False
    return out


def _arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _error(status: int, *, problem: bool, echoed: bool = True) -> dict[str, Any]:
    media = "application/problem+json" if problem else "application/json"
    out: dict[str, Any] = {"description": "Error",
                           "content": {media: {"schema": _PROBLEM if problem else _ERROR}}}
    headers = {**(_ECHOED if echoed else {}), **(_CHALLENGE if status == 401 else {})}
    if headers:
        out["headers"] = headers
    return out


def _answers(ok: str, schema: dict[str, Any] | None, *errors: int, problem: bool = False,
             media: str | None = None, echoed: bool = True, auth: bool = True
             ) -> dict[str, Any]:
    """`ok` with `schema` (None: no body), and these errors (and 401, with `auth`)."""
    media = media or ("application/json" if schema is not None else None)
    first: dict[str, Any] = {"description": "OK"}
    if echoed:
        first["headers"] = _ECHOED
    if schema is not None and media is not None:
        first["content"] = {media: {"schema": schema}}
    out: dict[str, Any] = {ok: first}
    for status in ((401,) if auth else ()) + errors:
        out[str(status)] = _error(status, problem=problem, echoed=echoed)
    return out


def _replayed(answers: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`answers` and the 200 of a replayed Idempotency-Key (with `schema`)."""
    return {"200": {"description": "An earlier request's job (Idempotency-Key replayed)",
                    "headers": {**_ECHOED, **_REPLAYED},
                    "content": {"application/json": {"schema": schema}}}, **answers}


def _sse_event(id_pattern: str, event: dict[str, Any]) -> dict[str, Any]:
    """One event of a text/event-stream body (its `data` a JSON document)."""
    return {"type": "object", "required": ["id", "event", "data"], "properties": {
        "id": {"type": "string", "pattern": id_pattern}, "event": event,
        "data": {"type": "string", "contentMediaType": "application/json"}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    step = _obj({"name": {"type": "string"},
                 "status": {"enum": ["Pending", "Running", "Succeeded", "Failed", "Skipped"]},
                 "progress_pct": {"type": "number"}, "started_at": _NULLABLE_TIME,
                 "completed_at": _NULLABLE_TIME, "errors": _arr({"type": "object"})})
    job = _obj({
        "id": {"type": "string", "format": "uuid"}, "owner": {"type": "string"},
        "template": {"type": "string"}, "kind": {"type": "string"},
        "params": {"type": "object"}, "command": _NULLABLE_STRING,
        "argv": {"type": ["array", "null"], "items": {"type": "string"}},
        "input": {"type": ["object", "null"]}, "resume_from": {"type": "integer"},
        "status": _STATUS, "created_at": _TIME, "started_at": _NULLABLE_TIME,
        "completed_at": _NULLABLE_TIME, "pid": {"type": ["integer", "null"]},
        "node": {"type": ["string", "null"], "description": "The node that runs the job, "
                 "or ran it last (several nodes on one database; null on one node and "
                 "while the job waits in the queue)"},
        "exit_code": {"type": ["integer", "null"]}, "outcome": _NULLABLE_STRING,
        "result_message": _NULLABLE_STRING, "error_message": _NULLABLE_STRING,
        "log_snippet": _NULLABLE_STRING, "progress": {"type": ["object", "null"]},
        "steps": _arr(step), "result": {"type": ["object", "null"]},
        "errors": _arr({"type": "object"}), "warnings": _arr({"type": "string"}),
        "parent_id": _NULLABLE_STRING, "retry_of": _NULLABLE_STRING,
        "correlation_id": _NULLABLE_STRING, "attempt": {"type": "integer", "minimum": 1},
        "last_seq": {"type": "integer", "minimum": 0}, "pinned": {"type": "boolean"},
        "log_truncated": {"type": ["object", "null"], "description": "What the log cap "
                          "dropped: lines, bytes, first_seq, last_seq"},
        "log_dropped": {"type": ["object", "null"], "description": "What the log cap has "
                        "dropped of the running attempt so far (as log_truncated), until "
                        "its truncated event"}})
    dialect_error = _obj({"code": _NULLABLE_STRING, "message": _NULLABLE_STRING,
                          "remediation": _NULLABLE_STRING})
    dialect_step = _obj({"name": {"type": "string"}, "status": {"type": "string"},
                         "progressPct": {"type": "integer"}, "durationMs": {"type": "integer"},
                         "errors": _arr(dialect_error)})
    dialect_step["properties"].update(startedAt=_TIME, completedAt=_TIME)
    dialect_job = _obj({
        "jobId": {"type": "string"},
        "status": {"enum": ["Queued", "Running", "Succeeded", "Failed", "Canceled"]},
        "stage": {"type": "string"}, "createdUtc": _TIME, "startedUtc": _NULLABLE_TIME,
        "endedUtc": _NULLABLE_TIME, "correlationId": _NULLABLE_STRING,
        "steps": _arr(dialect_step), "output": {}, "warnings": _arr({"type": "string"}),
        "errors": _arr(dialect_error), "progressPct": {"type": ["integer", "null"]},
        "attempt": {"type": "integer"}, "retryOf": _NULLABLE_STRING})
    param = _obj({"name": {"type": "string"}, "type": {"type": "string"},
                  "required": {"type": "boolean"}})
    template = _obj({"name": {"type": "string"}, "description": _NULLABLE_STRING,
                     "kind": {"type": "string"}, "params": _arr(param),
                     "steps": _arr({"type": "string"}),
                     "timeout": {"type": ["number", "null"]},
                     "roles": _arr({"type": "string"})})
    return {
        "Error": _obj({"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string"}}, required=False)
        | {"required": ["code", "message"]},
        "Problem": _obj({"type": {"type": "string"}, "title": {"type": "string"},
                         "status": {"type": "integer"}, "detail": {"type": "string"},
                         "correlationId": {"type": "string"}, "traceId": {"type": "string"},
                         "field": {"type": "string"}}, required=False)
        | {"required": ["type", "title", "status", "detail", "correlationId", "traceId"]},
        "Submit": _obj({"template": {"type": "string"}, "params": {"type": "object"},
                        "command": _arr({"type": "string"})}, required=False, extra=False),
        "Job": job,
        "Event": _obj({"seq": {"type": "integer", "minimum": 1}, "type": {"type": "string"},
                       "ts": _TIME}),
        "Template": template,
        "JobsDialectSubmit": {"type": "object", "description": (
            "A preset with inputs and options, or a legacy brief/planSpec/voiceSpec/"
            "renderSpec body"), "properties": {
                "preset": {"type": "string"}, "inputs": {"type": "object"},
                "options": {"type": "object"}, "brief": {"type": "object"},
                "planSpec": {"type": "object"}, "voiceSpec": {"type": "object"},
                "renderSpec": {"type": "object"}}},
        "JobsDialectJob": dialect_job,
    }


def _native_paths() -> dict[str, Any]:
    listing = [{"name": "status", "in": "query", "schema": {
                   "type": "string", "description": "A status, any case"}},
               {"name": "template", "in": "query", "schema": {"type": "string"}},
               {"name": "owner", "in": "query", "description": "Admins only; ignored for "
                "a user, who sees only their own jobs", "schema": {"type": "string"}},
               {"name": "limit", "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
               {"name": "cursor", "in": "query", "schema": {"type": "string"}}]
    job_list = _obj({"jobs": _arr(_JOB), "next_cursor": _NULLABLE_STRING})
    events = _obj({"events": _arr({"$ref": "#/components/schemas/Event"}),
                   "next_after": {"type": ["integer", "null"]}, "status": _STATUS})
    stream_params = [_ID, _TOKEN, {
        "name": "after", "in": "query", "description": "Events after this seq (at or "
        "past a live job's last: from now; a finished job's: 204)",
        "schema": {"type": "integer", "minimum": 0}}, {
        "name": "Last-Event-ID", "in": "header", "description": "Wins over `after`",
        "schema": {"type": "integer", "minimum": 0}}]
    sse = {"text/event-stream": {"schema": _sse_event(r"^[0-9]+$", {"type": "string"})}}
    return {
        "/api/v1/jobs": {
            "post": {"summary": "Submit a job", "parameters": [_CORRELATION, _IDEMPOTENCY],
                     "requestBody": _body({"$ref": "#/components/schemas/Submit"}),
                     "responses": _replayed(_answers("201", _JOB, 400, 403, 413, 415, 422),
                                            _JOB)},
            "get": {"summary": "List jobs (newest first)", "parameters": listing,
                    "responses": _answers("200", job_list, 422)},
        },
        "/api/v1/jobs/{job_id}": {
            "get": {"summary": "One job", "parameters": [_ID],
                    "responses": _answers("200", _JOB, 404)},
            "delete": {"summary": "Delete a finished job", "parameters": [_ID],
                       "responses": _answers("204", None, 404, 409)},
        },
        "/api/v1/jobs/{job_id}/progress-token": {
            "get": {"summary": "A progress JWT for the live dialect (/api/2/jobs/live)",
                    "parameters": [_ID],
                    "responses": _answers("200", _obj({
                        "job_uid": {"type": "string"}, "jwt": {"type": "string"},
                        "expires_at": {"type": "string"}}), 404)}},
        "/api/v1/jobs/{job_id}/pin": {
            "post": {"summary": "Pin a job: retention keeps it", "parameters": [_ID],
                     "responses": _answers("200", _JOB, 404)},
            "delete": {"summary": "Unpin a job: retention may remove it again",
                       "parameters": [_ID], "responses": _answers("200", _JOB, 404)}},
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {"summary": "Cancel a queued or running job", "parameters": [_ID],
                     "responses": _answers("202", _JOB, 404, 409)}},
        "/api/v1/jobs/{job_id}/events": {
            "get": {"summary": "Events after a seq (paged)", "parameters": [
                _ID, {"name": "after", "in": "query", "description": "Events after this seq "
                      "(at or past the job's last: none, next_after null)",
                      "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": _answers("200", events, 404, 422)}},
        "/api/v1/jobs/{job_id}/logs": {
            "get": {"summary": "The log as plain text", "parameters": [
                _ID, {"name": "stream", "in": "query", "description": "Only this stream's "
                      "lines",
                      "schema": {"type": "string", "enum": ["stdout", "stderr"]}},
                {"name": "streams", "in": "query", "description": "`1`: `[stream] line`",
                 "schema": {"type": "string"}},
                {"name": "after", "in": "query", "description": "Lines after this seq "
                 "(at or past the job's last: an empty body)",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "until", "in": "query", "description": "Lines up to this seq",
                 "schema": {"type": "integer", "minimum": 0}}],
                    "responses": _answers("200", {"type": "string"}, 404, 422,
                                          media="text/plain; charset=utf-8")}},
        "/api/v1/jobs/{job_id}/stream": {
            "get": {"summary": "The job's events as Server-Sent Events (id = seq), history "
                    "then live, until `finished`", "parameters": stream_params,
                    "responses": {
                        "200": {"description": "text/event-stream", "content": sse},
                        "204": {"description": "A finished job, nothing after the cursor"},
                        **{str(s): _error(s, problem=False, echoed=False)
                           for s in (401, 404, 422)}}}},
        "/api/v1/events": {
            "get": {"summary": "Every event of your jobs (an admin's: all jobs), output lines "
                    "aside, live as Server-Sent Events (no ids: list /api/v1/jobs once it "
                    "opened)", "parameters": [_TOKEN],
                    "responses": {
                        "200": {"description": "text/event-stream", "content": {
                            "text/event-stream": {"schema": {
                                "type": "object", "required": ["event", "data"],
                                "properties": {"event": {"type": "string"}, "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json"}}}}}},
                        "401": _error(401, problem=False, echoed=False)}}},
        "/api/v1/templates": {
            "get": {"summary": "Templates you may run", "responses": _answers(
                "200", _obj({"templates": _arr({"$ref": "#/components/schemas/Template"})}))}},
        "/api/v1/ws/jobs/{job_id}/logs": {
            "get": {"summary": "The logs dialect's WebSocket (specs/dialect-logs-ws.md); a "
                    "plain GET is told to upgrade", "security": [], "parameters": [
                        _ID, _TOKEN, {"name": "since", "in": "query",
                                      "schema": {"type": "integer", "minimum": 0}},
                        {"name": "replay", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "101": {"description": "Switching to the WebSocket protocol"},
                        "426": {"description": "Not a WebSocket handshake", "content": {
                            "text/plain; charset=utf-8": {"schema": {"type": "string"}}}}}}},
    }


def _jobs_paths() -> dict[str, Any]:
    created = _obj({"jobId": {"type": "string"}, "correlationId": _NULLABLE_STRING,
                    "status": {"const": "Queued"}, "stage": {"type": "string"}})
    replayed = _obj({"jobId": {"type": "string"}, "correlationId": _NULLABLE_STRING,
                     "status": {"enum": ["Queued", "Running", "Succeeded", "Failed",
                                         "Canceled"]}, "stage": {"type": "string"}})
    cancelled = _obj({"jobId": {"type": "string"}, "message": {"type": "string"},
                      "currentStatus": {"type": "string"}, "correlationId": {"type": "string"}})
    retried = _obj({
        "jobId": {"type": "string"}, "currentStatus": {"type": "string"},
        "currentStage": {"type": "string"}, "strategy": {"type": "string"},
        "message": {"type": "string"}, "suggestedActions": _arr({"type": "string"}),
        "correlationId": {"type": "string"}, "newJobId": {"type": "string"},
        "attempt": {"type": "integer"}, "resumeFromStep": _NULLABLE_STRING})
    both = [_JOBS_ID, _TOKEN, _CORRELATION]
    return {
        "/api/jobs": {
            "post": {"summary": "Submit a job (the jobs dialect)", "parameters": [
                _TOKEN, _CORRELATION, _IDEMPOTENCY],
                     "requestBody": _body({"$ref": "#/components/schemas/JobsDialectSubmit"}),
                     "responses": _replayed(_answers("202", created, 400, 403, 413, 415, 422,
                                                     problem=True), replayed)}},
        "/api/jobs/{job_id}": {
            "get": {"summary": "The job document", "parameters": both,
                    "responses": _answers("200", _JOBS_JOB, 404, problem=True)}},
        "/api/jobs/{job_id}/cancel": {
            "post": {"summary": "Ask to cancel", "parameters": both,
                     "responses": _answers("202", cancelled, 404, 409, problem=True)}},
        "/api/jobs/{job_id}/retry": {
            "post": {"summary": "Retry a failed or cancelled job as a new one", "parameters": [
                *both, {"name": "strategy", "in": "query",
                        "schema": {"enum": ["manual", "resume", "restart"]}}],
                     "responses": _answers("202", retried, 404, 409, 422, problem=True)}},
        "/api/jobs/{job_id}/events": {
            "get": {"summary": "The job's events as Server-Sent Events (the jobs dialect), "
                    "until job-completed or job-failed", "parameters": [
                        *both, {"name": "Last-Event-ID", "in": "header",
                                "description": "`SEQ` or `SEQ.K`", "schema": {
                                    "type": "string"}}],
                    "responses": {
                        "200": {"description": "text/event-stream", "headers": _ECHOED,
                                "content": {"text/event-stream": {"schema": _sse_event(
                                    r"^[0-9]+(\.[0-9]+)?$", {"enum": [
                                        "job-status", "step-status", "step-progress",
                                        "step-error", "job-completed", "job-failed",
                                        "job-cancelled", "job-log", "warning"]})}}},
                        "204": {"description": "Nothing after the client's Last-Event-ID"},
                        **{str(s): _error(s, problem=True) for s in (401, 404)}}}},
        "/jobs/{job_id}/watch": {
            "get": {"summary": "A page that follows a job in the browser", "security": [],
                    "parameters": [{"name": "job_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "HTML", "headers": _ECHOED,
                                          "content": {"text/html; charset=utf-8": {
                                              "schema": {"type": "string"}}}}}}},
    }


def openapi_document(config: Config) -> dict[str, Any]:
    health = _obj({"status": {"enum": ["ok", "stopping"]},
                   "uptime_seconds": {"type": "number"}, "running": {"type": "integer"},
                   "queued": {"type": "integer"}})
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobserver", "version": "0.1.0",
                 "description": "Run commands as jobs and watch them live."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": _schemas(),
        },
        "security": [{"bearer": []}],
        "paths": {
            **_native_paths(),
            **_jobs_paths(),
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": _answers(
                "200", health, auth=False)}},
            "/api/v1/health": {"get": {"summary": "Liveness (the same as /healthz)",
                                       "security": [],
                                       "responses": _answers("200", health, auth=False)}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
                "200": {"description": "Prometheus text format", "headers": _ECHOED,
                        "content": {"text/plain; version=0.0.4; charset=utf-8": {
                            "schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": _answers("200", {"type": "object"},
                                                            auth=False)}},
        },
    }
