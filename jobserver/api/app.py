"""The Quart-Trio application: routes, error rendering, health and metrics.

Rules: `create_app` is handed the running services; the app keeps no globals
and starts no background work. Every error a client can cause is rendered
here, the one place errors meet the wire: native JSON `{"code", "message"
[, "field"]}`, or an RFC 7807 problem under the jobs dialect's /api/jobs. An
unexpected exception is logged (path only, never the query or a token) and
shown as a plain 500. Every request has a correlation id (X-Correlation-ID,
taken or made) echoed in the response, and is counted once, by its route
template (never its path: no ids in labels), in the server's `Metrics`, which
/metrics renders.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import JobserverError
from ..metrics import CONTENT_TYPE, UNMATCHED
from .common import Services, services
from .jobs_dialect import jobs_api
from .jobs_views import problem
from .native import native
from .openapi import openapi_document
from .page import page

log = logging.getLogger("jobserver.http")


def create_app(svc: Services) -> QuartTrio:
    app = QuartTrio("jobserver")
    app.config["MAX_CONTENT_LENGTH"] = svc.config.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["jobserver"] = svc
    app.register_blueprint(native)
    app.register_blueprint(jobs_api)
    app.register_blueprint(page)
    app.register_error_handler(JobserverError, _jobserver_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.before_request(_correlation_id)
    app.after_request(_finish)
    app.add_url_rule("/healthz", view_func=healthz)
    app.add_url_rule("/api/v1/health", view_func=healthz, endpoint="api_health")
    app.add_url_rule("/metrics", view_func=metrics)
    app.add_url_rule("/openapi.json", view_func=openapi)
    return app


_CORRELATION = re.compile(r"^[\x21-\x7e]{1,128}$")
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}


def correlation_id() -> str:
    cid: str | None = getattr(g, "correlation_id", None)
    return cid or secrets.token_hex(16)


async def _correlation_id() -> None:
    g.began = time.perf_counter()
    given = request.headers.get("X-Correlation-ID")
    g.correlation_id = (given if given is not None and _CORRELATION.match(given)
                        else secrets.token_hex(16))


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    if request.path == "/api/jobs" or request.path.startswith("/api/jobs/"):
        doc = problem(status, _TITLES.get(status, "Error"), message,
                      correlation_id=correlation_id(),
                      trace_id=secrets.token_hex(7).upper(),  # made only for an error
                      kind=code, extra={"field": field} if field else None)
        response = Response(_json(doc), status=status, mimetype="application/problem+json")
    else:
        body: dict[str, Any] = {"code": code, "message": message}
        if field is not None:
            body["field"] = field
        response = Response(_json(body), status=status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _json(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


async def _jobserver_error(exc: JobserverError) -> Response:
    return error_response(exc.status_hint, exc.code, exc.message, exc.field)


async def _http_error(exc: HTTPException) -> Response:
    code = (exc.name or "error").lower().replace(" ", "_")
    return error_response(exc.code or 500, code, exc.description or exc.name or "error")


async def _unexpected(exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal", "internal server error")


async def healthz() -> dict[str, Any]:
    svc = services()
    return {
        "status": "ok" if svc.engine.accepting else "stopping",
        "uptime_seconds": round(time.time() - svc.started_at, 3),
        "running": svc.supervisor.running,
        "queued": len(svc.engine.queued_ids()),
    }


async def openapi() -> dict[str, Any]:
    return openapi_document(services().config)


async def metrics() -> Response:
    return Response(services().metrics.render(), content_type=CONTENT_TYPE)


async def _finish(response: Response) -> Response:
    """Every answer of the app, once: its X-Correlation-ID, and counted by
    method, route template and status."""
    response.headers["X-Correlation-ID"] = correlation_id()
    rule = request.url_rule
    began: float | None = getattr(g, "began", None)
    seconds = None if began is None else time.perf_counter() - began
    services().metrics.http_request(request.method, rule.rule if rule is not None else UNMATCHED,
                                    response.status_code, seconds)
    return response
