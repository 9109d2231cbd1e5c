"""Baseline (b): the same fan-out through Quart-Trio's own websocket route.

Quart-Trio on hypercorn's trio worker, a dict of job id -> set of websocket
objects, and one `await websocket.send()` per event per subscriber. Run:
`hypercorn --worker-class trio bench.servers.quart_fanout:app`. The control
surface is described in bench/servers/__init__.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, cast

import trio
from quart import request, websocket
from quart_trio import QuartTrio

from bench.events import event_text, system_text

app = QuartTrio(__name__)
topics: dict[str, set[Any]] = defaultdict(set)
publishing = 0


@app.websocket("/api/v1/ws/jobs/<job_id>/logs")
async def logs(job_id: str) -> None:
    await websocket.accept()
    await websocket.send(system_text(job_id, time.time_ns()))
    # The object behind Quart's context-local proxy, usable from the publisher's task.
    subscriber = cast(Any, websocket)._get_current_object()
    topics[job_id].add(subscriber)
    try:
        while True:
            await websocket.receive()
    finally:
        topics[job_id].discard(subscriber)


async def broadcast(job_id: str, texts: list[str]) -> None:
    subscribers = topics[job_id]
    for subscriber in list(subscribers):
        try:
            for text in texts:
                await subscriber.send(text)
        except Exception:  # the subscriber went away mid-send
            subscribers.discard(subscriber)


async def publish(job_id: str, count: int, burst: int, rate: float) -> None:
    global publishing
    publishing += 1
    try:
        interval = burst / rate if rate > 0 else 0.0
        next_at = trio.current_time()
        for start in range(0, count, burst):
            if interval:
                await trio.sleep_until(next_at)
                next_at += interval
            else:
                await trio.lowlevel.checkpoint()
            now = time.time_ns()
            texts = [event_text(seq, now) for seq in range(start, min(start + burst, count))]
            await broadcast(job_id, texts)
    finally:
        publishing -= 1


@app.post("/publish")
async def start_publishing() -> tuple[dict[str, int], int]:
    args = request.args
    app.add_background_task(publish, args["job"], int(args["count"]),
                            max(int(args.get("burst", 1)), 1), float(args.get("rate", 0)))
    return {"publishing": publishing + 1}, 202


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"subscribers": sum(len(s) for s in topics.values()), "publishing": publishing}


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
