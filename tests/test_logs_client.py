"""The logs dialect driven the way its original client drives it.

The client is a React hook, `useJobLogs` (softerist/subro_web,
frontend/src/features/jobs/hooks/useJobLogs.ts). What it does, read from its
source (docs/dialects/logs.md, "Its original client"):

- it opens `/api/v1/ws/jobs/{id}/logs?token=...` with no `since`, whether the
  job runs or has finished, and shows only what arrives on the socket;
- it drops `system` messages, and appends every other message unless one with
  the same `payload.message` and `payload.ts` is already shown;
- a `status` message sets its status; on close 1000 a status still CONNECTED
  becomes COMPLETED, any other is kept; any other close is DISCONNECTED;
- it connects again only when its job or its token changes, and only when
  the job it shows had not ended: again without `since`, keeping what it shows
  and deduplicating the replay by the same rule.

`HookView` below does exactly that; the tests check what a person would see.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import Harness
from .test_dataplane_helpers import (
    RawWebSocket,
    each_text_frame,
    logs_path,
    rss_bytes,
    running_server,
    submit_command,
)
from .test_frontdoor import _ws_after_rest

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "COMPLETED")
# Rounds of "submit a fast-failing job, connect at once" (the race the hook lost).
ROUNDS = int(os.environ.get("JOBSERVER_TEST_HOOK_ROUNDS", "6"))
# Lines of the replayed log (the million by default).
REPLAY_LINES = int(os.environ.get("JOBSERVER_TEST_REPLAY_LINES", "1000000"))
# Prints a line on each stream, waits for its go file, exits 2.
FAIL_WHEN_TOLD = ("import os, sys, time\nprint('out line', flush=True)\n"
                  "print('err line', file=sys.stderr, flush=True)\n"
                  "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\nsys.exit(2)")


@dataclass
class HookView:
    """What `useJobLogs` shows: its message list and its status."""

    shown: list[dict[str, Any]] = field(default_factory=list)
    status: str = "CONNECTING"
    raw: list[dict[str, Any]] = field(default_factory=list)  # this connection's messages

    def opened(self) -> None:
        self.status = "CONNECTED"
        self.raw = []

    def on_message(self, text: str) -> None:
        data = json.loads(text)
        self.raw.append(data)
        if data["type"] == "system":
            return
        payload = data["payload"]
        if not any(m["payload"].get("message") == payload.get("message")
                   and m["payload"].get("ts") == payload.get("ts") for m in self.shown):
            self.shown.append(data)
        if data["type"] == "status" and payload.get("status"):
            self.status = payload["status"]

    def on_close(self, code: int) -> None:
        if code == 1000:
            self.status = "COMPLETED" if self.status == "CONNECTED" else self.status
        else:
            self.status = "DISCONNECTED"

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    def lines(self) -> list[tuple[str, str]]:
        return [(m["payload"]["stream"], m["payload"]["message"])
                for m in self.shown if m["type"] == "log"]

    async def follow(self, ws: RawWebSocket, *, limit: int | None = None) -> None:
        """Read as the hook's onmessage does (all of it, or `limit` messages)."""
        async for text in ws.messages(limit=limit):
            self.on_message(text)
        if limit is None:
            assert ws.close_code is not None
            self.on_close(ws.close_code)


async def watch(h: Harness, job_id: str, view: HookView | None = None) -> HookView:
    """One connection of the hook, to the end."""
    view = view or HookView()
    ws = await RawWebSocket.connect(h.server.port, logs_path(job_id, h.admin))
    view.opened()
    return await to_the_end(view, ws)


async def to_the_end(view: HookView, ws: RawWebSocket) -> HookView:
    try:
        with trio.fail_after(20):
            await view.follow(ws)
    finally:
        await ws.aclose()
    return view


async def rest_lines(h: Harness, job_id: str) -> list[tuple[str, str]]:
    """The job's log as the REST API has it (the reference)."""
    r = await h.client.get(f"/api/v1/jobs/{job_id}/logs?streams=1", headers=h.auth(h.admin))
    assert r.status_code == 200, r.text
    tagged = (line.partition(" ") for line in r.text.splitlines())
    return [(stream.strip("[]"), text) for stream, _, text in tagged]


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir) as harness:
        yield harness


def check_failed_view(view: HookView, job_id: str) -> None:
    assert view.status == "FAILED"
    assert sorted(view.lines()) == [("stderr", "err line"), ("stdout", "out line")]
    types = [m["type"] for m in view.shown]
    assert types[:2] == ["info", "status"] and types[-1] == "status"
    assert view.shown[-1]["payload"]["job_id"] == job_id
    assert view.shown[-1]["payload"]["exit_code"] == 2


