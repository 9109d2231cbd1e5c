"""The jobs dialect's REST half: /api/jobs (specs/dialect-jobs-sse.md).

Rules: bodies map onto templates (a preset is a template; the legacy
brief/planSpec/voiceSpec/renderSpec body goes to `config.legacy_template`,
handed to the process as a JSON file, JOBSERVER_INPUT_FILE, and on stdin when
the template says `stdin_input`; never through a shell). Errors are RFC 7807
problems, rendered by app.py for every /api/jobs path; a bad param is named as
the client sent it (`inputs.X`, `options.X`). Auth: `auth.authorize`, shared
with the event stream, which the data plane serves (dataplane/routes.py,
`JobsEventsSession`), on a fresh connection or through its ASGI fallback. A
retry is a new job linked to the old one (`retry_of`, `attempt`), resuming
where a `resumable` template allows. The watch page is watch_page.py's.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, request

from ..auth import Principal, anonymous, authorize
from ..core.ids import JobId
from ..core.job import Job
from ..core.states import Status
from ..errors import Conflict, NotFound, ValidationFailed
from ..livejob import Submission
from . import idempotency
from . import jobs_views as views
from .common import bearer_token, json_body, services
from .watch_page import WATCH_PAGE, WATCH_PAGE_CSP

jobs_api = Blueprint("jobs_dialect", __name__)

LEGACY_KEYS = ("brief", "planSpec", "voiceSpec", "renderSpec")
SUGGESTED_ACTIONS = [
    "Re-generate with different TTS provider if narration failed",
    "Use software encoder (x264) if hardware encoding failed",
    "Check FFmpeg installation if render failed",
    "Verify input files are valid if validation failed",
]


def principal() -> Principal:
    svc = services()
    config = svc.config
    return authorize(svc.keyring, bearer=bearer_token(), query_token=request.args.get("token"),
                     anonymous_user=anonymous(enabled=config.anonymous_loopback,
                                              user=config.anonymous_user,
                                              peer=request.remote_addr))


def _job_id(text: str) -> JobId:
    job_id = views.parse_jobs_id(text)
    if job_id is None:
        raise NotFound("job not found", code="job_not_found")
    return job_id


def _legacy(body: dict[str, Any]) -> Submission:
    for key in LEGACY_KEYS:
        if key in body and not isinstance(body[key], dict):
            raise ValidationFailed(f"{key} must be an object", field=key)
    topic = (body.get("brief") or {}).get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise ValidationFailed("brief.topic is required", field="brief.topic")
    return Submission(template=services().config.legacy_template,
                      correlation_id=g.correlation_id, input=body)


def _submission(body: dict[str, Any]) -> Submission:
    if any(key in body for key in LEGACY_KEYS):
        if "preset" in body:
            raise ValidationFailed("send either a preset or a legacy brief/planSpec/voiceSpec/"
                                   "renderSpec body, not both", field="preset")
        return _legacy(body)
    preset = body.get("preset", "default")
    inputs, options = _object(body, "inputs"), _object(body, "options")
    if not isinstance(preset, str):
        raise ValidationFailed("preset must be a string", field="preset")
    template = services().config.templates.get(preset)
    declared = {p.name for p in template.params} if template is not None else set()
    # Options the preset declares as params are passed on; the rest are hints.
    params = {**{k: v for k, v in options.items() if k in declared}, **inputs}
    return Submission(template=preset, params=params, correlation_id=g.correlation_id,
                      input=body)


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(f"{key} must be an object", field=key)
    return value


async def _submit(who: Principal, sub: Submission, body: dict[str, Any], *,
                  key: str | None = None) -> tuple[Job, bool]:
    """Submit (once per `key`; replayed: the key's earlier job); a bad param is
    named as the client sent it (inputs.X / options.X)."""
    try:
        if key is None:
            return await services().engine.submit(who, sub), False
        return await services().submits.submit(
            who, sub, key=key, fingerprint=idempotency.fingerprint("/api/jobs", body))
    except ValidationFailed as exc:
        if exc.field == "template":
            exc.field = "preset"
        elif exc.field and exc.field.startswith("params."):
            name = exc.field.removeprefix("params.")
            exc.field = f"inputs.{name}" if name in (body.get("inputs") or {}) else \
                f"options.{name}"
        raise


@jobs_api.post("/api/jobs")
async def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """202 and the new job; with an Idempotency-Key seen before, 200 and that job
    as it stands now (its status, stage) with `Idempotent-Replayed: true`."""
    who = principal()
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    body = await json_body()
    job, replayed = await _submit(who, _submission(body), body, key=key)
    return {"jobId": job.id, "correlationId": job.correlation_id,
            "status": views.STATUS_NAMES[job.status], "stage": views.stage(job)}, \
        200 if replayed else 202, idempotency.replay_headers(replayed)


@jobs_api.get("/api/jobs/<job_id>")
async def get_job(job_id: str) -> dict[str, Any]:
    engine = services().engine
    job = await engine.get(principal(), _job_id(job_id))
    return views.job_document(job, now=engine.now())


@jobs_api.get("/jobs/<job_id>/watch")
async def watch_page(job_id: str) -> Response:
    """A page that follows a job with the browser's own EventSource (same origin, so
    no CORS: the stream never has to be readable from other sites' pages)."""
    response = Response(WATCH_PAGE, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = WATCH_PAGE_CSP
    return response


@jobs_api.post("/api/jobs/<job_id>/cancel")
async def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    engine = services().engine
    who = principal()
    job = await engine.get(who, _job_id(job_id))
    before = views.STATUS_NAMES[job.status]
    if job.status.terminal:
        raise Conflict(f"Job is already {before}", code="job_finished")
    await engine.cancel(who, job.id)
    return {"jobId": job.id, "message": "Job cancellation requested", "currentStatus": before,
            "correlationId": g.correlation_id}, 202


@jobs_api.post("/api/jobs/<job_id>/retry")
async def retry_job(job_id: str) -> tuple[dict[str, Any], int]:
    engine = services().engine
    who = principal()
    job = await engine.get(who, _job_id(job_id))
    strategy = request.args.get("strategy") or "manual"
    if strategy not in STRATEGIES:
        raise ValidationFailed(f"strategy must be one of {', '.join(STRATEGIES)}",
                               field="strategy")
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise Conflict(f"Only failed or cancelled jobs can be retried; this one is "
                       f"{views.STATUS_NAMES[job.status]}", code="not_retryable")
    resume = 0 if strategy == "restart" else _resume_index(job)
    # The new attempt belongs to the job's owner (an admin may retry it for them).
    owner = Principal(job.owner, who.role)
    retry = await engine.submit(owner, Submission(
        template=job.template, params=dict(job.params), correlation_id=g.correlation_id,
        retry_of=job.id, attempt=job.attempt + 1, input=job.input, resume_from=resume))
    resumed = f", resuming at step {job.steps[resume].name}" if resume else ""
    return {
        "jobId": job.id,
        "currentStatus": views.STATUS_NAMES[job.status],
        "currentStage": views.stage(job),
        "strategy": strategy,
        "message": f"Retry queued as job {retry.id} (attempt {retry.attempt}{resumed}).",
        "suggestedActions": SUGGESTED_ACTIONS,
        "correlationId": g.correlation_id,
        "newJobId": retry.id,
        "attempt": retry.attempt,
        "resumeFromStep": job.steps[resume].name if job.steps else None,
    }, 202


# Retry strategies: "manual" (the spec's example) and "resume" start at the
# first step not done where the template is resumable; "restart" runs every step.
STRATEGIES = ("manual", "resume", "restart")


def _resume_index(job: Job) -> int:
    """Where a retry starts: at the first step that did not get done, when the
    template is `resumable`; steps done before it (Succeeded, or Skipped) are skipped."""
    template = services().config.templates.get(job.template)
    if template is None or not template.resumable:
        return 0
    for index, step in enumerate(job.steps):
        if step.status not in ("Succeeded", "Skipped"):
            return index
    return 0
