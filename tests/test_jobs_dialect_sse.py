"""The jobs dialect's event stream, GET /api/jobs/{jobId}/events, read with httpx-sse
(a parser we did not write) and with curl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_sse import ServerSentEvent, aconnect_sse

from .conftest import Harness
from .test_dataplane_fanout import wait_stats
from .test_jobs_dialect import (
    assert_problem,
    checked_video,
    create,
    document,
    finished,
    server_with,
)

STEPS = ["preflight", "narration", "broll", "subtitles", "mux"]
Event = tuple[str, str, dict[str, Any]]  # (id, event name, data)


async def read_events(client: httpx.AsyncClient, job_id: str, *, headers: dict[str, str],
                      limit: int | None = None, query: str = "",
                      response_headers: dict[str, str] | None = None) -> list[Event]:
    """SSE events until the server ends the stream (or `limit` of them: then the
    connection is dropped, by cancelling the read as a client going away would)."""
    out: list[Event] = []
    with trio.fail_after(30), trio.CancelScope() as drop:
        async with aconnect_sse(client, "GET", f"/api/jobs/{job_id}/events{query}",
                                headers=headers) as source:
            assert source.response.status_code == 200, await source.response.aread()
            if response_headers is not None:
                response_headers.update(source.response.headers)
            async for sse in source.aiter_sse():
                if drop.cancel_called:
                    continue  # already buffered; the next read raises Cancelled
                out.append(_event(sse))
                if limit is not None and len(out) == limit:
                    drop.cancel()
    return out


def _event(sse: ServerSentEvent) -> Event:
    data = json.loads(sse.data)
    assert isinstance(data, dict)
    return sse.id, sse.event, data


def by_name(events: list[Event], name: str) -> list[dict[str, Any]]:
    return [data for _, event, data in events if event == name]


def seq_of(event_id: str) -> tuple[int, int]:
    seq, _, sub = event_id.partition(".")
    return int(seq), int(sub) if sub else 1_000_000


async def test_sample_event_sequence(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "options": {"allowSkipUnavailable": True}},
                           headers={"X-Correlation-ID": "sse-sample"})
    events = await read_events(harness.client, created["jobId"],
                               headers=harness.auth(harness.alice))
    names = [name for _, name, _ in events]
    assert names[:2] == ["job-status", "job-status"] and names[-1] == "job-completed"
    assert [d["status"] for d in by_name(events, "job-status")] == ["Queued", "Running"]
    assert all(data["correlationId"] == "sse-sample" for _, _, data in events)
    # ids: seq order, strictly increasing, one per event.
    assert [seq_of(i) for i, _, _ in events] == sorted({seq_of(i) for i, _, _ in events})
    statuses = [(d["step"], d["status"]) for d in by_name(events, "step-status")]
    assert statuses == [(s, status) for s in STEPS for status in ("Running", "Succeeded")]
    for step in STEPS:
        pcts = [d["progressPct"] for d in by_name(events, "step-progress") if d["step"] == step]
        assert pcts and pcts == sorted(pcts) and pcts[-1] == 100, (step, pcts)
        # A step's progress comes between its Running and its Succeeded.
        mine = [(n, d.get("status")) for _, n, d in events if d.get("step") == step]
        assert mine[0] == ("step-status", "Running") and mine[-1] == ("step-status", "Succeeded")
        assert {n for n, _ in mine[1:-1]} == {"step-progress"}
    assert by_name(events, "step-error") == []
    completed = by_name(events, "job-completed")[0]
    assert completed["status"] == "Succeeded"
    checked_video(completed["output"], "video.avi")
    assert set(completed["output"]) == {"videoPath", "sizeBytes"}
    assert (await document(harness, created["jobId"]))["output"] == completed["output"]


async def test_job_failed_with_the_ffmpeg_error(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}, "options": {"quality": "high"}},
                           headers={"X-Correlation-ID": "sse-fail"})
    events = await read_events(harness.client, created["jobId"],
                               headers=harness.auth(harness.alice))
    error = {"code": "FFmpegNotFound", "message": "FFmpeg executable not found.",
             "remediation": "Install FFmpeg from Settings → Dependencies"}
    tail = [e for e in events if e[1] != "job-log"][-3:]
    assert tail == [
        (tail[0][0], "step-error", {"step": "mux", **error, "correlationId": "sse-fail"}),
        (tail[1][0], "step-status", {"step": "mux", "status": "Failed",
                                     "correlationId": "sse-fail"}),
        (tail[2][0], "job-failed", {"status": "Failed", "errors": [error],
                                    "errorMessage": error["message"],
                                    "correlationId": "sse-fail"}),
    ]
    assert events[-1] == tail[2]


async def test_skipped_step_and_cancel(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1},
                                     "options": {"quality": "high",
                                                 "allowSkipUnavailable": True}})
    events = await read_events(harness.client, created["jobId"], headers=harness.auth(
        harness.alice))
    assert ("mux", "Skipped") in [(d["step"], d["status"]) for d in by_name(events,
                                                                           "step-status")]
    assert by_name(events, "job-completed")[0]["output"]["videoPath"] is None
    slow = await create(harness, {"preset": "jobs-slow"})
    got: list[Event] = []

    async def watch() -> None:
        got.extend(await read_events(harness.client, slow["jobId"],
                                     headers=harness.auth(harness.alice)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.fail_after(10):
            while (await document(harness, slow["jobId"]))["status"] != "Running":
                await trio.sleep(0.02)
        await harness.client.post(f"/api/jobs/{slow['jobId']}/cancel",
                                  headers=harness.auth(harness.alice))
    # job-cancelled, then job-failed, which ends the stream, from one seq.
    cancelled, failed = got[-2], got[-1]
    assert failed[1] == "job-failed" and failed[2]["status"] == "Canceled"
    assert failed[2]["errors"][-1]["code"] == "Canceled"
    assert cancelled[1] == "job-cancelled" and cancelled[2]["status"] == "Canceled"
    assert cancelled[0] == f"{failed[0]}.0"
    # The step that was running ends on the stream too, as the document shows it.
    assert got[-3][1] == "step-status"
    assert got[-3][2] | {"correlationId": None} == {"step": "preflight", "status": "Failed",
                                                   "correlationId": None}
    steps = {s["name"]: s["status"] for s in (await document(harness, slow["jobId"]))["steps"]}
    assert steps == {"preflight": "Failed", "mux": "Pending"}


async def test_reconnect_with_last_event_id_loses_and_repeats_nothing(harness: Harness) -> None:
    created = await create(harness, {"preset": "default", "inputs": {
        "seconds": 4, "pace": 0.02}})
    job_id, headers = created["jobId"], harness.auth(harness.alice)
    # Live: drop the connection mid-stream, come back with Last-Event-ID.
    first = await read_events(harness.client, job_id, headers=headers, limit=12)
    assert (await document(harness, job_id))["status"] == "Running"
    rest = await read_events(harness.client, job_id,
                             headers={**headers, "Last-Event-ID": first[-1][0]})
    full = await read_events(harness.client, job_id, headers=headers)
    assert first + rest == full and full[-1][1] == "job-completed"
    # Every cut, including one between two events of the same seq ("N.0").
    assert any("." in i for i, _, _ in full)
    for cut in range(len(full) - 1):
        tail = await read_events(harness.client, job_id,
                                 headers={**headers, "Last-Event-ID": full[cut][0]})
        assert tail == full[cut + 1:], cut
    # After the last event there is nothing more: 204 stops EventSource reconnecting.
    r = await harness.client.get(f"/api/jobs/{job_id}/events",
                                 headers={**headers, "Last-Event-ID": full[-1][0]})
    assert r.status_code == 204 and r.content == b""
    # One past the end means "from now on": nothing more for a finished job.
    for ahead in (f"{seq_of(full[-1][0])[0] + 5}", "99999.3"):
        r = await harness.client.get(f"/api/jobs/{job_id}/events",
                                     headers={**headers, "Last-Event-ID": ahead})
        assert r.status_code == 204, ahead
    # An unreadable Last-Event-ID starts from the beginning.
    assert await read_events(harness.client, job_id,
                             headers={**headers, "Last-Event-ID": "garbage"}) == full


async def test_last_event_id_ahead_of_a_running_job_follows_from_now(harness: Harness) -> None:
    slow = await create(harness, {"preset": "jobs-slow"})
    headers = harness.auth(harness.alice)
    with trio.fail_after(10):
        while (await document(harness, slow["jobId"]))["status"] != "Running":
            await trio.sleep(0.02)
    got: list[Event] = []

    async def watch() -> None:
        got.extend(await read_events(harness.client, slow["jobId"],
                                     headers={**headers, "Last-Event-ID": "500"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        # Following before the cancel (a fixed pause was not always enough on a
        # busy machine: the stream then opened on a job already ended).
        await wait_stats(harness, live=1)
        await harness.client.post(f"/api/jobs/{slow['jobId']}/cancel", headers=headers)
    # ("working", printed as it starts, may be recorded once the stream follows.)
    assert [name for _, name, _ in got if name != "job-log"] == [
        "step-status", "job-cancelled", "job-failed"]
    assert seq_of(got[0][0])[0] > 0


async def test_auth_token_query_and_problems(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 1}})
    job_id = created["jobId"]
    events = await read_events(harness.client, job_id, headers={},
                               query=f"?token={harness.alice}")
    assert events[-1][1] == "job-completed"
    assert await read_events(harness.client, job_id, headers=harness.auth(harness.admin)) \
        == events
    cases = [({}, "", 401), ({"Authorization": "Bearer nope"}, "", 401), ({}, "?token=x", 401),
             (harness.auth(harness.bob), "", 404)]
    for headers, query, status in cases:
        r = await harness.client.get(f"/api/jobs/{job_id}/events{query}",
                                     headers={**headers, "X-Correlation-ID": "sse-auth"})
        assert_problem(r, status, correlation="sse-auth")
    for bad in ("0c2f7a4e-0000-4000-8000-000000000000", "not-a-uuid"):
        assert_problem(await harness.client.get(f"/api/jobs/{bad}/events",
                                                headers=harness.auth(harness.alice)), 404)


async def test_headers_heartbeats_and_anonymous(nursery: trio.Nursery, data_dir: Path) -> None:
    async with server_with(nursery, data_dir, sse_heartbeat=0.05,
                           anonymous_loopback=True) as (_, client):
        r = await client.post("/api/jobs", json={"preset": "jobs-slow"},
                              headers={"X-Correlation-ID": "hb"})
        job_id = r.json()["jobId"]
        lines: list[str] = []
        with trio.fail_after(10), trio.CancelScope() as drop:
            async with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["cache-control"] == "no-cache"
                assert response.headers["x-correlation-id"] == "hb"
                async for line in response.aiter_lines():
                    lines.append(line)
                    if lines.count(": keep-alive") >= 3:
                        drop.cancel()
        assert "event: job-status" in lines
        # Anonymous on a fresh connection too (the raw data plane's peer check).
        async with httpx.AsyncClient(base_url=client.base_url) as fresh:
            first = await read_events(fresh, job_id, headers={}, limit=1)
        assert first[0][1:] == ("job-status", {"status": "Queued", "correlationId": "hb"})
        r = await client.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 202
        with trio.fail_after(10):
            while (await client.get(f"/api/jobs/{job_id}")).json()["status"] != "Canceled":
                await trio.sleep(0.02)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_n(harness: Harness) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 2, "pace": 0.01}})
    job_id = created["jobId"]
    with trio.fail_after(30):
        done = await trio.run_process(
            ["curl", "-N", "-s", "-S", "--max-time", "25", "-H",
             f"Authorization: Bearer {harness.alice}", f"{harness.url}/api/jobs/{job_id}/events"],
            capture_stdout=True, capture_stderr=True)
    text = done.stdout.decode()
    blocks = [b for b in text.split("\n\n") if b and not b.startswith(":")]
    assert blocks[0].startswith("id: 1\nevent: job-status\ndata: {")
    assert blocks[-1].split("\n")[1] == "event: job-completed"
    final = json.loads(blocks[-1].split("\n")[2].removeprefix("data: "))
    assert final["output"] == (await finished(harness, job_id))["output"]


async def test_raw_and_keep_alive_fallback_streams_are_the_same(harness: Harness) -> None:
    """A fresh connection is the data plane's; one that made a REST call first is
    hypercorn's, answered by the data plane's ASGI fallback. Same session, same bytes."""
    created = await create(harness, {"preset": "default", "inputs": {"seconds": 2,
                                                                    "pace": 0.01}})
    job_id, headers = created["jobId"], harness.auth(harness.alice)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=harness.url, limits=limits) as reused, \
            httpx.AsyncClient(base_url=harness.url, limits=limits) as fresh:
        await document_via(reused, job_id, headers)  # now the connection is hypercorn's
        hypercorn: dict[str, str] = {}
        via_fallback = await read_events(reused, job_id, headers=headers,
                                         response_headers=hypercorn)
        raw: dict[str, str] = {}
        via_raw = await read_events(fresh, job_id, headers=headers, response_headers=raw)
    assert via_fallback == via_raw and via_raw[-1][1] == "job-completed"
    # The raw plane's body runs to the connection's end; hypercorn's is chunked.
    assert raw["connection"] == "close" and "transfer-encoding" not in raw
    assert hypercorn["transfer-encoding"] == "chunked"
    # Refusals look the same on both paths (the raw one closes after each).
    async with httpx.AsyncClient(base_url=harness.url, limits=limits) as reused, \
            httpx.AsyncClient(base_url=harness.url, limits=limits) as fresh:
        for client in (reused, fresh):
            if client is reused:
                await document_via(reused, job_id, headers)
            r = await client.get(f"/api/jobs/{job_id}/events",
                                 headers={"X-Correlation-ID": "refused"})
            assert_problem(r, 401, correlation="refused")
            assert r.headers["www-authenticate"] == "Bearer"
            assert_problem(await client.get(f"/api/jobs/{job_id}/events",
                                            headers=harness.auth(harness.bob)), 404)
            assert_problem(await client.get("/api/jobs/J-nope/events", headers=headers), 404)
            r = await client.get(f"/api/jobs/{job_id}/events",
                                 headers={**headers, "Last-Event-ID": via_raw[-1][0]})
            assert r.status_code == 204


async def document_via(client: httpx.AsyncClient, job_id: str,
                       headers: dict[str, str]) -> None:
    r = await client.get(f"/api/jobs/{job_id}", headers=headers)
    assert r.status_code == 200


async def test_many_subscribers_see_the_same_stream(harness: Harness) -> None:
    created = await create(harness, {"preset": "default", "inputs": {"seconds": 2,
                                                                    "pace": 0.01}})
    results: list[list[Event]] = []

    async def one() -> None:
        results.append(await read_events(harness.client, created["jobId"],
                                         headers=harness.auth(harness.alice)))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert len(results) == 20 and all(r == results[0] for r in results)
    assert results[0][-1][1] == "job-completed"
