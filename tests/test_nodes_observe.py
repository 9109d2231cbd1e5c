"""What can be seen of several nodes: the node a job runs on (the REST API's job
record, `jobserver show`) and the nodes' figures on /metrics (the mirror, the
LISTEN connection, heartbeats and liveness). Two real server processes on one
fresh database of the suite's PostgreSQL; the database says which node holds
a job, and the figures are compared with what the test made happen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from jobserver.metrics import CLUSTER_FAMILIES

from .clirun import cli, cli_env
from .procserver import auth, get_job, server_process, submit, wait_status
from .test_metrics import Scrape, dashboard_series
from .test_nodes import admin, node, node_id, query, wait_node_of


async def metrics(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{url}/metrics")
        assert r.status_code == 200, r.text
        return Scrape(r.text)


async def wait_metric(url: str, test: Callable[[Scrape], bool], timeout: float = 20.0) -> Scrape:
    with trio.fail_after(timeout):
        while not test(got := await metrics(url)):
            await trio.sleep(0.1)
    return got


async def wait_node_field(url: str, token: str, job_id: str, want: str | None) -> None:
    """The job's record on `url` names `want` as its node (a mirrored job's record
    follows the other node's events: bounded wait)."""
    with trio.fail_after(20):
        while (await get_job(url, token, job_id))["node"] != want:
            await trio.sleep(0.05)


async def test_a_jobs_node_is_in_its_record_and_in_show_on_both_nodes(
        tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="1") as (_, url_a, dir_a), \
            node(tmp_path, "b", database_url, slots="1") as (_, url_b, dir_b):
        token = admin(dir_a)
        running = [await submit(url_a, token, "sleep", {"seconds": 30}) for _ in range(2)]
        holders = {j: await wait_node_of(database_url, j, "RUNNING") for j in running}
        assert set(holders.values()) == {node_id(dir_a), node_id(dir_b)}
        queued = await submit(url_b, token, "echo", {"message": "later"})
        for url in (url_a, url_b):
            for job_id, holder in holders.items():
                await wait_node_field(url, token, job_id, holder)
            assert (await get_job(url, token, queued))["node"] is None  # waits: no node
        started = await query(database_url, "SELECT job_id, data FROM events "
                              "WHERE type = 'started'")
        assert {j: json.loads(d)["node"] for j, d in started} == holders
        # `show` on the node that does not run the job names the one that does.
        for job_id, holder in holders.items():
            other = url_b if holder == node_id(dir_a) else url_a
            shown = await cli(cli_env(other, token, tmp_path / "home"), "show", job_id)
            assert shown.rc == 0, shown.err
            assert ["node", holder] in [line.split() for line in shown.lines], shown.out
        # A finished job keeps the node that ran it.
        async with httpx.AsyncClient(timeout=30) as client:
            for job_id in running:
                r = await client.post(f"{url_a}/api/v1/jobs/{job_id}/cancel",
                                      headers=auth(token))
                assert r.status_code == 202, r.text
        ran = await wait_node_of(database_url, queued, "SUCCEEDED")
        for url in (url_a, url_b):
            for job_id, holder in holders.items():
                job = await wait_status(url, token, job_id, "CANCELLED")
                assert job["node"] == holder
            await wait_node_field(url, token, queued, ran)
            async with httpx.AsyncClient(timeout=10) as client:
                page = (await client.get(f"{url}/api/v1/jobs", headers=auth(token))).json()
            assert {j["id"]: j["node"] for j in page["jobs"]} == {**holders, queued: ran}


async def test_the_nodes_figures_are_on_metrics(tmp_path: Path, database_url: str) -> None:
    async with node(tmp_path, "a", database_url, slots="2") as (proc_a, url_a, dir_a):
        token = admin(dir_a)
        async with node(tmp_path, "b", database_url, slots="2") as (_, url_b, _):
            for url in (url_a, url_b):
                got = await wait_metric(url, lambda m: m.get("jobserver_nodes_alive") == 2)
                assert got.get("jobserver_listener_connected") == 1
                assert got.get("jobserver_listener_reconnects_total") == 0
                assert 0 <= got.get("jobserver_node_heartbeat_age_seconds") < 10
                for name in CLUSTER_FAMILIES:
                    assert got.families[name].documentation.strip(), f"{name} has no HELP"
            # The dashboard's series all exist on a node of several, and every
            # family that node has is graphed.
            queried = dashboard_series()
            got = await metrics(url_b)
            series = got.names() | set(got.families)
            assert not {m for m in queried if m not in series and m.removesuffix("_bucket")
                        .removesuffix("_total") not in got.families}
            graphed = {m.removesuffix("_bucket").removesuffix("_total") for m in queried}
            assert not {f for f in got.families if f.startswith("jobserver_")
                        and not f.endswith("_created")} - graphed

            # The job's events reach the other node through its mirror (at least
            # its start and end: nobody follows it there, so not its lines).
            job_id = await submit(url_a, token, "chatty", {"lines": 50})
            await wait_status(url_a, token, job_id, "SUCCEEDED")
            ran = await wait_node_of(database_url, job_id, "SUCCEEDED")
            runner, watcher = (url_a, url_b) if ran == node_id(dir_a) else (url_b, url_a)
            last_seq = (await get_job(runner, token, job_id))["last_seq"]
            await wait_status(watcher, token, job_id, "SUCCEEDED")
            got = await wait_metric(watcher,
                                    lambda m: m.get("jobserver_mirror_events_total") >= 2)
            assert got.get("jobserver_mirror_events_total") <= last_seq
            assert got.get("jobserver_mirror_notifications_total") >= 1
            assert got.get("jobserver_mirror_reads_total") >= 1
            assert got.get("jobserver_listener_notifications_total") >= \
                got.get("jobserver_mirror_notifications_total")
            assert got.get("jobserver_mirror_jobs") == 0  # it finished: mirrored no more
            claimed = [(await metrics(u)).get("jobserver_node_claimed_jobs_total")
                       for u in (runner, watcher)]
            assert claimed == [1, 0]

            # The LISTEN connections cut: each node opens its own again.
            await query(database_url, "SELECT pg_terminate_backend(pid) FROM "
                        "pg_stat_activity WHERE application_name = 'jobserver-listen'")
            for url in (url_a, url_b):
                await wait_metric(url, lambda m: m.get("jobserver_listener_reconnects_total")
                                  == 1 and m.get("jobserver_listener_connected") == 1)

            # A killed: B declares it dead once, and counts one node alive.
            proc_a.kill()
            await proc_a.wait()
            got = await wait_metric(url_b, lambda m: m.get("jobserver_nodes_alive") == 1
                                    and m.get("jobserver_nodes_declared_dead_total") == 1)
            assert (await query(database_url, "SELECT state FROM nodes WHERE id = %s",
                                node_id(dir_a))) == [("dead",)]


async def test_a_single_nodes_jobs_have_no_node_and_no_node_metrics(
        tmp_path: Path) -> None:
    async with server_process(tmp_path / "one") as (_, url):
        token = admin(tmp_path / "one")
        job_id = await submit(url, token, "echo", {"message": "hi"})
        job = await wait_status(url, token, job_id, "SUCCEEDED")
        assert "node" in job and job["node"] is None
        got = await metrics(url)
        assert not CLUSTER_FAMILIES & set(got.families)
