"""The jobs dialect driven the way its original client drives it.

The client is `Aura.Web/src/features/render/api/jobs.ts` (itsacoffee/aura-video-
studio) as its render drawer (`RenderStatusDrawer.tsx`) and its progress hook
(`useJobProgress.ts`) use it. What it does, read from its source
(docs/dialects/jobs.md, "Its original client"):

- no token: `fetch` and `EventSource` with the page's origin only, so the
  server runs with `anonymous_loopback`;
- `createJob` POSTs /api/jobs; the drawer GETs the job and opens
  `new EventSource('/api/jobs/{id}/events')` (no Last-Event-ID the first time),
  listening for named events only: step-progress, step-status, step-error,
  job-status, job-completed, job-failed and error; the later revision also
  job-cancelled, job-log and warning. Events without a listener are dropped;
- its `onerror` closes the EventSource: it never reconnects by itself, so the
  server's end of the stream is the end; the later hook also unsubscribes after
  job-completed or job-failed, the only ends it knows;
- cancel: POST /cancel, then GET the job again; reopening the drawer subscribes
  again from the start;
- its types: job status 'Queued' | 'Running' | 'Succeeded' | 'Failed' |
  'Canceled', step status 'Pending' | 'Running' | 'Succeeded' | 'Failed' |
  'Skipped' | 'Canceled'; the drawer shows each error's `message` and
  `remediation` to the person, next to a Retry button.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .test_jobs_dialect import server_with
from .test_jobs_dialect_sse import Event, read_events

FIRST_EVENTS = ("step-progress", "step-status", "step-error", "job-status", "job-completed",
                "job-failed", "error")
LATER_EVENTS = (*FIRST_EVENTS, "job-cancelled", "job-log", "warning")
JOB_STATUSES = ("Queued", "Running", "Succeeded", "Failed", "Canceled")
STEP_STATUSES = ("Pending", "Running", "Succeeded", "Failed", "Skipped", "Canceled")


@pytest.fixture
async def client(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with server_with(nursery, data_dir, anonymous_loopback=True) as (_, http):
        yield http


def listened(events: list[Event], names: tuple[str, ...]) -> list[Event]:
    """What reaches the client's onEvent: the events it added a listener for."""
    return [e for e in events if e[1] in names]


def check_document(doc: dict[str, Any]) -> None:
    """The GET fits the client's JobResponse type."""
    assert doc["status"] in JOB_STATUSES, doc["status"]
    assert all(s["status"] in STEP_STATUSES for s in doc["steps"]), doc["steps"]
    for error in doc["errors"]:
        assert set(error) >= {"code", "message", "remediation"}


def drawer_state(doc: dict[str, Any], events: list[Event]) -> dict[str, Any]:
    """The render drawer's `job` after the GET and then the events (its reducer)."""
    job = {**doc, "steps": [dict(s) for s in doc["steps"]]}
    for _, name, data in events:
        if name == "job-status":
            job["status"] = data["status"]
        elif name == "step-status":
            for step in job["steps"]:
                if step["name"] == data["step"]:
                    step["status"] = data["status"]
        elif name == "job-failed":
            job["status"] = "Failed"  # whatever data.status says
            job["errors"] = data.get("errors") or []
        elif name == "job-completed":
            job["status"] = "Succeeded"
            job["output"] = data["output"]
    return job


def a_persons_words(text: str) -> None:
    assert text and "/api/" not in text and "POST" not in text, text


