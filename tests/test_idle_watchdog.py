"""The idle-output watchdog (a template's `idle_timeout`), with real jobs."""

from __future__ import annotations

import httpx

from .conftest import Harness


async def test_a_job_silent_for_its_idle_timeout_is_ended_as_idle(harness: Harness) -> None:
    h = harness
    job = await h.submit("idle_quiet")
    done = await h.wait(job["id"], timeout=15)
    # Killed after its output stopped, not before: all five ticks were read.
    assert done["status"] == "FAILED" and done["outcome"] == "idle"
    assert done["error_message"] == "no output for 0.5 seconds (idle_timeout)"
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs", headers=h.auth(h.alice))
    assert r.text.splitlines() == [f"tick {i}" for i in range(5)]


async def test_control_messages_keep_a_job_from_being_idle(harness: Harness) -> None:
    h = harness
    job = await h.submit("idle_control")
    done = await h.wait(job["id"], timeout=15)
    assert done["status"] == "SUCCEEDED" and done["outcome"] == "succeeded"
    assert (done["progress"] or {}).get("at") == 4, done


async def test_templates_say_their_idle_timeout_and_others_have_none(harness: Harness) -> None:
    # A template without idle_timeout is never idle-killed: `sleep` is silent
    # for its whole run.
    h = harness
    job = await h.submit("sleep", {"seconds": 0.8})
    done = await h.wait(job["id"], timeout=15)
    assert done["status"] == "SUCCEEDED"
    r: httpx.Response = await h.client.get("/api/v1/templates", headers=h.auth(h.alice))
    assert r.status_code == 200
