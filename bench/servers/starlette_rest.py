"""REST baseline: the handlers of rest_handlers.py, the usual Starlette way,
served by uvicorn. Run:
`BENCH_JWT_SECRET=... uvicorn bench.servers.starlette_rest:app`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.servers import rest_handlers


async def create_job(request: Request) -> JSONResponse:
    status, doc = rest_handlers.create(request.headers.get("authorization", ""),
                                       await request.body())
    return JSONResponse(doc, status_code=status)


async def get_job(request: Request) -> JSONResponse:
    status, doc = rest_handlers.get(request.headers.get("authorization", ""),
                                    request.path_params["job_id"])
    return JSONResponse(doc, status_code=status)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/api/v1/jobs", create_job, methods=["POST"]),
    Route("/api/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/health", health),
])
