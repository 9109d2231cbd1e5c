"""The web page in headless Chromium, driven as a person would drive it.

Chromium is steered over the DevTools protocol (tests/browser.py): real mouse
clicks and typing, the page's own EventSources and fetches against a real
server. Each test ends with a screenshot, written to $JOBSERVER_SCREENSHOTS
when set (`JOBSERVER_SCREENSHOTS=docs/screenshots ./scripts/test -k browser`
refreshes the README's), else to the test's tmp dir. Without Chromium
(scripts/install-browser) these skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from jobserver.auth import token_command_line

from .browser import CHROMIUM, HAVE_CHROMIUM, Page, open_browser
from .conftest import TEMPLATES, Harness
from .test_first_run import jobserver, user_env
from .test_metrics import scrape

pytestmark = pytest.mark.skipif(
    not HAVE_CHROMIUM, reason=f"{CHROMIUM} is missing: run scripts/install-browser")

# What the page keeps of a log at most (jobserver/static/log.js WINDOW), and a
# generous bound on its JS heap with a 1,000,000-line job open and scrolled.
LOG_WINDOW = 3000
PAGE_EVENTS = 1000
HEAP_LIMIT = 64 * 2**20
NODES_LIMIT = 4 * LOG_WINDOW + 2000  # a line is at most a few nodes (its text, colour spans)
ROWS = "#job-rows tr[data-id]"
# How often the page has read the job list (GET /api/v1/jobs?...).
reads_js = ("performance.getEntriesByType('resource')"
            ".filter(r => /\\/api\\/v1\\/jobs\\?/.test(r.name)).length")


def shot_path(tmp_path: Path, name: str) -> Path:
    where = os.environ.get("JOBSERVER_SCREENSHOTS")
    return (Path(where) if where else tmp_path) / name


async def signed_in(page: Page, url: str) -> None:
    await page.goto(url)
    await page.wait_for("document.body.dataset.session === 'open' && "
                        "document.querySelector('#live-state').dataset.state === 'live' && "
                        "document.querySelector('#run-template').options.length > 0")


async def row_status(page: Page, job_id: str) -> str | None:
    status: str | None = await page.js(
        f"document.querySelector('{ROWS}[data-id=\"{job_id}\"]')?.dataset.status ?? null")
    return status


async def test_the_printed_link_opens_a_session_and_runs_a_job_live(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    cwd.mkdir(parents=True)
    home.mkdir()
    env = {**user_env(home), "JOBSERVER_CONFIG_FILE": str(TEMPLATES)}
    async with open_browser(tmp_path / "profile") as page:
        async with jobserver(cwd, env, "first") as server:
            link = server.line("web page: ") or ""
            token = server.line("admin token (valid 7 days): ") or ""
            assert link == f"{server.url}/#token={token}"
            await signed_in(page, link)
            # The token left the address bar at once and stays with this tab only.
            assert await page.js("location.href") == server.url + "/"
            assert await page.js("sessionStorage.getItem('jobserver-token')") == token
            assert await page.js("document.querySelector('#who').textContent") == "admin (admin)"

            assert await page.js("getComputedStyle(document.querySelector('th.owner'))"
                                 ".display") != "none"  # an admin sees whose jobs they are
            await page.choose("#run-template", "ticker")
            await page.type("#param-steps", "60")
            await page.type("#param-pace", "0.04")
            await page.click("#run button[type=submit]")
            job_id = await page.wait_for("document.querySelector('#job').dataset.job")
            assert await page.wait_for("location.hash") == f"#job={job_id}"

            # The progress bar moves with the job's own reports, the log streams in.
            seen: list[int] = []
            with trio.fail_after(15):
                while len(seen) < 4:
                    value = await page.js("document.querySelector('#job .job-progress .bar')"
                                          "?.getAttribute('aria-valuenow')")
                    if value is not None and (not seen or int(value) > seen[-1]):
                        seen.append(int(value))
                    await trio.sleep(0.05)
            assert seen == sorted(seen) and seen[-1] < 100
            assert await page.js("document.querySelector('#job .progress-text').textContent"
                                 ".includes('/ 60')")
            await page.wait_for("document.querySelectorAll('#job .ln.err').length > 0")
            # ANSI colours rendered (green "tick", bold blue), stderr told apart.
            assert await page.js("[...document.querySelectorAll('#job .ln.out span')]"
                                 ".some(s => s.style.color === 'rgb(13, 188, 121)')")
            assert await page.js("document.querySelector('#job .ln.out span.b') !== null")
            assert await page.js("document.querySelector('#job .ln.err').textContent"
                                 ".startsWith('note 5 on stderr')")
            # The list got the job from the events stream and follows it there too.
            assert await row_status(page, job_id) == "RUNNING"
            await page.wait_for("document.querySelector('#job .job-progress .bar')"
                                ".getAttribute('aria-valuenow') >= 50")
            await page.screenshot(shot_path(tmp_path, "job-running.png"))

            # Scrolling up pauses the tail: new lines come in below, the view stays put.
            lines_now = "document.querySelectorAll('#job .ln').length"
            await page.wait_for(f"{lines_now} >= 45", timeout=15)
            await page.wheel("#job .log", -200)
            await page.wait_for("document.querySelector('#job').dataset.follow === '0'")
            top = await page.js("document.querySelector('#job .log').scrollTop")
            shown = await page.js(lines_now)
            await page.wait_for(f"{lines_now} >= {shown + 5}")
            assert await page.js("document.querySelector('#job .log').scrollTop") == top
            await page.click("#job .log-bar .jump")
            await page.wait_for("document.querySelector('#job').dataset.follow === '1'")

            await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{job_id}\"]')"
                                "?.dataset.status === 'SUCCEEDED'", timeout=20)
            await page.wait_for("document.querySelector('#job').dataset.status === 'SUCCEEDED'")
            lines = await page.js("[...document.querySelectorAll('#job .ln')]"
                                  ".map(l => l.textContent)")
            assert lines[-1] == "done" and sum(line.startswith("tick") for line in lines) == 60
            # "Download log" saves the whole log, as the server has it.
            downloads = tmp_path / "downloads"
            await page.send("Page.setDownloadBehavior", behavior="allow",
                            downloadPath=str(downloads))
            saved = downloads / f"job-{job_id[:8]}.log"
            for _ in range(3):  # headless Chrome now and then drops a download: ask again
                await page.click("#job .log-bar .download")
                with trio.move_on_after(10):  # a .crdownload first, then renamed
                    while not saved.exists():
                        await trio.sleep(0.05)
                if saved.exists():
                    break
            assert saved.exists(), "the log was never downloaded"
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                whole = await client.get(f"/api/v1/jobs/{job_id}/logs?streams=1",
                                         headers={"Authorization": f"Bearer {token}"})
            assert saved.read_text() == whole.text and "[stderr] note 5 on stderr" in whole.text
            assert await page.js("document.querySelector('#job .fact-exit-code')"
                                 ".textContent") == "0"
            # One read of the list, then only the stream: no polling.
            reads = await page.js(reads_js)
            assert reads == 1
        port = int(server.url.rsplit(":", 1)[1])
        stopped = server

        # The server restarts: the page reconnects its stream and reads the list again.
        async with jobserver(cwd, env, "again", port=port) as again:
            await page.wait_for("document.querySelector('#live-state').dataset.state === 'live'"
                                f" && {reads_js} === 2", timeout=20)
            async with httpx.AsyncClient(base_url=again.url, timeout=10) as client:
                r = await client.post("/api/v1/jobs", json={"template": "echo",
                                                            "params": {"message": "back"}},
                                      headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 201
            back = r.json()["id"]
            await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{back}\"]')"
                                "?.dataset.status === 'SUCCEEDED'")
            assert await page.js(f"document.querySelectorAll('{ROWS}').length") == 2
        assert page.problems == []
    for run in (stopped, again):  # the logs
        assert token not in run.stderr.read_text()


async def test_cancel_retry_and_delete_from_the_job_view(harness: Harness,
                                                         tmp_path: Path) -> None:
    h = harness
    job = await h.submit("sleep", {"seconds": 30}, token=h.alice)
    async with open_browser(tmp_path / "profile") as page:
        await signed_in(page, f"{h.url}/#token={h.alice}")
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{job['id']}\"]')")
        assert await page.js("getComputedStyle(document.querySelector('th.owner')).display") \
            == "none"  # a user sees no owner column
        await page.click(f"{ROWS}[data-id=\"{job['id']}\"]")
        await page.wait_for("document.querySelector('#job').dataset.status === 'RUNNING'")
        await page.wait_for("document.querySelector('#job .ln')?.textContent === 'sleeping'")
        assert await page.js("document.querySelector('#job .retry')") is None
        await page.click("#job .actions .cancel")
        await page.wait_for("document.querySelector('#job').dataset.status === 'CANCELLED'")
        assert (await h.job(job["id"]))["status"] == "CANCELLED"
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{job['id']}\"]')"
                            ".dataset.status === 'CANCELLED'")
        assert await page.js("document.querySelector('#job .cancel')") is None

        # A job submitted elsewhere shows up in the list by itself.
        other = await h.submit("echo", {"message": "from elsewhere"}, token=h.alice)
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{other['id']}\"]')"
                            "?.dataset.status === 'SUCCEEDED'")
        # Bob's do not.
        bobs = await h.submit("echo", {"message": "bob's"}, token=h.bob)
        await h.wait(bobs["id"])

        await page.click("#job .actions .retry")
        retry_id = await page.wait_for(
            f"(() => {{ const id = document.querySelector('#job').dataset.job;"
            f" return id && id !== '{job['id']}' ? id : null; }})()")
        retried = await h.job(retry_id)
        assert retried["retry_of"] == job["id"] and retried["owner"] == "alice"
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{retry_id}\"]')")
        await page.click("#job .actions .cancel")
        await page.wait_for("document.querySelector('#job').dataset.status === 'CANCELLED'")
        await page.screenshot(shot_path(tmp_path, "job-cancelled.png"))

        await page.click("#job .actions .delete")
        assert await page.js("document.querySelector('#job .delete').textContent") \
            == "Really delete?"
        await page.click("#job .actions .delete")
        await page.wait_for(f"!document.querySelector('{ROWS}[data-id=\"{retry_id}\"]')")
        assert await page.js("document.querySelector('#job').dataset.job") == ""
        r = await h.client.get(f"/api/v1/jobs/{retry_id}", headers=h.auth(h.alice))
        assert r.status_code == 404
        ids = await page.js(f"[...document.querySelectorAll('{ROWS}')].map(r => r.dataset.id)")
        assert bobs["id"] not in ids and set(ids) == {job["id"], other["id"]}

        # Filters go to the server.
        await page.choose("#filter-status", "CANCELLED")
        await page.wait_for(f"document.querySelectorAll('{ROWS}').length === 1")
        await page.choose("#filter-status", "")
        await page.choose("#filter-template", "echo")
        await page.wait_for(f"[...document.querySelectorAll('{ROWS}')].map(r => r.dataset.id)"
                            f".join() === '{other['id']}'")
        assert page.problems == []


async def test_a_refused_param_lands_on_its_field(harness: Harness, tmp_path: Path) -> None:
    h = harness
    async with open_browser(tmp_path / "profile") as page:
        await signed_in(page, f"{h.url}/#token={h.alice}")
        await page.choose("#run-template", "greet")
        error = "document.querySelector('[data-param={}] .field-error').textContent"
        # Checked in the page: nothing is sent.
        await page.click("#run button[type=submit]")
        assert await page.wait_for(error.format("name")) == "is required"
        await page.type("#param-name", "bob")
        assert await page.js(error.format("name")) == ""  # typing clears it
        await page.type("#param-times", "9")
        await page.click("#run button[type=submit]")
        assert await page.wait_for(error.format("times")) == "must be at most 3"
        r = await h.client.get("/api/v1/jobs", headers=h.auth(h.alice))
        assert r.json()["jobs"] == []
        # The pattern is the server's to check: its 422 names params.name.
        await page.type("#param-times", "2")
        await page.type("#param-name", "Bob!")
        await page.click("#run button[type=submit]")
        message = await page.wait_for(error.format("name"))
        assert "must match" in message
        assert await page.js("document.querySelector('[data-param=name]').dataset.server") == "1"
        assert await page.js("document.activeElement.id") == "param-name"
        await page.screenshot(shot_path(tmp_path, "form-error.png"))
        # It stays while the user does other things (the list moves live) ...
        other = await h.submit("echo", {"message": "meanwhile"}, token=h.alice)
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{other['id']}\"]')")
        assert await page.js(error.format("name")) == message
        # ... until that field is changed; then a good value runs.
        await page.type("#param-name", "bob")
        assert await page.js(error.format("name")) == ""
        await page.click("#run button[type=submit]")
        job_id = await page.wait_for("document.querySelector('#job').dataset.job")
        done = await h.wait(job_id)
        assert done["template"] == "greet" and done["params"] == {"name": "bob", "times": 2}
        await page.wait_for("document.querySelector('#job .ln')?.textContent === 'hello bob'")
        assert page.problems == []


async def test_a_million_line_log_stays_a_window(harness: Harness, tmp_path: Path) -> None:
    h = harness
    job = await h.submit("chatty", {"lines": 1_000_000}, token=h.alice)
    count = "document.querySelectorAll('#job .ln').length"
    first = "Number(document.querySelector('#job .ln').dataset.seq)"
    async with open_browser(tmp_path / "profile") as page:
        await signed_in(page, f"{h.url}/#token={h.alice}")
        done = await h.wait(job["id"], timeout=40)
        assert done["status"] == "SUCCEEDED" and done["last_seq"] > 1_000_000
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{job['id']}\"]')"
                            "?.dataset.status === 'SUCCEEDED'")
        await page.click(f"{ROWS}[data-id=\"{job['id']}\"]")
        await page.wait_for("document.querySelector('#job .ln:last-child')?.textContent"
                            " === 'line 999999'")
        assert await page.js(count) <= PAGE_EVENTS
        assert await page.js("document.querySelector('#job').dataset.follow") == "1"
        start = await page.js(first)
        opened = await page.metrics()
        # Scroll up, as with a mouse wheel: older pages come in by seq, the window keeps its size.
        with trio.fail_after(30):
            for _ in range(8):
                before = await page.js(first)
                while await page.js(first) >= before:
                    await page.wheel("#job .log", -6000)
                    await trio.sleep(0.02)
        assert await page.js("document.querySelector('#job').dataset.follow") == "0"
        assert await page.js(count) <= LOG_WINDOW
        top = await page.js(first)
        assert top < start - 4 * PAGE_EVENTS
        # The lines shown are the job's own, in order, with no gap.
        texts = await page.js("[...document.querySelectorAll('#job .ln')].slice(0, 50)"
                              ".map(l => [Number(l.dataset.seq), l.textContent])")
        line0 = int(texts[0][1].split()[1])
        assert [t for _, t in texts] == [f"line {line0 + i}" for i in range(50)]
        scrolled = await page.metrics()
        await page.screenshot(shot_path(tmp_path, "log-million.png"))
        # Back to the end: the newest lines again, following.
        await page.click("#job .log-bar .jump")
        await page.wait_for("document.querySelector('#job .ln:last-child')?.textContent"
                            " === 'line 999999' && document.querySelector('#job')"
                            ".dataset.follow === '1'")
        assert await page.js(count) <= LOG_WINDOW
        assert page.problems == []
    for name, m in (("opened", opened), ("scrolled back", scrolled)):
        print(f"\n1,000,000-line log, {name}: JS heap {m['JSHeapUsedSize'] / 2**20:.1f} MiB, "
              f"{m['Nodes']:.0f} DOM nodes")
        assert m["JSHeapUsedSize"] < HEAP_LIMIT and m["Nodes"] < NODES_LIMIT


async def test_the_watch_page_shows_steps_and_progress(harness: Harness, tmp_path: Path) -> None:
    h = harness
    r = await h.client.post("/api/jobs", json={"preset": "sample-hello-youtube",
                                               "inputs": {"seconds": 2, "pace": 0.08}},
                            headers=h.auth(h.alice))
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    async with open_browser(tmp_path / "profile") as page:
        await page.goto(f"{h.url}/jobs/{job_id}/watch?token={h.alice}")
        # The steps are there from the start, in order, before any has run.
        names = await page.wait_for("[...document.querySelectorAll('#steps .name')]"
                                    ".map(e => e.textContent)")
        assert names == ["preflight", "narration", "broll", "subtitles", "mux"]
        overall: list[int] = []
        with trio.fail_after(20):
            while await page.js("document.body.dataset.state") != "done":
                pct = await page.js("parseInt(document.querySelector('#pct').textContent)")
                if isinstance(pct, int) and (not overall or pct > overall[-1]):
                    overall.append(pct)
                if len(overall) == 3:
                    await page.screenshot(shot_path(tmp_path, "watch.png"))
                await trio.sleep(0.05)
        assert len(overall) >= 3 and overall == sorted(overall)
        states = await page.js("[...document.querySelectorAll('#steps li')]"
                               ".map(e => e.querySelector('.state').textContent)")
        assert states == ["Succeeded"] * 5
        assert await page.js("document.querySelector('#pct').textContent") == "100%"
        assert await page.js("document.querySelector('#status').textContent") == "Succeeded"
        # The output, as a table, and the raw events folded away.
        assert await page.js("document.querySelector('#output th')?.textContent")
        assert await page.js("document.querySelector('details').open") is False
        assert page.problems == []

        # The same job in the main page's job view: its steps with their states.
        await signed_in(page, f"{h.url}/#token={h.alice}&job={job_id}")
        steps = await page.wait_for(
            "document.querySelector('#job').dataset.status === 'SUCCEEDED' &&"
            " [...document.querySelectorAll('#job .step')].map(e => e.dataset.status)")
        assert steps == ["Succeeded"] * 5
        assert await page.js("document.querySelector('#job .outcome table.kv th')?.textContent")
        await page.screenshot(shot_path(tmp_path, "job-steps.png"))
        assert page.problems == []


async def test_sign_in_and_a_list_that_pages_beyond_fifty(harness: Harness, tmp_path: Path) -> None:
    h = harness
    ids = [(await h.submit("echo", {"message": f"n{i}"}, token=h.bob))["id"] for i in range(56)]
    async with open_browser(tmp_path / "profile") as page:
        # A link with a token the server refuses ends on the sign-in box, saying why ...
        await page.goto(f"{h.url}/#token=not.a.token")
        message = await page.wait_for("document.body.dataset.session === 'none' &&"
                                      " document.querySelector('#signin-message').textContent")
        assert "refused the token" in message and "the command below" in message
        hint = await page.js("document.querySelector('#make-token').textContent")
        assert hint == token_command_line(h.data_dir)  # as the server prints it at start
        assert await page.js("sessionStorage.getItem('jobserver-token')") is None
        # ... where a good one can be pasted.
        await page.type("#signin-token", h.bob)
        await page.click("#signin button[type=submit]")
        await page.wait_for("document.body.dataset.session === 'open' && "
                            "document.querySelector('#live-state').dataset.state === 'live'")
        assert await page.js("sessionStorage.getItem('jobserver-token')") == h.bob
        shown = f"[...document.querySelectorAll('{ROWS}')].map(r => r.dataset.id)"
        first = await page.wait_for(f"{shown}.length === 50 && {shown}")
        assert first == ids[::-1][:50]  # newest first
        await page.click("#more")
        assert await page.wait_for(f"{shown}.length === 56 && {shown}") == ids[::-1]
        assert await page.js("document.querySelector('#more').hidden") is True
        assert page.problems == []
    # The page names its icon, so a browser asks for no /favicon.ico (an unmatched 404).
    got = await scrape(h)
    assert got.get("jobserver_http_requests_total",
                   {"method": "GET", "route": "/static/<name>", "status": "200"}) >= 1
    assert got.get("jobserver_http_requests_total",
                   {"method": "GET", "route": "unmatched", "status": "404"}) == 0


async def test_a_failed_pipeline_shows_where_it_failed(harness: Harness, tmp_path: Path) -> None:
    h = harness
    job = await h.submit("pipeline", {"fail_at": "build"}, token=h.alice)
    done = await h.wait(job["id"])
    assert done["status"] == "FAILED"
    async with open_browser(tmp_path / "profile") as page:
        await signed_in(page, f"{h.url}/#token={h.alice}&job={job['id']}")
        steps = await page.wait_for(
            "document.querySelector('#job').dataset.status === 'FAILED' &&"
            " [...document.querySelectorAll('#job .step')].map(e => e.dataset.status)")
        assert steps == ["Succeeded", "Failed", "Pending"]
        assert await page.js("document.querySelector('#job .outcome .error').textContent") \
            == done["error_message"]
        assert await page.js("document.querySelector('#job .fact-exit-code').textContent") \
            == str(done["exit_code"])
        assert await page.js("!!document.querySelector('#job .retry')"
                             " && !document.querySelector('#job .cancel')")
        # The watch page says the same, in words.
        await page.goto(f"{h.url}/jobs/{job['id']}/watch?token={h.alice}")
        await page.wait_for("document.body.dataset.state === 'done'")
        states = await page.js("[...document.querySelectorAll('#steps .state')]"
                               ".map(e => e.textContent)")
        assert states == ["Succeeded", "Failed", "Pending"]
        assert await page.js("document.querySelector('#status').textContent") == "Failed"
        assert await page.js("document.querySelector('#problems li')?.textContent")
        assert page.problems == []


async def test_a_flooding_job_skips_ahead_instead_of_freezing(harness: Harness,
                                                              tmp_path: Path) -> None:
    """A job printing far faster than a page can draw, opened while it runs: the
    page shows its newest lines, keeps its window, and reaches the last line.
    JOBSERVER_FLOOD_LINES makes it longer (the figures printed are the measure)."""
    h = harness
    lines = int(os.environ.get("JOBSERVER_FLOOD_LINES", "100000"))
    async with open_browser(tmp_path / "profile") as page:
        await signed_in(page, f"{h.url}/#token={h.alice}")
        job = await h.submit("chatty", {"lines": lines}, token=h.alice)
        await page.wait_for(f"document.querySelector('{ROWS}[data-id=\"{job['id']}\"]')")
        await page.click(f"{ROWS}[data-id=\"{job['id']}\"]")
        started, worst, most = trio.current_time(), 0.0, 0
        with trio.fail_after(60):
            while True:
                asked = trio.current_time()
                last, count = await page.js(
                    "[document.querySelector('#job .ln:last-child')?.textContent,"
                    " document.querySelectorAll('#job .ln').length]")
                worst, most = max(worst, trio.current_time() - asked), max(most, count)
                if last == f"line {lines - 1}":
                    break
                await trio.sleep(0.1)
        took = trio.current_time() - started
        assert most <= LOG_WINDOW
        assert await page.js("document.querySelector('#job').dataset.follow") == "1"
        assert page.problems == []
    print(f"\n{lines:,}-line flood opened live: last line shown after {took:.1f} s, slowest "
          f"page answer {worst * 1000:.0f} ms, at most {most} lines in the DOM")