async def test_a_job_that_failed_before_the_hook_connected(h: Harness) -> None:
    job = await submit_command(h, ["python3", "-c", FAIL_WHEN_TOLD, "/"])  # "/" exists
    await h.wait(job["id"])
    view = await watch(h, job["id"])
    check_failed_view(view, job["id"])
    assert sorted(view.lines()) == sorted(await rest_lines(h, job["id"]))
    # Its original server's order: system first, then history, then the close.
    assert view.raw[0]["type"] == "system"


async def test_a_job_that_printed_before_the_hook_connected_then_failed(h: Harness) -> None:
    go = h.data_dir / "go-fail"
    job = await submit_command(h, ["python3", "-c", FAIL_WHEN_TOLD, str(go)])
    with trio.fail_after(10):
        while (await h.job(job["id"]))["last_seq"] < 4:  # queued, started, two lines
            await trio.sleep(0.01)
    ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin))
    view = HookView()
    view.opened()
    with trio.fail_after(10):
        await view.follow(ws, limit=5)  # system, info, RUNNING, the two lines
    assert view.status == "RUNNING" and len(view.lines()) == 2
    go.touch()
    check_failed_view(await to_the_end(view, ws), job["id"])


async def test_connecting_right_after_submitting_misses_nothing(h: Harness) -> None:
    """Whatever the job is doing when the socket opens (queued, running, done), the
    hook ends up showing both its lines and FAILED: the race it used to lose."""
    for _ in range(ROUNDS):
        job = await h.submit("exit", {"code": 2})
        view = await watch(h, job["id"])
        check_failed_view(view, job["id"])
        assert [m["type"] for m in view.raw].count("log") == 2  # none twice


async def test_the_hooks_reconnect_gets_the_log_again_without_duplicates(h: Harness) -> None:
    """The hook connects again (a new token) while the job runs: the replay is the
    log so far, once, and the hook shows every line once."""
    go = h.data_dir / "go-reconnect"
    job = await submit_command(h, ["python3", "-c", (
        "import os, sys, time\nfor i in range(5): print('early', i, flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
        "for i in range(5): print('late', i)\n"), str(go)])
    with trio.fail_after(10):
        while (await h.job(job["id"]))["last_seq"] < 7:
            await trio.sleep(0.01)
    view = HookView()
    for _ in range(2):
        ws = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin))
        view.opened()
        with trio.fail_after(10):
            await view.follow(ws, limit=8)  # system, info, RUNNING, five lines
        await ws.close()
        await ws.collect()
        await ws.aclose()
        assert [m["payload"].get("message") for m in view.raw if m["type"] == "log"] == [
            f"early {i}" for i in range(5)]
    assert not view.ended
    go.touch()
    view = await watch(h, job["id"], view)
    assert [m["payload"]["message"] for m in view.raw if m["type"] == "log"] == [
        *(f"early {i}" for i in range(5)), *(f"late {i}" for i in range(5))]
    assert [line for _, line in view.lines()] == [
        *(f"early {i}" for i in range(5)), *(f"late {i}" for i in range(5))]
    assert view.status == "SUCCEEDED"
    assert [m["type"] for m in view.shown].count("info") == 1


async def test_on_a_keep_alive_connection_too(h: Harness) -> None:
    """The ASGI fallback runs the same session: the same history."""
    job = await h.submit("exit", {"code": 2})
    await h.wait(job["id"])
    ws = await _ws_after_rest(h, job["id"], logs_path(job["id"], h.admin))
    view = HookView()
    view.opened()
    check_failed_view(await to_the_end(view, ws), job["id"])


async def test_a_million_line_log_streams_with_flat_memory(h: Harness) -> None:
    """The replay reads the store a page at a time and waits for the socket: the
    server's memory stays flat while it sends a log far larger than it could hold."""
    job = await h.submit("chatty", {"lines": REPLAY_LINES})
    await h.wait(job["id"], timeout=120)
    base = peak = rss_bytes()
    count = size = 0
    last = b""
    expected = 0

    def on_text(payload: bytes) -> None:
        nonlocal count, size, last, expected
        count += 1
        size += len(payload)
        if payload.startswith(b'{"type":"log"'):
            # The lines in order, each once (cheaply: no JSON parse per line).
            assert payload.endswith(b'"message":"line %d"}}' % expected), payload
            expected += 1
        last = payload

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes())
            await trio.sleep(0.02)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        with trio.fail_after(60):
            code = await each_text_frame(h.server.port, logs_path(job["id"], h.alice), on_text)
        nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    assert code == 1000 and expected == REPLAY_LINES
    assert count == REPLAY_LINES + 4  # system, info, RUNNING, the lines, SUCCEEDED
    assert json.loads(last)["payload"]["status"] == "SUCCEEDED"
    grew = peak - base
    assert grew < size // 4, (
        f"RSS grew {grew >> 20} MiB while sending {size >> 20} MiB in {elapsed:.1f} s")
