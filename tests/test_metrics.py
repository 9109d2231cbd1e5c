"""/metrics: every metric present with HELP, and moving as its events happen
(scraped from a real server and read with prometheus-client's own parser)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from jobserver.metrics import CLUSTER_FAMILIES

from .conftest import Harness
from .test_dataplane_helpers import logs_path, running_server, ws_client

Labels = frozenset[tuple[str, str]]

# Every family /metrics shows (as the parser names them: counters without _total).
FAMILIES = {
    "counter": {
        "jobserver_jobs_submitted", "jobserver_jobs_finished", "jobserver_http_requests",
        "jobserver_stream_connections_opened", "jobserver_events_published",
        "jobserver_store_committed_events", "jobserver_store_commits",
        "jobserver_stream_sent_bytes", "jobserver_stream_sent_messages",
        "jobserver_stream_lagged_subscribers", "jobserver_stream_stalled_connections",
        "jobserver_stream_frame_cache_hits", "jobserver_stream_frame_cache_misses",
        "process_cpu_seconds"},
    "histogram": {
        "jobserver_job_queue_wait_seconds", "jobserver_job_run_duration_seconds",
        "jobserver_http_request_duration_seconds", "jobserver_store_commit_duration_seconds"},
    "gauge": {
        "jobserver_jobs_running", "jobserver_jobs_queued", "jobserver_slots",
        "jobserver_hub_subscribers", "jobserver_store_pending_events",
        "jobserver_stream_connections", "jobserver_stream_handed_off",
        "jobserver_stream_subscribers", "jobserver_stream_live",
        "jobserver_stream_catching_up", "jobserver_stream_slow_writers",
        "jobserver_stream_backlog_bytes", "jobserver_stream_channels",
        "process_resident_memory_bytes", "process_virtual_memory_bytes",
        "process_open_fds", "process_max_fds", "process_start_time_seconds"},
}


class Scrape:
    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.samples.get((name, frozenset((labels or {}).items())), 0.0)

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in self.samples
                if n == name and label in dict(labels)}


async def scrape(h: Harness) -> Scrape:
    r = await h.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(r.text)


async def test_every_metric_is_there_with_help_and_type(harness: Harness) -> None:
    got = await scrape(harness)
    for kind, names in FAMILIES.items():
        for name in names:
            family = got.families.get(name)
            assert family is not None, f"{name} missing"
            assert family.type == kind, (name, family.type)
            assert family.documentation.strip(), f"{name} has no HELP"
    for family in got.families.values():
        assert family.documentation.strip(), f"{family.name} has no HELP"
    assert got.get("jobserver_slots") == 2
    assert got.get("process_resident_memory_bytes") > 0
    assert got.get("process_open_fds") > 0


async def test_job_counters_and_durations_move(harness: Harness) -> None:
    h = harness
    before = await scrape(h)
    ok = await h.submit("echo", {"message": "counted"})
    bad = await h.submit("exit", {"code": 3})
    await h.wait(ok["id"])
    await h.wait(bad["id"])
    after = await scrape(h)

    def moved(name: str, labels: Mapping[str, str]) -> float:
        return after.get(name, labels) - before.get(name, labels)

    assert moved("jobserver_jobs_submitted_total", {"template": "echo"}) == 1
    assert moved("jobserver_jobs_submitted_total", {"template": "exit"}) == 1
    assert moved("jobserver_jobs_finished_total",
                 {"template": "echo", "outcome": "succeeded"}) == 1
    assert moved("jobserver_jobs_finished_total", {"template": "exit", "outcome": "failed"}) == 1
    for template in ("echo", "exit"):
        assert moved("jobserver_job_queue_wait_seconds_count", {"template": template}) == 1
        assert moved("jobserver_job_run_duration_seconds_count", {"template": template}) == 1
        assert after.get("jobserver_job_run_duration_seconds_sum", {"template": template}) > 0
    assert moved("jobserver_events_published_total", {}) >= 8  # queued, started, ..., finished
    assert moved("jobserver_store_committed_events_total", {}) >= 8
    commits = moved("jobserver_store_commit_duration_seconds_count", {})
    assert commits >= 1 and commits == moved("jobserver_store_commits_total", {})
    assert after.get("jobserver_store_commit_duration_seconds_sum") > \
        before.get("jobserver_store_commit_duration_seconds_sum")
    assert after.get("process_cpu_seconds_total") >= before.get("process_cpu_seconds_total")


async def test_running_and_queued_gauges(harness: Harness) -> None:
    h = harness  # two slots
    jobs = [await h.submit("sleep", {"seconds": 30}) for _ in range(3)]
    with trio.fail_after(10):
        while True:
            got = await scrape(h)
            if got.get("jobserver_jobs_running") == 2:
                break
            await trio.sleep(0.02)
    assert got.get("jobserver_jobs_queued") == 1
    # A slot is taken before the job's `started` is recorded: both must have started
    # (a job cancelled while it spawns has no run duration either).
    for job in jobs[:2]:
        await h.wait(job["id"], "RUNNING")
    for job in reversed(jobs):  # the queued one first, before a slot frees for it
        r = await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))
        assert r.status_code == 202
    for job in jobs:
        await h.wait(job["id"])
    got = await scrape(h)
    assert got.get("jobserver_jobs_running") == 0 and got.get("jobserver_jobs_queued") == 0
    assert got.get("jobserver_jobs_finished_total",
                   {"template": "sleep", "outcome": "cancelled"}) == 3
    # The one cancelled while queued never ran: two run durations, not three.
    assert got.get("jobserver_job_run_duration_seconds_count", {"template": "sleep"}) == 2


async def test_http_requests_are_counted_by_route_template(harness: Harness) -> None:
    h = harness
    job = await h.submit("echo", {"message": "routes"})
    await h.wait(job["id"])
    missing = uuid.uuid4()
    assert (await h.client.get(f"/api/v1/jobs/{missing}", headers=h.auth(h.alice))
            ).status_code == 404
    assert (await h.client.get("/no/such/page")).status_code == 404
    assert (await h.client.request("BREW", "/api/v1/jobs")).status_code == 405
    got = await scrape(h)
    one_job = {"method": "GET", "route": "/api/v1/jobs/<job_id>"}
    assert got.get("jobserver_http_requests_total", {**one_job, "status": "200"}) >= 1
    assert got.get("jobserver_http_requests_total", {**one_job, "status": "404"}) == 1
    assert got.get("jobserver_http_requests_total",
                   {"method": "POST", "route": "/api/v1/jobs", "status": "201"}) == 1
    assert got.get("jobserver_http_requests_total",
                   {"method": "GET", "route": "unmatched", "status": "404"}) == 1
    assert got.get("jobserver_http_request_duration_seconds_count",
                   {"method": "POST", "route": "/api/v1/jobs"}) == 1
    # A method of the client's invention is "other", not a series of its own.
    assert got.label_values("jobserver_http_requests_total", "method") <= {"GET", "POST", "other"}
    assert sum(v for (name, labels), v in got.samples.items()
               if name == "jobserver_http_requests_total" and ("method", "other") in labels) == 1
    # No ids in any label.
    for name, labels in got.samples:
        for _, value in labels:
            assert job["id"] not in value and str(missing) not in value, (name, labels)


async def test_stream_connections_messages_and_bytes_move(harness: Harness) -> None:
    h = harness
    job = await h.submit("echo", {"message": "streamed"})
    await h.wait(job["id"])
    before = await scrape(h)
    # The native SSE stream of a finished job: its events, then the end.
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/stream", headers=h.auth(h.alice))
    assert r.status_code == 200 and "finished" in r.text
    # The logs dialect over WebSocket: history, then a close.
    async with ws_client(h.ws_url + logs_path(job["id"], h.alice)) as ws:
        with trio.fail_after(10):
            while True:
                try:
                    await ws.get_message()
                except ConnectionClosed:
                    break
    # A refused opening: counted by route and status, not as a connection.
    r = await h.client.get(f"/api/v1/jobs/{uuid.uuid4()}/stream", headers=h.auth(h.alice))
    assert r.status_code == 404
    with trio.fail_after(10):
        while (await scrape(h)).get("jobserver_stream_connections") != 0:
            await trio.sleep(0.02)
    after = await scrape(h)

    def moved(name: str, labels: Mapping[str, str] | None = None) -> float:
        return after.get(name, labels) - before.get(name, labels)

    assert moved("jobserver_stream_connections_opened_total", {"route": "native-events"}) == 1
    assert moved("jobserver_stream_connections_opened_total", {"route": "logs"}) == 1
    assert moved("jobserver_http_requests_total",
                 {"method": "GET", "route": "native-events", "status": "200"}) == 1
    assert moved("jobserver_http_requests_total",
                 {"method": "GET", "route": "native-events", "status": "404"}) == 1
    assert moved("jobserver_http_requests_total",
                 {"method": "GET", "route": "logs", "status": "101"}) == 1
    assert moved("jobserver_stream_sent_bytes_total") > len(r.content)
    # queued, started, a log line, finished on each stream at least.
    assert moved("jobserver_stream_sent_messages_total") >= 8
    assert after.label_values("jobserver_stream_connections_opened_total", "route") <= {
        "logs", "native-events", "native-jobs-events", "jobs-events", "async"}


async def test_each_server_has_its_own_registry(harness: Harness) -> None:
    """Two servers in one process: one's jobs are not counted by the other."""
    other_dir = harness.data_dir.parent / "other"
    async with running_server(other_dir) as other:
        job = await other.submit("echo", {"message": "elsewhere"})
        await other.wait(job["id"])
        assert (await scrape(other)).get("jobserver_jobs_submitted_total",
                                         {"template": "echo"}) == 1
        assert (await scrape(harness)).get("jobserver_jobs_submitted_total",
                                           {"template": "echo"}) == 0


DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"


def dashboard_series() -> set[str]:
    """The series docs/grafana-dashboard.json queries."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b(?:jobserver|process)_[a-z_]+", e)}


async def test_the_dashboard_graphs_metrics_that_exist(harness: Harness) -> None:
    """Every series docs/grafana-dashboard.json queries is one /metrics has (those
    of several nodes: test_nodes_observe.py), and every jobserver family is
    graphed somewhere."""
    queried = dashboard_series()
    got = await scrape(harness)
    series = got.names() | set(got.families)
    # A labelled family's series are there once counted; the family is there at once.
    missing = {m for m in queried if m not in series
               and m.removesuffix("_bucket").removesuffix("_total") not in got.families
               and m.removesuffix("_total") not in CLUSTER_FAMILIES}
    assert not missing, missing
    graphed = {m.removesuffix("_bucket").removesuffix("_total") for m in queried}
    unused = {f for f in got.families
              if f.startswith("jobserver_") and not f.endswith("_created")} - graphed
    assert not unused, unused
