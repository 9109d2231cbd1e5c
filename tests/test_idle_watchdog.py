"""The idle-output watchdog (a template's `idle_timeout`), with real jobs."""

from __future__ import annotations

import pytest

from jobserver.core.templates import TemplateError, parse_template

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


async def test_without_idle_timeout_a_job_may_stay_silent(harness: Harness) -> None:
    # `sleep` prints once, then is silent for longer than idle_quiet's 0.5 s.
    h = harness
    job = await h.submit("sleep", {"seconds": 0.8})
    done = await h.wait(job["id"], timeout=15)
    assert done["status"] == "SUCCEEDED" and done["outcome"] == "succeeded"


def test_the_templates_watchdog_cap_and_retention_settings_are_checked() -> None:
    base = {"argv": ["true"]}
    t = parse_template("t", {**base, "idle_timeout": 2, "max_log_bytes": 4096.0,
                             "on_log_cap": "kill", "retention_days": 0.5,
                             "retention_max_jobs": 10})
    assert (t.idle_timeout, t.max_log_bytes, t.on_log_cap, t.retention_days,
            t.retention_max_jobs) == (2.0, 4096, "kill", 0.5, 10)
    assert parse_template("t", base).on_log_cap == "keep"
    for key, bad in (("idle_timeout", 0), ("idle_timeout", "5"), ("max_log_bytes", 1.5),
                     ("retention_max_jobs", -1), ("on_log_cap", "truncate")):
        with pytest.raises(TemplateError, match=key):
            parse_template("t", {**base, key: bad})
