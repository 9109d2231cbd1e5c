"""The stream contract end to end: one connection, many topics subscribed at run
time, through a probe dialect registered like any other (a session class and a
route row), on the raw data plane and on the ASGI fallback.

The probe's client sends `sub JOB AFTER` / `unsub JOB` / `tick SECONDS`; the
server sends each followed job's events as logs-dialect messages with `seq`,
`{"type": "end", "job": ...}` when a topic ends, and `{"type": "tick"}` when
the session's timer fires.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from jobserver.auth import Principal
from jobserver.core import events as ev
from jobserver.core.ids import parse_job_id
from jobserver.core.topics import JobTopic, Topic
from jobserver.dataplane.routes import DEFAULT_ROUTES, Route, RouteTable
from jobserver.dialects import (
    Accept,
    Action,
    Authenticate,
    BaseSession,
    Close,
    Need,
    Rendered,
    SessionEnv,
    StreamRequest,
    Subscribe,
    Timer,
    Unsubscribe,
    dumps,
)
from jobserver.server import Server, serve

from .conftest import Harness, make_config
from .test_dataplane_helpers import RawWebSocket, submit_command

TOPICS = 50
BEHIND = 5
HISTORY_LINES = 20000  # each of the jobs whose subscriber starts behind
LIVE_LINES = 200


class ProbeRenderer:
    """Every event as `{"type", "job", "seq"}` (and the line of a log event)."""

    key = "probe"

    def render(self, event: Any) -> Rendered:
        body = {"type": event.TYPE, "job": event.job_id, "seq": event.seq}
        if isinstance(event, ev.Log):
            body["line"] = event.line
        return Rendered((dumps(body),), end=isinstance(event, (ev.Finished, ev.Deleted)))

    def advance(self, event: Any) -> None:
        pass

    def after(self, event: Any) -> ProbeRenderer:
        return self


class ProbeSession(BaseSession):
    def __init__(self, request: StreamRequest, env: SessionEnv) -> None:
        self.token = request.query.get("token")

    def open(self) -> Sequence[Action]:
        return (Authenticate(self.token),)

    def on_result(self, need: Need, result: object) -> Sequence[Action]:
        if isinstance(result, Principal):
            return (Accept(), dumps({"type": "hello"}))
        return (Accept(), Close(1008, "who are you"))

    def on_message(self, message: str | bytes) -> Sequence[Action]:
        assert isinstance(message, str)
        verb, _, rest = message.partition(" ")
        if verb == "tick":
            return (Timer(float(rest)),)
        job_id = parse_job_id(rest.split()[0])
        assert job_id is not None
        if verb == "unsub":
            return (Unsubscribe(JobTopic(job_id)), dumps({"type": "unsubscribed", "job": job_id}))
        return (Subscribe(JobTopic(job_id), int(rest.split()[1]), ProbeRenderer()),)

    def on_end(self, topic: Topic) -> Sequence[Action]:
        assert isinstance(topic, JobTopic)
        return (dumps({"type": "end", "job": topic.job_id}),)

    def on_tick(self, now: float) -> Sequence[Action]:
        return (dumps({"type": "tick"}),)


PROBE_ROUTES = RouteTable((
    *DEFAULT_ROUTES.routes,
    Route("probe", "ws", re.compile(r"/test/probe"), ProbeSession),
))


@asynccontextmanager
async def probe_server(data_dir: Path) -> AsyncIterator[Harness]:
    import httpx

    from jobserver.auth import KeyRing

    config = make_config(data_dir, kill_grace=1.0, slots=64)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(lambda task_status: serve(
            config, routes=PROBE_ROUTES, task_status=task_status))
        keys = KeyRing.load_or_create(data_dir)
        async with httpx.AsyncClient(base_url=server.url, timeout=20.0) as client:
            yield Harness(server, client, keys.issue("root", "admin"),
                          keys.issue("alice", "user"), keys.issue("bob", "user"), data_dir)
        server.request_shutdown()


GATED = ("import os, sys, time\n"
         "n = int(sys.argv[2]); w = sys.stdout.write\n"
         "for i in range(n): w('early %d\\n' % i)\n"
         "sys.stdout.flush()\n"
         "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
         "for i in range(int(sys.argv[3])): w('late %d\\n' % i)\n")


async def _jobs(h: Harness, go: Path) -> list[dict[str, Any]]:
    jobs = []
    for i in range(TOPICS):
        early = HISTORY_LINES if i < BEHIND else 1
        jobs.append(await submit_command(h, ["python3", "-c", GATED, str(go), str(early),
                                             str(LIVE_LINES)]))
    for job in jobs:  # every job has printed its early lines and waits for `go`
        with trio.fail_after(30):
            while (await h.job(job["id"]))["last_seq"] < 2 + (HISTORY_LINES if job in jobs[:BEHIND]
                                                              else 1):
                await trio.sleep(0.02)
    return jobs


async def _probe(h: Harness, stream: trio.SocketStream | None = None) -> RawWebSocket:
    ws = await RawWebSocket.connect(h.server.port, f"/test/probe?token={h.admin}",
                                    stream=stream)
    assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["hello"]
    return ws


async def _fifty_topics(h: Harness, ws: RawWebSocket) -> None:
    go = h.data_dir / "go"
    jobs = await _jobs(h, go)
    behind = {j["id"] for j in jobs[:BEHIND]}
    starts: dict[str, int] = {}
    for job in jobs:
        current = (await h.job(job["id"]))["last_seq"]
        starts[job["id"]] = 0 if job["id"] in behind else current
        await ws.send_text(f"sub {job['id']} {starts[job['id']]}")
    seqs: dict[str, list[int]] = defaultdict(list)
    order: list[str] = []  # the job of each log message, in arrival order
    ended: set[str] = set()
    go.touch()
    # Nothing is read until every live job has printed all its lines: the slow
    # catch-ups (megabytes, paced by this socket) cannot have finished by then,
    # so the order below shows whether live lines were held behind them, not
    # which of the jobs' processes and the catch-ups a busy machine ran first.
    for job in jobs[BEHIND:]:
        await h.wait(job["id"])
    with trio.fail_after(90):
        async with aclosing(ws.messages()) as messages:
            async for text in messages:
                message = json.loads(text)
                if message["type"] == "end":
                    ended.add(message["job"])
                    if len(ended) == TOPICS:
                        break
                    continue
                job_id = message["job"]
                seqs[job_id].append(message["seq"])
                if message["type"] == "log":
                    order.append(job_id)
    await ws.close()
    for job in jobs:
        final = await h.wait(job["id"])
        got = seqs[job["id"]]
        # Every event after the cursor, in order, none twice, up to the end.
        assert got == sorted(set(got)), job["id"]
        assert got[0] == starts[job["id"]] + 1 and got[-1] == final["last_seq"], job["id"]
    # The live topics' lines did not wait for the slow catch-ups to finish.
    last_behind = max(i for i, j in enumerate(order) if j in behind)
    first_live = min(i for i, j in enumerate(order) if j not in behind)
    assert first_live < last_behind


async def test_fifty_subscriptions_five_behind_on_the_raw_data_plane(data_dir: Path) -> None:
    async with probe_server(data_dir) as h:
        ws = await _probe(h)
        try:
            await _fifty_topics(h, ws)
        finally:
            await ws.aclose()


async def test_unsubscribe_and_timer_at_run_time(data_dir: Path) -> None:
    async with probe_server(data_dir) as h:
        ws = await _probe(h)
        try:
            a = await submit_command(h, ["python3", "-c", "import time\nfor i in range(400):"
                                         " print(i, flush=True); time.sleep(0.01)"])
            # b ends once a has been left (a fixed sleep raced a's first 20 lines).
            gate = h.data_dir / "b-may-end"
            b = await submit_command(h, ["python3", "-c", (
                "import os, sys, time\n"
                "while not os.path.exists(sys.argv[1]): time.sleep(0.005)"), str(gate)])
            await ws.send_text(f"sub {a['id']} 0")
            await ws.send_text(f"sub {b['id']} 0")
            await ws.send_text("tick 0.05")
            seen: dict[str, list[int]] = defaultdict(list)
            events: list[str] = []
            with trio.fail_after(30):
                async with aclosing(ws.messages()) as messages:
                    async for text in messages:
                        message = json.loads(text)
                        events.append(message["type"])
                        if message["type"] == "log" and message["job"] == a["id"] \
                                and len(seen[a["id"]]) == 20:
                            await ws.send_text(f"unsub {a['id']}")
                        if message["type"] == "unsubscribed":
                            unsubscribed_at = len(seen[a["id"]])
                            gate.touch()
                        if "seq" in message:
                            seen[message["job"]].append(message["seq"])
                        if message["type"] == "end":
                            assert message["job"] == b["id"]  # a's topic was left, not ended
                            break
            assert "tick" in events
            # After the unsubscribe took effect, none of a's events arrived.
            assert len(seen[a["id"]]) == unsubscribed_at < 400
            assert seen[b["id"]] == list(range(1, len(seen[b["id"]]) + 1))
            await h.client.post(f"/api/v1/jobs/{a['id']}/cancel", headers=h.auth(h.admin))
            await ws.close()
        finally:
            await ws.aclose()


async def test_fifty_subscriptions_on_the_asgi_fallback(data_dir: Path) -> None:
    async with probe_server(data_dir) as h:
        stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head or not head.rstrip().endswith(b"}"):
            head += await stream.receive_some(65536)
        ws = await _probe(h, stream)
        try:
            await _fifty_topics(h, ws)
        finally:
            await ws.aclose()
