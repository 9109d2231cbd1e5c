"""A cursor past the end of a job's events (`?after=`, `Last-Event-ID`), as a
client with a stale or made-up seq sends it: what each REST route and the
native stream answer, as the README's native API section says. Against a real
server; a live job's stream is read as it goes on."""

from __future__ import annotations

import trio

from jobserver.core.ids import JobId
from jobserver.core.topics import JobTopic

from .conftest import Harness
from .procserver import Received, follow_sse

BEYOND = 10**6  # far past any seq these jobs reach


async def test_after_past_a_finished_jobs_end(harness: Harness) -> None:
    h = harness
    job = await h.submit("echo", {"message": "hi"})
    done = await h.wait(job["id"], "SUCCEEDED")
    last = done["last_seq"]
    for after in (last, BEYOND):
        r = await h.client.get(f"/api/v1/jobs/{job['id']}/events", params={"after": after},
                               headers=h.auth(h.alice))
        assert r.status_code == 200
        assert r.json() == {"events": [], "next_after": None, "status": "SUCCEEDED"}
        r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs", params={"after": after},
                               headers=h.auth(h.alice))
        assert r.status_code == 200 and r.text == ""
        got = Received()
        with trio.fail_after(10):
            await follow_sse(h.url, h.alice, job["id"], after, got)
        assert got.ended and got.items == []  # 204: nothing more will ever come
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/events", params={"after": 2**62 + 1},
                           headers=h.auth(h.alice))
    assert r.status_code == 422  # past any seq there can be


async def test_after_past_a_live_jobs_end_streams_from_now(harness: Harness) -> None:
    h = harness
    job = await h.submit("sleep", {"seconds": 30})
    running = await h.wait(job["id"], "RUNNING")
    got = Received()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_sse, h.url, h.alice, job["id"], BEYOND, got)
        with trio.fail_after(10):  # the stream is open
            while not h.server.engine.hub.subscriber_count(JobTopic(JobId(job["id"]))):
                await trio.sleep(0.02)
        r = await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))
        assert r.status_code == 202
        with trio.fail_after(15):
            while not got.ended:
                await trio.sleep(0.02)
    # From now: the events after the job's last one when the stream opened
    # (seqs lower than the client's cursor), up to its end.
    seqs = [seq for seq, _ in got.items]
    assert seqs[0] > running["last_seq"] and seqs == sorted(seqs)
    assert got.items[-1][1]["type"] == "finished"
    assert seqs[-1] < BEYOND
