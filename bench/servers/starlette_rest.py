"""REST baseline: jobserver's `POST /api/v1/jobs` and `GET /api/v1/jobs/{id}`,
written the usual Starlette way and served by uvicorn.

The same work per request as the native API, minus persistence: verify an
HS256 JWT (exp, iat and sub required, key from BENCH_JWT_SECRET), parse and
validate the JSON body against the known templates, create a QUEUED job record
in a dict, and render the job as JSON; GET parses the id as a UUID and answers
404 for unknown ids and for other users' jobs. Run:
`BENCH_JWT_SECRET=... uvicorn bench.servers.starlette_rest:app`.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SECRET = os.environ.get("BENCH_JWT_SECRET", "")
TEMPLATES = {"bench-true", "bench-emit", "bench-seq"}
jobs: dict[str, dict[str, Any]] = {}


def problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status)


def principal(request: Request) -> dict[str, Any] | None:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer "):
        return None
    try:
        claims: dict[str, Any] = jwt.decode(header[7:], SECRET, algorithms=["HS256"],
                                            options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError:
        return None
    return claims


async def create_job(request: Request) -> JSONResponse:
    claims = principal(request)
    if claims is None:
        return problem(401, "missing or invalid token")
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "body is not JSON")
    if not isinstance(body, dict) or body.get("template") not in TEMPLATES:
        return problem(422, "unknown template")
    params = body.get("params", {})
    if not isinstance(params, dict):
        return problem(422, "params must be an object")
    job = {"id": str(uuid.uuid4()), "owner": claims["sub"], "template": body["template"],
           "kind": "job", "params": params, "status": "QUEUED", "created_at": time.time(),
           "started_at": None, "completed_at": None, "pid": None, "exit_code": None,
           "result_message": None, "error_message": None, "log_snippet": None, "steps": []}
    jobs[job["id"]] = job
    return JSONResponse(job, status_code=201)


async def get_job(request: Request) -> JSONResponse:
    claims = principal(request)
    if claims is None:
        return problem(401, "missing or invalid token")
    try:
        job_id = str(uuid.UUID(request.path_params["job_id"]))
    except ValueError:
        return problem(404, "no such job")
    job = jobs.get(job_id)
    if job is None or (job["owner"] != claims["sub"] and claims.get("role") != "admin"):
        return problem(404, "no such job")
    return JSONResponse(job)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/api/v1/jobs", create_job, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/health", health),
])
