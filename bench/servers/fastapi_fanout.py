"""Baseline (a): the broadcast most Python users would write.

FastAPI on uvicorn (uvloop, httptools, the `websockets` library), a dict of
job id -> set of WebSocket, and one `await ws.send_text()` per event per
subscriber. Run: `uvicorn bench.servers.fastapi_fanout:app --ws websockets`.
The control surface is described in bench/servers/__init__.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from fastapi import BackgroundTasks, FastAPI, WebSocket, WebSocketDisconnect

from bench.events import event_text, system_text

app = FastAPI()
topics: dict[str, set[WebSocket]] = defaultdict(set)
publishing = 0


@app.websocket("/api/v1/ws/jobs/{job_id}/logs")
async def logs(websocket: WebSocket, job_id: str, token: str = "") -> None:
    await websocket.accept()
    await websocket.send_text(system_text(job_id, time.time_ns()))
    topics[job_id].add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        topics[job_id].discard(websocket)


async def broadcast(job_id: str, texts: list[str]) -> None:
    subscribers = topics[job_id]
    for websocket in list(subscribers):
        try:
            for text in texts:
                await websocket.send_text(text)
        except Exception:  # the subscriber went away mid-send
            subscribers.discard(websocket)


async def publish(job_id: str, count: int, burst: int, rate: float) -> None:
    global publishing
    publishing += 1
    try:
        loop = asyncio.get_running_loop()
        interval = burst / rate if rate > 0 else 0.0
        next_at = loop.time()
        for start in range(0, count, burst):
            if interval:
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
                next_at += interval
            else:
                await asyncio.sleep(0)
            now = time.time_ns()
            texts = [event_text(seq, now) for seq in range(start, min(start + burst, count))]
            await broadcast(job_id, texts)
    finally:
        publishing -= 1


@app.post("/publish", status_code=202)
async def start_publishing(job: str, count: int, burst: int, rate: float,
                           background: BackgroundTasks) -> dict[str, int]:
    background.add_task(publish, job, count, max(burst, 1), rate)
    return {"publishing": publishing + 1}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"subscribers": sum(len(s) for s in topics.values()), "publishing": publishing}


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
