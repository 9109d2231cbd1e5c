"""The live dialect driven the way its original client drives it.

`Tracker` follows meetoseh/frontend-web's `trackJobProgress.ts` (read, not
copied): it sends `authorize` once the socket opens; the first packet must be
a successful `auth_response`; after it every packet must be a successful
`event_batch`, anything else is an error; it follows every `spawned` child on
a connection of its own, shows the last event of each batch, ends at the first
`failed` / `succeeded` event or `final` indicator and then closes the socket
itself; on an error or a close before the end it reconnects at once, and it
gives up when a failure comes less than a second after the previous one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .conftest import Harness
from .live_helpers import authorize, connect, progress_job, progress_token
from .test_dataplane_helpers import RawWebSocket, running_server

FINAL_TYPES = ("failed", "succeeded")


class ClientError(Exception):
    """What makes the original client throw (and reconnect)."""


@dataclass
class Tracker:
    h: Harness
    # The test's stand-in for the network: the connection number to cut mid-stream,
    # after its first batch.
    cut: set[int] = field(default_factory=set)
    shown: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    results: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    connections: int = 0
    given_up: bool = False

    async def track(self, uid: str, jwt: str, nursery: trio.Nursery) -> None:
        last_failed: float | None = None
        while True:
            try:
                await self._once(uid, jwt, nursery)
                return
            except ClientError as exc:
                self.failures.append(f"{uid}: {exc}")
                now = trio.current_time()
                if last_failed is not None and now - last_failed < 1.0:
                    self.given_up = True
                    return
                last_failed = now

    async def _once(self, uid: str, jwt: str, nursery: trio.Nursery) -> None:
        self.connections += 1
        number = self.connections
        ws = await connect(self.h)
        try:
            await ws.send_text(authorize(uid, jwt))
            async with contextlib.aclosing(ws.messages()) as packets:
                await self._read(uid, number, ws, packets, nursery)
        finally:
            await ws.aclose()

    async def _read(self, uid: str, number: int, ws: RawWebSocket, packets: Any,
                    nursery: trio.Nursery) -> None:
        auth = await _next(packets, ws)
        if auth.get("type") != "auth_response" or auth.get("success") is not True:
            raise ClientError(f"auth failed: {auth}")
        while True:
            packet = await _next(packets, ws)
            if packet.get("type") != "event_batch" or packet.get("success") is not True:
                raise ClientError(f"unexpected packet {packet}")
            events = packet["data"]["events"]
            for event in events:
                if event["type"] == "spawned" and event["spawned"] is not None:
                    child = event["spawned"]
                    nursery.start_soon(self.track, child["uid"], child["jwt"], nursery)
            final = next((e for e in events if e["type"] in FINAL_TYPES or (
                e["indicator"] is not None and e["indicator"]["type"] == "final")), None)
            if final is not None:
                self.results[uid] = final["type"] == "succeeded"
            if events:
                last = events[-1]
                indicator = last["indicator"]
                if indicator is not None and indicator["type"] == "final":
                    indicator = None
                self.shown.setdefault(uid, []).append((last["message"], indicator))
            if final is not None:
                await ws.close()
                return
            if number in self.cut:
                raise ClientError("the network dropped the connection")


async def _next(packets: Any, ws: RawWebSocket) -> dict[str, Any]:
    try:
        text = await packets.__anext__()
    except StopAsyncIteration:
        raise ClientError(f"connection closed ({ws.close_code})") from None
    packet: dict[str, Any] = json.loads(text)
    return packet


async def test_the_original_client_follows_a_job_through_a_reconnect(data_dir: Path) -> None:
    """Cut after its first batch, the client reconnects and gets the history again,
    up to the final event; pings keep its quiet stretches alive without a text
    keep-alive it would choke on."""
    async with running_server(data_dir, live_batch_window=0.02, ws_ping_interval=0.05,
                              ws_ping_timeout=1.0) as h:
        go = h.data_dir / "go"
        job = await progress_job(h, 3, go=go)
        token = await progress_token(h, job["id"])
        await h.wait(job["id"], "RUNNING")
        tracker = Tracker(h, cut={1})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.track, job["id"], token, nursery)
            await trio.sleep(0.5)  # quiet: several ping intervals on the second connection
            go.touch()
    assert not tracker.given_up
    assert tracker.failures == [f"{job['id']}: the network dropped the connection"]
    assert tracker.connections == 2
    assert tracker.results == {job["id"]: True}
    shown = tracker.shown[job["id"]]
    assert shown[0] == ("started", {"type": "spinner"})  # the first batch's last event
    assert shown[-1] == ("Completed successfully.", None)


async def test_a_client_that_reconnects_after_the_end_gets_the_final_event(
        data_dir: Path) -> None:
    """Cut right before the end, the client's reconnect finds the job finished: it
    gets the whole history, final event included, and stops."""
    async with running_server(data_dir, live_batch_window=0.02) as h:
        go = h.data_dir / "go"
        job = await progress_job(h, 2, go=go, code=4)
        token = await progress_token(h, job["id"])
        await h.wait(job["id"], "RUNNING")
        tracker = Tracker(h)
        ws = await connect(h)  # the client's first connection, lost before the end
        try:
            await ws.send_text(authorize(job["id"], token))
            go.touch()
            await h.wait(job["id"])
        finally:
            await ws.aclose()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.track, job["id"], token, nursery)
    assert not tracker.given_up and tracker.connections == 1
    assert tracker.results == {job["id"]: False}
    # One batch, the whole story; the client shows its last event.
    assert tracker.shown[job["id"]] == [("exited with code 4", None)]


async def test_the_original_client_follows_spawned_children(data_dir: Path) -> None:
    async with running_server(data_dir, live_batch_window=0.02) as h:
        parent = await h.submit("spawner")
        token = await progress_token(h, parent["id"], token=h.alice)
        tracker = Tracker(h)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.track, parent["id"], token, nursery)
    assert not tracker.failures and not tracker.given_up
    assert len(tracker.results) == 2 and all(tracker.results.values())
    assert tracker.connections == 2
