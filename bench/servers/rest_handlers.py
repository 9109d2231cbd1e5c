"""The REST baselines' work per request, apart from any framework.

jobserver's `POST /api/v1/jobs` and `GET /api/v1/jobs/{id}` minus
persistence: verify an HS256 JWT (exp, iat and sub required, key from
BENCH_JWT_SECRET), parse and validate the JSON body against the known
templates, create a QUEUED job record in a dict, and give the job as a dict;
GET parses the id as a UUID and answers 404 for unknown ids and for other
users' jobs. Each call returns (status, document): the adapters
(starlette_rest.py, quart_rest.py) only carry them in and out, so the two
baselines differ by their framework and server alone.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import jwt

SECRET = os.environ.get("BENCH_JWT_SECRET", "")
TEMPLATES = {"bench-true", "bench-emit", "bench-seq"}
jobs: dict[str, dict[str, Any]] = {}


def problem(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": status, "message": message}}


def principal(header: str) -> dict[str, Any] | None:
    if not header.startswith("Bearer "):
        return None
    try:
        claims: dict[str, Any] = jwt.decode(header[7:], SECRET, algorithms=["HS256"],
                                            options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError:
        return None
    return claims


def create(authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
    claims = principal(authorization)
    if claims is None:
        return problem(401, "missing or invalid token")
    try:
        doc = json.loads(body)
    except ValueError:
        return problem(400, "body is not JSON")
    if not isinstance(doc, dict) or doc.get("template") not in TEMPLATES:
        return problem(422, "unknown template")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        return problem(422, "params must be an object")
    job = {"id": str(uuid.uuid4()), "owner": claims["sub"], "template": doc["template"],
           "kind": "job", "params": params, "status": "QUEUED", "created_at": time.time(),
           "started_at": None, "completed_at": None, "pid": None, "exit_code": None,
           "result_message": None, "error_message": None, "log_snippet": None, "steps": []}
    jobs[job["id"]] = job
    return 201, job


def get(authorization: str, job_id: str) -> tuple[int, dict[str, Any]]:
    claims = principal(authorization)
    if claims is None:
        return problem(401, "missing or invalid token")
    try:
        key = str(uuid.UUID(job_id))
    except ValueError:
        return problem(404, "no such job")
    job = jobs.get(key)
    if job is None or (job["owner"] != claims["sub"] and claims.get("role") != "admin"):
        return problem(404, "no such job")
    return 200, job
