"""REST baseline: the handlers of rest_handlers.py on Quart-Trio, served by
hypercorn's trio worker — jobserver's framework and server with none of
jobserver around them. Run:
`BENCH_JWT_SECRET=... hypercorn --worker-class trio bench.servers.quart_rest:app`.
"""

from __future__ import annotations

from typing import Any

from quart import request
from quart_trio import QuartTrio

from bench.servers import rest_handlers

app = QuartTrio(__name__)


@app.post("/api/v1/jobs")
async def create_job() -> tuple[dict[str, Any], int]:
    status, doc = rest_handlers.create(request.headers.get("Authorization", ""),
                                       await request.get_data())
    return doc, status


@app.get("/api/v1/jobs/<job_id>")
async def get_job(job_id: str) -> tuple[dict[str, Any], int]:
    status, doc = rest_handlers.get(request.headers.get("Authorization", ""), job_id)
    return doc, status


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True}
