"""A real browser's EventSource on the jobs dialect's stream (headless Chromium).

The page is the server's own /jobs/{id}/watch (same origin: the stream needs no
CORS). Chromium runs with `--dump-dom` and a virtual time budget: virtual time
stands still while a fetch is open, so the DOM is dumped only after the stream
ended and the page closed its EventSource. No DevTools protocol needed.
Install Debian's chromium with scripts/install-browser; without it this skips.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import trio

from .conftest import Harness
from .test_jobs_dialect import create
from .test_jobs_dialect_sse import read_events

CHROMIUM = os.environ.get("JOBSERVER_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--virtual-time-budget=2000", "--dump-dom"]
ITEM = re.compile(r'<li data-id="([^"]*)" data-event="([^"]*)">(.*?)</li>')
STEP = re.compile(r'<li class="step (\w+)">.*?<span class="name">(\w+)</span>')

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: run scripts/install-browser for the EventSource test")


async def dump_dom(url: str, profile: Path) -> str:
    with trio.fail_after(60):
        done = await trio.run_process([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url],
                                      capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


async def test_eventsource_in_chromium_follows_a_live_job(harness: Harness,
                                                          tmp_path: Path) -> None:
    created = await create(harness, {"preset": "sample-hello-youtube",
                                     "inputs": {"seconds": 2, "pace": 0.05}},
                           headers={"X-Correlation-ID": "from-a-browser"})
    job_id = created["jobId"]
    # The job runs for a few seconds: the browser connects while it is running.
    dom = await dump_dom(f"{harness.url}/jobs/{job_id}/watch?token={harness.alice}",
                         tmp_path / "profile")
    assert 'data-state="done"' in dom and "<title>Succeeded</title>" in dom, dom[-3000:]
    assert "data-errors" not in dom  # no failed connection, no reconnect
    seen = [(i, name, html.unescape(data)) for i, name, data in ITEM.findall(dom)]
    # Exactly what an SSE parser we did not write reads from the finished job.
    expected = await read_events(harness.client, job_id, headers=harness.auth(harness.alice))
    assert seen == [(i, name, _compact(data)) for i, name, data in expected]
    assert seen[-1][1] == "job-completed" and "from-a-browser" in seen[-1][2]
    # What a person sees: every step done, the bar full, the status in words.
    assert STEP.findall(dom) == [("Succeeded", name) for name in
                                 ("preflight", "narration", "broll", "subtitles", "mux")]
    assert '<span id="status" class="badge Succeeded">Succeeded</span>' in dom
    assert '<span id="pct">100%</span>' in dom


def _compact(data: dict[str, object]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
