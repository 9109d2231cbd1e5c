"""The multiplex dialect (specs/dialect-multiplex-ws.md): every message type and
error code, against a real server and a real WebSocket client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto.events import BytesMessage

from jobserver.dialects.multiplex import idle_message

from .conftest import Harness
from .multiplex_helpers import ISO_Z, Msg, Mx, of_type, task_messages
from .test_dataplane_helpers import RawWebSocket, Rejected, running_server
from .test_frontdoor import Client, bearer, request

NOT_FOUND = "Cannot subscribe to non-existent task"


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    # One slot: a blocker holds it, so jobs submitted after it wait QUEUED.
    async with running_server(data_dir, slots=1) as harness:
        yield harness


async def blocker(h: Harness) -> dict[str, Any]:
    job = await h.submit("sleep", {"seconds": 30}, token=h.bob)
    await h.wait(job["id"], "RUNNING")
    return job


async def cancel(h: Harness, job: dict[str, Any], token: str | None = None) -> None:
    r = await h.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                            headers=h.auth(token or h.bob))
    assert r.status_code == 202, r.text


def shape(messages: list[Msg]) -> list[tuple[str, str, float | None]]:
    return [(m["type"], m["data"]["status"], m["data"].get("progress")) for m in messages]


async def mx_after_rest(h: Harness, token: str) -> Mx:
    """A /ws upgrade on a keep-alive connection that served a REST call first
    (the ASGI fallback)."""
    stream = await trio.open_tcp_stream("127.0.0.1", h.server.port)
    client = Client(stream)
    await client.send(request("GET", "/api/v1/jobs", headers=[bearer(token)]))
    assert (await client.response()).status == 200
    return await Mx.open(h.server.port, token, stream=stream)


@pytest.mark.parametrize("transport", ["raw", "asgi"])
async def test_execute_agent_updates_then_completion_with_result_and_cost(
        h: Harness, transport: str) -> None:
    mx = await (Mx.open(h.server.port, h.alice) if transport == "raw"
                else mx_after_rest(h, h.alice))
    await mx.send("execute_agent", {"agent_id": "code-agent", "task": "make it",
                                    "model_id": "gpt-4o-mini",
                                    "parameters": {"temperature": 0.2}})
    out = await mx.until(lambda m: m["type"] == "task_completion")
    task_id = out[0]["data"]["task_id"]
    assert shape(out) == [("task_update", "pending", 0.0), ("task_update", "in_progress", 0.0),
                          ("task_update", "in_progress", 0.25),
                          ("task_update", "in_progress", 0.5),
                          ("task_completion", "completed", 1.0)]
    assert all(m["data"]["task_id"] == task_id for m in out)
    for m in out[:-1]:
        assert set(m["data"]) == {"task_id", "status", "progress", "updated_at"}
        assert re.fullmatch(ISO_Z, m["data"]["updated_at"])
    done = out[-1]["data"]
    assert list(done) == ["task_id", "status", "progress", "result", "cost", "completed_at"]
    assert done["result"] == {"code": "MAKE IT", "model": "gpt-4o-mini", "temperature": 0.2,
                              "cost": 0.05}
    assert done["cost"] == 0.05 and re.fullmatch(ISO_Z, done["completed_at"])
    job = await h.job(task_id)
    assert job["owner"] == "alice" and job["template"] == "code-agent"
    assert job["params"] == {"task": "make it", "model_id": "gpt-4o-mini", "temperature": 0.2}
    await mx.aclose()


async def test_connection_established_and_a_bad_token(h: Harness) -> None:
    mx = await Mx.connect(h.server.port, h.alice)
    first = await mx.recv()
    assert first["type"] == "connection_established" and set(first["data"]) == {
        "client_id", "server_time"}
    assert first["data"]["client_id"].startswith("client-")
    assert re.fullmatch(ISO_Z, first["data"]["server_time"])
    other = await Mx.open(h.server.port, h.alice)
    await mx.aclose()
    await other.aclose()
    for token in (None, "", "not-a-jwt", h.alice[:-3] + "abc"):
        bad = await Mx.connect(h.server.port, token)
        assert await bad.rest() == [
            {"type": "error", "data": {"code": "unauthorized", "message": bad_token(token)}},
            {"type": "connection_closed", "data": {
                "reason": "unauthorized", "message": "A valid token is required: /ws?token=JWT"}}]
        assert bad.close_code == 1008
        await bad.aclose()


def bad_token(token: str | None) -> str:
    return "missing token" if not token else "invalid or expired token"


async def test_task_subscription_follows_a_queued_task_to_its_end(h: Harness) -> None:
    block = await blocker(h)
    job = await h.submit("progress", {"steps": 2})
    mx = await Mx.open(h.server.port, h.alice)
    await mx.send("subscribe", {"channel": "task", "task_id": job["id"]})
    assert await mx.sync() == []
    await cancel(h, block)
    out = await mx.until(lambda m: m["type"] == "task_completion")
    assert shape(out) == [("task_update", "in_progress", 0.0),
                          ("task_update", "in_progress", 0.5),
                          ("task_update", "in_progress", 1.0),
                          ("task_completion", "completed", 1.0)]
    # No cost reported: the field is left out.
    assert out[-1]["data"]["result"] == {"steps": 2} and "cost" not in out[-1]["data"]
    # The subscription ended with the task.
    await mx.send("unsubscribe", {"channel": "task", "task_id": job["id"]})
    assert (await mx.recv())["data"]["code"] == "invalid_subscription"
    await mx.aclose()


async def test_failed_and_cancelled_tasks_are_task_errors(h: Harness) -> None:
    mx = await Mx.open(h.server.port, h.alice)
    await mx.send("subscribe", {"channel": "tasks"})
    await mx.sync()
    failing = await h.submit("exit", {"code": 3})
    out = await mx.until(lambda m: m["type"] == "task_error")
    assert out[-1] == {"type": "task_error", "data": {
        "task_id": failing["id"], "status": "failed", "error": "exited with code 3",
        "updated_at": out[-1]["data"]["updated_at"]}}
    sleeper = await h.submit("sleep", {"seconds": 30})
    await h.wait(sleeper["id"], "RUNNING")
    await mx.send("cancel_task", {"task_id": sleeper["id"]})
    out = await mx.until(lambda m: m["type"] == "task_error")
    assert out[-1]["data"] == {"task_id": sleeper["id"], "status": "cancelled",
                               "error": "Job cancelled by user request.",
                               "updated_at": out[-1]["data"]["updated_at"]}
    assert (await h.job(sleeper["id"]))["status"] == "CANCELLED"
    await mx.aclose()


async def test_a_finished_task_answers_with_its_end_at_once(h: Harness) -> None:
    done = await h.submit("echo", {"message": "x"})
    failed = await h.submit("exit", {"code": 2})
    await h.wait(failed["id"])
    await h.wait(done["id"])
    mx = await Mx.open(h.server.port, h.alice)
    await mx.send("subscribe", {"channel": "task", "task_id": done["id"]})
    await mx.send("subscribe", {"channel": "task", "task_id": failed["id"]})
    out = await mx.sync()
    assert [(m["type"], m["data"]["status"]) for m in out] == [
        ("task_completion", "completed"), ("task_error", "failed")]
    assert out[0]["data"]["result"] == {} and out[1]["data"]["error"] == "exited with code 2"
    await mx.aclose()


async def test_pipeline_workflow_updates_in_order(h: Harness) -> None:
    block = await blocker(h)
    job = await h.submit("pipeline", {})
    mx = await Mx.open(h.server.port, h.alice)
    await mx.send("subscribe", {"channel": "workflow_execution", "execution_id": job["id"]})
    await mx.send("subscribe", {"channel": "task", "task_id": job["id"]})
    assert await mx.sync() == []
    await cancel(h, block)
    out = await mx.until(lambda m: m["type"] == "task_completion")
    flow = of_type(out, "workflow_execution_update")
    assert [(m["data"]["status"], m["data"]["current_step_id"]) for m in flow] == [
        ("in_progress", "fetch"), ("in_progress", "build"), ("in_progress", "publish"),
        ("completed", "publish")]
    for m in flow:
        assert set(m["data"]) == {"execution_id", "status", "current_step_id", "updated_at"}
        assert m["data"]["execution_id"] == job["id"]
    # One task_update for the run, not one per step.
    assert shape(task_messages(out, job["id"])) == [("task_update", "in_progress", 0.0),
                                                    ("task_completion", "completed", 1.0)]
    # A failing pipeline: the step it failed in, then failed.
    block = await blocker(h)
    failing = await h.submit("pipeline", {"fail_at": "build"})
    await mx.send("subscribe", {"channel": "workflow_execution", "execution_id": failing["id"]})
    await mx.sync()
    await cancel(h, block)
    out = await mx.until(lambda m: m["data"].get("status") == "failed")
    assert [(m["data"]["status"], m["data"]["current_step_id"]) for m in out] == [
        ("in_progress", "fetch"), ("in_progress", "build"), ("failed", "build")]
    await mx.aclose()


async def test_system_status_on_subscribe_on_change_and_periodically(data_dir: Path) -> None:
    async with running_server(data_dir, slots=1, multiplex_status_interval=0.3) as h:
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "system_status"})
        snapshot = await mx.recv()
        assert snapshot["type"] == "system_status_update"
        assert snapshot["data"]["active_tasks"] == 0 and snapshot["data"]["pending_tasks"] == 0
        job = await h.submit("sleep", {"seconds": 30}, token=h.bob)
        queued = await mx.until(lambda m: m["data"].get("pending_tasks") == 1)
        running = await mx.until(lambda m: m["data"].get("active_tasks") == 1)
        assert queued[-1]["data"]["active_tasks"] == 0
        assert running[-1]["data"]["pending_tasks"] == 0
        # Nothing changes now: the periodic updates keep coming.
        start = trio.current_time()
        ticks = [await mx.recv(2) for _ in range(3)]
        assert all(t["type"] == "system_status_update" for t in ticks)
        assert trio.current_time() - start < 5.0
        await mx.send("unsubscribe", {"channel": "system_status"})
        assert of_type(await mx.sync(), "system_status_update") in ([], [ticks[-1]], ticks[-1:])
        await cancel(h, job)
        await mx.aclose()


async def test_invalid_request_and_the_connection_stays_open(h: Harness) -> None:
    mx = await Mx.open(h.server.port, h.alice)
    cases: list[tuple[str, str, str | None]] = [
        ("not json", "Invalid request format: not JSON", None),
        ("[1, 2]", 'Invalid request format: expected {"type", "data"}', None),
        ('{"data": {}}', 'Invalid request format: expected {"type", "data"}', None),
        ('{"type": "hello", "data": {}}', "Unknown message type 'hello'", "hello"),
        ('{"type": "subscribe", "data": []}', "data must be an object", "subscribe"),
        ('{"type": "subscribe", "data": {}}', "channel (a string) is required", "subscribe"),
        ('{"type": "subscribe", "data": {"channel": "task"}}', "task_id (a string) is required",
         "subscribe"),
        ('{"type": "cancel_task"}', "task_id (a string) is required", "cancel_task"),
        ('{"type": "execute_agent", "data": {"task": "x"}}', "agent_id (a string) is required",
         "execute_agent"),
        ('{"type": "execute_agent", "data": {"agent_id": "code-agent", "task": "x", '
         '"parameters": {"task": "y"}}}', "task given twice (and in parameters)", "execute_agent"),
        ('{"type": "execute_agent", "data": {"agent_id": "code-agent", "parameters": 3}}',
         "parameters must be an object", "execute_agent"),
    ]
    for text, message, request_type in cases:
        await mx.ws.send_text(text)
        got = await mx.recv()
        assert got["type"] == "error" and got["data"]["code"] == "invalid_request", (text, got)
        assert got["data"]["message"] == message
        assert got["data"].get("request_type") == request_type
    await mx.ws.stream.send_all(mx.ws.ws.send(BytesMessage(data=b"\xff\xfe")))
    assert (await mx.recv())["data"]["code"] == "invalid_request"
    # Still open and working.
    await mx.send("subscribe", {"channel": "tasks"})
    assert await mx.sync() == []
    await mx.aclose()


async def test_invalid_subscription_is_the_same_for_missing_and_not_yours(h: Harness) -> None:
    bobs = await h.submit("echo", {"message": "bob's"}, token=h.bob)
    mx = await Mx.open(h.server.port, h.alice)
    answers = []
    for data in ({"channel": "task", "task_id": bobs["id"]},
                 {"channel": "task", "task_id": "00000000-0000-4000-8000-000000000000"},
                 {"channel": "task", "task_id": "non-existent-task"},
                 {"channel": "workflow_execution", "execution_id": bobs["id"]}):
        await mx.send("subscribe", data)
        answers.append(await mx.recv())
    for answer, data in zip(answers, ({"channel": "task", "task_id": bobs["id"]},), strict=False):
        assert answer == {"type": "error", "data": {
            "code": "invalid_subscription", "message": NOT_FOUND,
            "request_type": "subscribe", "request_data": data}}
    assert {a["data"]["message"] for a in answers} == {NOT_FOUND}
    await mx.send("subscribe", {"channel": "nope"})
    assert (await mx.recv())["data"] == {
        "code": "invalid_subscription", "message": "Unknown channel 'nope'",
        "request_type": "subscribe", "request_data": {"channel": "nope"}}
    await mx.send("unsubscribe", {"channel": "tasks"})
    assert (await mx.recv())["data"]["message"] == "Not subscribed to tasks"
    # An admin may follow anyone's.
    admin = await Mx.open(h.server.port, h.admin)
    await admin.send("subscribe", {"channel": "task", "task_id": bobs["id"]})
    assert [m["type"] for m in await admin.sync()] in (["task_completion"], [])
    await admin.aclose()
    await mx.aclose()


async def test_execute_agent_and_cancel_task_errors(h: Harness) -> None:
    mx = await Mx.open(h.server.port, h.alice)
    cases = [
        ({"agent_id": "nope", "task": "x"}, "agent_not_found"),
        ({"agent_id": "admin_only"}, "agent_not_found"),
        ({"agent_id": "code-agent"}, "invalid_parameters"),
        ({"agent_id": "code-agent", "task": "x", "parameters": {"temperature": 5}},
         "invalid_parameters"),
        ({"agent_id": "code-agent", "task": "x", "model_id": "claude"}, "invalid_parameters"),
        ({"agent_id": "code-agent", "task": "x", "parameters": {"extra": 1}},
         "invalid_parameters"),
    ]
    for data, code in cases:
        await mx.send("execute_agent", data)
        got = await mx.recv()
        assert got["type"] == "error" and got["data"]["code"] == code, (data, got)
        assert got["data"]["request_type"] == "execute_agent"
        assert got["data"]["request_data"] == data
    bobs = await h.submit("sleep", {"seconds": 30}, token=h.bob)
    await mx.send("cancel_task", {"task_id": bobs["id"]})
    assert (await mx.recv())["data"]["code"] == "task_not_found"
    await mx.send("cancel_task", {"task_id": "nope"})
    assert (await mx.recv())["data"]["code"] == "task_not_found"
    await cancel(h, bobs)
    done = await h.submit("echo", {"message": "x"})
    await h.wait(done["id"])
    await mx.send("cancel_task", {"task_id": done["id"]})
    got = await mx.recv()
    assert got["data"]["code"] == "task_not_cancellable"
    assert got["data"]["request_data"] == {"task_id": done["id"]}
    # A queued task of one's own, not followed: its end comes as the answer.
    block = await blocker(h)
    queued = await h.submit("sleep", {"seconds": 30})
    await mx.send("cancel_task", {"task_id": queued["id"]})
    got = await mx.recv()
    assert (got["type"], got["data"]["status"]) == ("task_error", "cancelled")
    await cancel(h, block)
    await mx.aclose()


async def test_ping_pong_and_a_silent_client_is_dropped(data_dir: Path) -> None:
    async with running_server(data_dir, multiplex_ping_interval=0.2,
                              multiplex_pong_timeout=0.3) as h:
        polite = await Mx.open(h.server.port, h.alice)
        silent = await Mx.open(h.server.port, h.alice)
        start = trio.current_time()
        for _ in range(4):
            ping = await polite.recv(2)
            assert ping["type"] == "ping" and re.fullmatch(ISO_Z, ping["data"]["timestamp"])
            await polite.send("pong", {"timestamp": ping["data"]["timestamp"]})
        out = await silent.rest(5)
        assert [m["type"] for m in out] == ["ping", "connection_closed"]
        assert out[-1]["data"] == {"reason": "ping_timeout", "message": "No pong in time"}
        assert silent.close_code == 1011 and trio.current_time() - start < 5.0
        assert polite.close_code is None
        # The client may ping too.
        await polite.send("ping", {"timestamp": "t"})
        got = await polite.until(lambda m: m["type"] == "pong")
        assert got[-1]["data"] == {"timestamp": "t"}
        await polite.aclose()
        await silent.aclose()


async def test_idle_connection_times_out(data_dir: Path) -> None:
    async with running_server(data_dir, multiplex_idle_timeout=0.6,
                              multiplex_ping_interval=0.1) as h:
        mx = await Mx.open(h.server.port, h.alice)
        start = trio.current_time()
        out = []
        # Answering pings is not activity.
        while True:
            m = await mx.recv(3)
            out.append(m)
            if m["type"] != "ping":
                break
            await mx.send("pong", m["data"])
        assert out[-1] == {"type": "connection_closed", "data": {
            "reason": "session_timeout",
            "message": "Session timed out after 0.6 seconds of inactivity"}}
        assert 0.5 < trio.current_time() - start < 5.0
        assert await mx.rest() == [] and mx.close_code == 1000
        await mx.aclose()


def test_idle_message_of_the_default() -> None:
    assert idle_message(1800.0) == "Session timed out after 30 minutes of inactivity"


async def test_graceful_stop_says_connection_closed_then_1001(data_dir: Path) -> None:
    async with running_server(data_dir) as h:
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "tasks"})
        await mx.sync()
        h.server.request_shutdown()
        out = await mx.rest()
        assert out[-1] == {"type": "connection_closed", "data": {
            "reason": "server_shutdown", "message": "The server is shutting down"}}
        assert mx.close_code == 1001
        await mx.aclose()


async def test_a_message_too_big(data_dir: Path) -> None:
    async with running_server(data_dir, ws_max_message_bytes=1024) as h:
        mx = await Mx.open(h.server.port, h.alice)
        await mx.send("subscribe", {"channel": "x" * 2000})
        assert [m["data"]["reason"] if m["type"] == "connection_closed" else m["data"]["code"]
                for m in await mx.rest()] == ["message_too_large", "message_too_large"]
        assert mx.close_code == 1009
        await mx.aclose()


async def test_a_plain_request_on_ws_is_426(h: Harness) -> None:
    r = await h.client.get("/ws")
    assert r.status_code == 426
    with pytest.raises(Rejected):
        await RawWebSocket.connect(h.server.port, "/ws/other")


async def test_a_broken_frame_and_a_stopping_server(h: Harness) -> None:
    mx = await Mx.open(h.server.port, h.alice)
    await mx.ws.stream.send_all(b"\x81\x02hi")  # unmasked: RFC 6455 5.1
    assert await mx.rest() == [
        {"type": "error", "data": {"code": "protocol_error",
                                   "message": "WebSocket protocol error"}},
        {"type": "connection_closed", "data": {"reason": "protocol_error",
                                               "message": "WebSocket protocol error"}}]
    assert mx.close_code == 1002
    await mx.aclose()
    # A server that takes no new jobs (as while it stops) says so.
    mx = await Mx.open(h.server.port, h.alice)
    h.server.engine.accepting = False
    try:
        await mx.send("execute_agent", {"agent_id": "code-agent", "task": "x"})
        got = await mx.recv()
    finally:
        h.server.engine.accepting = True
    assert got["data"]["code"] == "unavailable"
    assert got["data"]["message"] == "the server is shutting down"
    await mx.send("subscribe", {"channel": "tasks"})
    assert await mx.sync() == []
    await mx.aclose()


async def test_completion_has_the_result_reported_before_tasks_was_followed(
        h: Harness, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = await h.submit("result-then-wait", {"go": str(go)})
    with trio.fail_after(10):
        while (await h.job(job["id"]))["result"] is None:
            await trio.sleep(0.02)
    mx = await Mx.open(h.server.port, h.alice)  # the user's `tasks` channel is new here
    await mx.send("subscribe", {"channel": "tasks"})
    assert await mx.sync() == []
    go.touch()
    done = (await mx.until(lambda m: m["type"] == "task_completion"))[-1]["data"]
    assert (done["result"], done["cost"]) == ({"answer": 42, "cost": 1.5}, 1.5)
    await mx.aclose()
