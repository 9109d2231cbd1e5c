"""The native REST API under /api/v1 (JSON in, JSON out).

Rules: every route authenticates first; another user's job is a 404; errors
are raised as the `errors` tree and rendered in one place (app.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from quart import Blueprint, Response, g, request

from ..core import events as ev
from ..core.job import Job
from ..core.states import Status
from ..core.timefmt import iso_ms
from ..errors import ValidationFailed
from ..livejob import Submission
from ..store import JobFilter
from . import idempotency
from .common import authenticate, job_id_arg, json_body, services

native = Blueprint("native", __name__)

MAX_PAGE = 500
EVENTS_PAGE = 1000
LOG_PAGE = 5000
MAX_SEQ = 2**62


def job_view(job: Job) -> dict[str, Any]:
    out = job.to_dict()
    for key in ("created_at", "started_at", "completed_at"):
        out[key] = iso_ms(out[key])
    for step in out["steps"]:
        step["started_at"] = iso_ms(step["started_at"])
        step["completed_at"] = iso_ms(step["completed_at"])
    return out


LOG_STREAMS = ("stdout", "stderr")


def _int_arg(name: str, default: int, *, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", field=name)
    return value


@native.post("/api/v1/jobs")
async def submit_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    principal = authenticate()
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    body = await json_body()
    unknown = set(body) - {"template", "params", "command"}
    if unknown:
        raise ValidationFailed(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise ValidationFailed("params must be an object", field="params")
    template, command = body.get("template"), body.get("command")
    if template is not None and not isinstance(template, str):
        raise ValidationFailed("template must be a string", field="template")
    if (template is None) == (command is None):
        raise ValidationFailed("give exactly one of template and command", field="template")
    sub = Submission(template=template, command=command, params=params,
                     correlation_id=g.correlation_id)
    if key is None:
        return job_view(await services().engine.submit(principal, sub)), 201, {}
    job, replayed = await services().submits.submit(
        principal, sub, key=key, fingerprint=idempotency.fingerprint("/api/v1/jobs", body))
    return job_view(job), 200 if replayed else 201, idempotency.replay_headers(replayed)


@native.get("/api/v1/jobs")
async def list_jobs() -> dict[str, Any]:
    principal = authenticate()
    status = request.args.get("status") or None
    if status is not None and status.upper() not in Status.__members__:
        raise ValidationFailed(f"status must be one of {', '.join(Status)}", field="status")
    query = JobFilter(
        owner=request.args.get("owner") or None,
        status=Status(status.upper()) if status else None,
        template=request.args.get("template") or None,
        limit=_int_arg("limit", 50, low=1, high=MAX_PAGE),
        cursor=request.args.get("cursor") or None,
    )
    jobs, cursor = await services().engine.list(principal, query)
    return {"jobs": [job_view(j) for j in jobs], "next_cursor": cursor}


@native.get("/api/v1/jobs/<job_id>")
async def get_job(job_id: str) -> dict[str, Any]:
    principal = authenticate()
    return job_view(await services().engine.get(principal, job_id_arg(job_id)))


@native.post("/api/v1/jobs/<job_id>/cancel")
async def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    principal = authenticate()
    job = await services().engine.cancel(principal, job_id_arg(job_id))
    return job_view(job), 202


@native.delete("/api/v1/jobs/<job_id>")
async def delete_job(job_id: str) -> tuple[str, int]:
    principal = authenticate()
    await services().engine.delete(principal, job_id_arg(job_id))
    return "", 204


@native.get("/api/v1/jobs/<job_id>/progress-token")
async def progress_token(job_id: str) -> dict[str, Any]:
    """A token for the live dialect (`/api/2/jobs/live`) that watches this one job."""
    principal = authenticate()
    found = services()
    job = await found.engine.get(principal, job_id_arg(job_id))
    token, expires = found.keyring.issue_progress(job.id, ttl=found.config.progress_token_ttl)
    return {"job_uid": job.id, "jwt": token, "expires_at": iso_ms(expires)}


@native.post("/api/v1/jobs/<job_id>/pin")
async def pin_job(job_id: str) -> dict[str, Any]:
    """Keep the job from retention (it can still be deleted by hand)."""
    principal = authenticate()
    return job_view(await services().engine.pin(principal, job_id_arg(job_id), True))


@native.delete("/api/v1/jobs/<job_id>/pin")
async def unpin_job(job_id: str) -> dict[str, Any]:
    principal = authenticate()
    return job_view(await services().engine.pin(principal, job_id_arg(job_id), False))


@native.get("/api/v1/jobs/<job_id>/events")
async def job_events(job_id: str) -> dict[str, Any]:
    principal = authenticate()
    engine = services().engine
    job = await engine.get(principal, job_id_arg(job_id))
    after = _int_arg("after", 0, low=0, high=MAX_SEQ)
    limit = _int_arg("limit", EVENTS_PAGE, low=1, high=EVENTS_PAGE)
    events = await engine.events_after(job.id, after, limit=limit)
    next_after = events[-1].seq if len(events) == limit else None
    return {"events": [ev.event_view(e) for e in events], "next_after": next_after,
            "status": job.status.value}


@native.get("/api/v1/jobs/<job_id>/logs")
async def job_logs(job_id: str) -> Response:
    """The log as plain text, `[stream] line` when ?streams=1; the lines with
    seq > ?after= and <= ?until= (the whole log without them). Where the log
    cap dropped lines, one marker line stands in their place."""
    principal = authenticate()
    engine = services().engine
    job = await engine.get(principal, job_id_arg(job_id))
    only = request.args.get("stream") or None
    if only is not None and only not in LOG_STREAMS:
        raise ValidationFailed(f"stream must be one of {', '.join(LOG_STREAMS)}", field="stream")
    tagged = request.args.get("streams") in ("1", "true")
    start = _int_arg("after", 0, low=0, high=MAX_SEQ)
    until = _int_arg("until", MAX_SEQ, low=0, high=MAX_SEQ)

    # The marker goes where the lines were dropped (when the range asked for
    # overlaps them): before the first line kept after them (or, for a run's
    # earlier cap, at its `truncated` event).
    gap = job.log_truncated
    pending = gap is not None and start < gap["last_seq"] and gap["first_seq"] <= until

    async def lines() -> AsyncIterator[bytes]:
        nonlocal pending
        after = start
        while after < until:
            events = await engine.events_after(job.id, after, limit=LOG_PAGE)
            if not events:
                return
            after = events[-1].seq
            chunk: list[str] = []
            for e in events:
                if type(e) is ev.Log:
                    if e.seq > until:
                        break
                    if pending and gap is not None and e.seq > gap["last_seq"]:
                        chunk.append(truncation_marker(gap))
                        pending = False
                    if only is None or e.stream == only:
                        chunk.append(f"[{e.stream}] {e.line}\n" if tagged else f"{e.line}\n")
                elif isinstance(e, ev.Truncated) and e.first_seq <= until:
                    if gap is None or e.first_seq != gap["first_seq"]:
                        chunk.append(truncation_marker(ev.to_data(e)))  # an earlier run's
                    elif pending:  # no line was kept after the gap
                        chunk.append(truncation_marker(gap))
                        pending = False
            if chunk:
                yield "".join(chunk).encode("utf-8", "replace")

    return Response(lines(), content_type="text/plain; charset=utf-8")


def truncation_marker(dropped: Mapping[str, Any]) -> str:
    """The line `/logs` shows for what the log cap dropped (a `truncated` event's data)."""
    return (f"[jobserver: log cap reached: {dropped['lines']:,} lines "
            f"({dropped['bytes']:,} bytes) dropped, seq {dropped['first_seq']}.."
            f"{dropped['last_seq']}]\n")


@native.get("/api/v1/templates")
async def list_templates() -> dict[str, Any]:
    principal = authenticate()
    templates = services().config.templates.values()
    return {"templates": [t.describe() for t in templates if principal.role in t.roles]}