async def create_and_cancel(client: httpx.AsyncClient, preset: str, *, warned: bool = False
                            ) -> tuple[str, dict[str, Any], list[Event], dict[str, Any]]:
    """createJob, the drawer's GET and subscription, handleCancel once it runs (and,
    when `warned`, once it has a warning): (job id, the first GET, every event of
    the stream, the GET after the cancel)."""
    r = await client.post("/api/jobs", json={"preset": preset})
    assert r.status_code == 202, r.text
    created = r.json()
    job_id = created["jobId"]
    assert created["status"] in JOB_STATUSES
    first = (await client.get(f"/api/jobs/{job_id}")).json()
    check_document(first)
    got: list[Event] = []

    async def subscribe() -> None:
        got.extend(await read_events(client, job_id, headers={}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe)
        with trio.fail_after(10):
            while True:
                doc = (await client.get(f"/api/jobs/{job_id}")).json()
                if doc["status"] == "Running" and (doc["warnings"] or not warned):
                    break
                await trio.sleep(0.02)
        r = await client.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 202 and r.json()["currentStatus"] in JOB_STATUSES
        after = (await client.get(f"/api/jobs/{job_id}")).json()
        check_document(after)
    return job_id, first, got, after


async def test_the_first_revision_creates_follows_and_cancels(
        client: httpx.AsyncClient) -> None:
    job_id, first, got, _ = await create_and_cancel(client, "jobs-slow")
    seen = listened(got, FIRST_EVENTS)
    # The stream ended by itself right after job-failed (the client's only end
    # for a cancel): the server closed it, nothing came after.
    assert got[-1][1] == "job-failed" and seen[-1] == got[-1]
    assert [d["status"] for _, n, d in seen if n == "job-status"] == ["Queued", "Running"]
    failed = got[-1][2]
    assert failed["status"] == "Canceled"
    # What the drawer shows: "Render failed", the cancel's words, a Retry button.
    final = (await client.get(f"/api/jobs/{job_id}")).json()
    check_document(final)
    assert final["status"] == "Canceled" and final["errors"][-1]["code"] == "Canceled"
    shown = drawer_state(first, seen)
    assert shown["status"] == "Failed" and shown["errors"] == failed["errors"]
    assert shown["errors"][-1] == final["errors"][-1]
    for error in shown["errors"]:
        a_persons_words(error["message"])
        a_persons_words(error["remediation"])
    assert [s["status"] for s in shown["steps"]] == [s["status"] for s in final["steps"]]


async def test_the_later_revision_gets_lines_warnings_and_job_cancelled(
        client: httpx.AsyncClient) -> None:
    job_id, _, got, _ = await create_and_cancel(client, "jobs-talk-slow", warned=True)
    seen = listened(got, LATER_EVENTS)
    assert seen == got  # every event the server sends has a listener here
    logs = [(d["message"], d["stream"], d["severity"]) for _, n, d in seen if n == "job-log"]
    # stdout and stderr are two pipes: each keeps its order, not the two together.
    assert sorted(logs, key=lambda log: log[1] == "stderr") == [
        ("rendering frame 1", "stdout", "info"),
        ("Warning: low disk space", "stderr", "warning"),
        ("error: frame 2 dropped", "stderr", "error")]
    assert all(d["jobId"] == job_id and d["timestamp"].endswith("Z")
               for _, n, d in seen if n == "job-log")
    [warning] = [d for _, n, d in seen if n == "warning"]
    assert "not json" in warning["message"]
    # job-cancelled, then job-failed: the later hook's end (and the first one's).
    assert [n for _, n, _ in seen[-2:]] == ["job-cancelled", "job-failed"]
    cancelled, failed = seen[-2][2], seen[-1][2]
    assert cancelled["status"] == failed["status"] == "Canceled"
    assert cancelled["jobId"] == job_id and cancelled["message"] == failed["errorMessage"]
    a_persons_words(cancelled["message"])
    # The first revision's view of the same stream: the additions are invisible.
    first = listened(got, FIRST_EVENTS)
    assert [n for _, n, _ in first] == ["job-status", "job-status", "job-failed"]


async def test_reopening_the_drawer_replays_to_the_same_end(client: httpx.AsyncClient) -> None:
    job_id, _, got, _ = await create_and_cancel(client, "jobs-talk-slow", warned=True)
    # A new subscription (the drawer opened again): the whole stream again, same end.
    again = await read_events(client, job_id, headers={})
    assert again == got
    # EventSource's own reconnect (had onerror not closed it) sends the last id:
    # 204, which tells it to stop, instead of a stream it would reopen forever.
    r = await client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": got[-1][0]})
    assert r.status_code == 204
    # Its Retry button: a new attempt of a cancelled job.
    r = await client.post(f"/api/jobs/{job_id}/retry")
    assert r.status_code == 202 and r.json()["currentStatus"] == "Canceled"
    new_id = r.json()["newJobId"]
    await client.post(f"/api/jobs/{new_id}/cancel")
    with trio.fail_after(10):
        while (await client.get(f"/api/jobs/{new_id}")).json()["status"] != "Canceled":
            await trio.sleep(0.02)
