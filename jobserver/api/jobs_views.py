"""The jobs dialect's documents (specs/dialect-jobs-sse.md), as pure functions of
the job record: the job document, its errors, ids, statuses and RFC 7807
problems. Shared by the REST views (api/jobs_dialect.py) and the event stream
(dialects/jobs.py); no I/O, nothing of Quart, so the stream imports no web app.

Rules: statuses are PascalCase, Canceled with one L (the original client's
spelling); times are ISO 8601 UTC whole seconds with `Z`; words shown to a
person (messages, remediations) are a person's, never an API call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.ids import JobId, parse_job_id
from ..core.job import Job, StepState
from ..core.states import Status
from ..core.timefmt import iso_s

STATUS_NAMES = {
    Status.QUEUED: "Queued",
    Status.RUNNING: "Running",
    Status.SUCCEEDED: "Succeeded",
    Status.FAILED: "Failed",
    Status.CANCELLED: "Canceled",
}
CANCELED = STATUS_NAMES[Status.CANCELLED]


def parse_jobs_id(text: str) -> JobId | None:
    return parse_job_id(text[2:] if text[:2] in ("J-", "j-") else text)


def stage(job: Job) -> str:
    """The step the job is at (running, else the next pending), else its kind."""
    for wanted in ("Running", "Failed", "Pending"):
        for s in job.steps:
            if s.status == wanted:
                return s.name
    if job.steps:
        return job.steps[-1].name
    return job.kind


def _step_view(s: StepState, now: float) -> dict[str, Any]:
    end = s.completed_at if s.completed_at is not None else (now if s.started_at else None)
    out: dict[str, Any] = {
        "name": s.name,
        "status": s.status,
        "progressPct": round(s.progress_pct),
        "durationMs": int((end - s.started_at) * 1000) if end and s.started_at else 0,
        "errors": [error_view(e) for e in s.errors],
    }
    if s.started_at is not None:
        out["startedAt"] = iso_s(s.started_at)
    if s.completed_at is not None:
        out["completedAt"] = iso_s(s.completed_at)
    return out


def result_output(result: Mapping[str, Any] | None) -> Any:
    """What a job produced: `result.output` when it reported one, else its result."""
    if result is None:
        return None
    if "output" in result:
        return result["output"]
    return {k: v for k, v in result.items() if k != "message"} or None


def output_of(job: Job) -> Any:
    return result_output(job.result)


def error_view(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error as the spec shows it: code, message, remediation (null when none)."""
    return {"code": error.get("code"), "message": error.get("message"),
            "remediation": error.get("remediation")}


def errors_of(job: Job) -> list[dict[str, Any]]:
    """The job's errors; a failed job always has one, a cancelled one ends with Canceled."""
    errors = [error_view(e) for e in job.errors]
    if not errors and job.status is Status.FAILED:
        errors.append(failed_error(job.error_message))
    if job.status is Status.CANCELLED:
        errors.append(cancelled_error(job.result_message))
    return errors


def job_document(job: Job, *, now: float) -> dict[str, Any]:
    return {
        "jobId": job.id,
        "status": STATUS_NAMES[job.status],
        "stage": stage(job),
        "createdUtc": iso_s(job.created_at),
        "startedUtc": iso_s(job.started_at),
        "endedUtc": iso_s(job.completed_at),
        "correlationId": job.correlation_id,
        "steps": [_step_view(s, now) for s in job.steps],
        "output": output_of(job),
        "warnings": list(job.warnings),
        "errors": errors_of(job) if job.status.terminal else [error_view(e) for e in job.errors],
        "progressPct": round(float(job.progress.get("pct", 0))) if job.progress else None,
        "attempt": job.attempt,
        "retryOf": job.retry_of,
    }


def cancelled_error(message: str | None) -> dict[str, Any]:
    return {"code": CANCELED, "message": message or "The job was cancelled.",
            "remediation": "Retry the job to run it again."}


def failed_error(message: str | None) -> dict[str, Any]:
    return {"code": "JobFailed", "message": message or "The job failed.",
            "remediation": "See the job's log for details."}


def problem(status: int, title: str, detail: str, *, correlation_id: str, trace_id: str,
            kind: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An RFC 7807 problem document in the dialect's shape."""
    body: dict[str, Any] = {
        "type": f"https://jobserver.dev/errors/{kind or f'E{status}'}",
        "title": title,
        "status": status,
        "detail": detail,
        "correlationId": correlation_id,
        "traceId": trace_id,
    }
    if extra:
        body.update(extra)
    return body
