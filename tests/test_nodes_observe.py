"""What can be seen of several nodes: the node a job runs on (the REST API's job
record, `jobserver show`). Two real server processes on one
fresh database of the suite's PostgreSQL; the database says which node holds
a job, and the figures are compared with what the test made happen.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from .clirun import cli, cli_env
from .procserver import auth, get_job, server_process, submit, wait_status
from .test_nodes import admin, node, node_id, query, wait_node_of


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


async def test_a_single_nodes_jobs_have_no_node(
        tmp_path: Path) -> None:
    async with server_process(tmp_path / "one") as (_, url):
        token = admin(tmp_path / "one")
        job_id = await submit(url, token, "echo", {"message": "hi"})
        job = await wait_status(url, token, job_id, "SUCCEEDED")
        assert "node" in job and job["node"] is None
