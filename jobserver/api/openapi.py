"""The OpenAPI 3.1 document of the native API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from ..config import Config

_ERROR = {"$ref": "#/components/schemas/Error"}
_JOB = {"$ref": "#/components/schemas/Job"}
_ID = {"name": "job_id", "in": "path", "required": True,
       "schema": {"type": "string", "format": "uuid"}}


def _responses(ok: str, schema: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {ok: {"description": "OK"}}
    if schema is not None:
        out[ok]["content"] = {"application/json": {"schema": schema}}
    for status in (401, *errors):
        out[str(status)] = {"description": "Error",
                            "content": {"application/json": {"schema": _ERROR}}}
    return out


def openapi_document(config: Config) -> dict[str, Any]:
    job_list = {"type": "object", "properties": {
        "jobs": {"type": "array", "items": _JOB},
        "next_cursor": {"type": ["string", "null"]}}}
    query = [
        {"name": n, "in": "query", "schema": {"type": t}}
        for n, t in (("status", "string"), ("template", "string"), ("owner", "string"),
                     ("limit", "integer"), ("cursor", "string"))
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobserver", "version": "0.1.0",
                 "description": "Run commands as jobs and watch them live."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"},
                    "field": {"type": "string"}}},
                "Submit": {"type": "object", "properties": {
                    "template": {"type": "string"}, "params": {"type": "object"},
                    "command": {"type": "array", "items": {"type": "string"}}}},
                "Job": {"type": "object", "properties": {
                    "id": {"type": "string", "format": "uuid"}, "owner": {"type": "string"},
                    "template": {"type": "string"}, "kind": {"type": "string"},
                    "params": {"type": "object"},
                    "status": {"enum": ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED",
                                        "CANCELLED"]},
                    "created_at": {"type": "string"}, "started_at": {"type": ["string", "null"]},
                    "completed_at": {"type": ["string", "null"]},
                    "pid": {"type": ["integer", "null"]}, "command": {"type": ["string", "null"]},
                    "exit_code": {"type": ["integer", "null"]},
                    "result_message": {"type": ["string", "null"]},
                    "error_message": {"type": ["string", "null"]},
                    "log_snippet": {"type": ["string", "null"]},
                    "progress": {"type": ["object", "null"]}, "steps": {"type": "array"},
                    "result": {"type": ["object", "null"]},
                    "parent_id": {"type": ["string", "null"]}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/jobs": {
                "post": {"summary": "Submit a job",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/Submit"}}}},
                         "responses": _responses("201", _JOB, 400, 403, 413, 422)},
                "get": {"summary": "List jobs (newest first)", "parameters": query,
                        "responses": _responses("200", job_list, 422)},
            },
            "/api/v1/jobs/{job_id}": {
                "get": {"summary": "One job", "parameters": [_ID],
                        "responses": _responses("200", _JOB, 404)},
                "delete": {"summary": "Delete a finished job", "parameters": [_ID],
                           "responses": _responses("204", None, 404, 409)},
            },
            "/api/v1/jobs/{job_id}/cancel": {
                "post": {"summary": "Cancel a queued or running job", "parameters": [_ID],
                         "responses": _responses("202", _JOB, 404, 409)}},
            "/api/v1/jobs/{job_id}/events": {
                "get": {"summary": "Events after a seq (paged)", "parameters": [
                    _ID, {"name": "after", "in": "query", "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                        "responses": _responses("200", {"type": "object"}, 404, 422)}},
            "/api/v1/jobs/{job_id}/progress-token": {
                "get": {"summary": "A progress JWT for the live dialect (/api/2/jobs/live)",
                        "parameters": [_ID],
                        "responses": _responses("200", {"type": "object"}, 404)}},
            "/api/v1/jobs/{job_id}/logs": {
                "get": {"summary": "The log as plain text", "parameters": [_ID],
                        "responses": {"200": {"description": "text/plain log"}}}},
            "/api/v1/jobs/{job_id}/stream": {
                "get": {"summary": "Live events as Server-Sent Events (id = seq)",
                        "parameters": [_ID],
                        "responses": {"200": {"description": "text/event-stream"}}}},
            "/api/v1/templates": {
                "get": {"summary": "Templates you may run",
                        "responses": _responses("200", {"type": "object"})}},
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text/plain"}}}},
        },
    }
