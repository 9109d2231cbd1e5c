"""A job printing past its log cap, end to end: head and tail kept, one marker,
followers see every line live, disk and memory bounded."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import trio
from httpx_sse import aconnect_sse

from .conftest import Harness

CAP = 20_000  # the `capped` templates' max_log_bytes
LINE = 12  # "line 000123\n"


async def follow(h: Harness, job_id: str, into: list[dict[str, Any]], *,
                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with httpx.AsyncClient(base_url=h.url, timeout=30) as client, \
            aconnect_sse(client, "GET", f"/api/v1/jobs/{job_id}/stream",
                         headers=h.auth(h.alice)) as source:
        assert source.response.status_code == 200
        task_status.started()
        async for sse in source.aiter_sse():
            into.append(json.loads(sse.data))


def stored_log_chars(data_dir: Path, job_id: str) -> int:
    with closing(sqlite3.connect(data_dir / "jobserver.db")) as conn:
        rows = conn.execute("SELECT data FROM events WHERE job_id = ? AND type = 'log'",
                            (job_id,)).fetchall()
    return sum(len(line) + 1 for (data,) in rows for _, _, lines in json.loads(data)
               for line in lines)


async def test_past_the_cap_head_and_tail_are_kept_and_followers_see_it_all(
        harness: Harness, tmp_path: Path) -> None:
    h = harness
    go = tmp_path / "go"
    # 120,000 bytes: six times the cap; its SSE (1.3 MB) fits in what a live
    # subscriber may have queued (2 MiB), so even a slow follower stays live.
    count = 10_000
    job = await h.submit("capped", {"lines": count, "go_file": str(go)})
    live: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(follow, h, job["id"], live)
        # The follower has read the history (its first events came from the store)
        # before the job prints: from here on it is live.
        with trio.fail_after(10):
            while not any(e["type"] == "started" for e in live):
                await trio.sleep(0.01)
        go.touch()
        done = await h.wait(job["id"], timeout=30)
        with trio.fail_after(10):
            while not live or live[-1]["type"] != "finished":
                await trio.sleep(0.02)
    # The job ran on: the cap is not a failure.
    assert done["status"] == "SUCCEEDED"
    # A follower saw every line live, seqs without a gap.
    # (stdout and stderr are two pipes: their lines interleave as read.)
    seen = [e["line"] for e in live if e["type"] == "log" and e["stream"] == "stdout"]
    assert seen == [f"line {i:06d}" for i in range(count)]
    assert [e["line"] for e in live if e["type"] == "log" and e["stream"] == "stderr"] == [
        "the end"]
    # One marker, after the last line, counting what is not kept.
    marks = [e for e in live if e["type"] == "truncated"]
    assert len(marks) == 1 and marks[0]["seq"] > max(e["seq"] for e in live if e["type"] == "log")
    mark = marks[0]
    assert done["log_truncated"] == {k: mark[k] for k in ("lines", "bytes", "first_seq",
                                                          "last_seq")}
    gone = [e for e in live if e["type"] == "log"
            and mark["first_seq"] <= e["seq"] <= mark["last_seq"]]
    assert (mark["lines"], mark["bytes"]) == (len(gone), sum(len(e["line"]) + 1 for e in gone))
    # Replay: the head, then the tail; the dropped seqs are simply absent.
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/events?limit=1000",
                           headers=h.auth(h.alice))
    stored = r.json()["events"]
    after = r.json()["next_after"]
    while after is not None:
        r = await h.client.get(f"/api/v1/jobs/{job['id']}/events?after={after}&limit=1000",
                               headers=h.auth(h.alice))
        stored += r.json()["events"]
        after = r.json()["next_after"]
    kept = [e for e in stored if e["type"] == "log"]
    assert len(kept) + mark["lines"] == count + 1
    assert not [e for e in kept if mark["first_seq"] <= e["seq"] <= mark["last_seq"]]
    by_seq = {e["seq"]: e["line"] for e in live if e["type"] == "log"}
    assert all(by_seq[e["seq"]] == e["line"] for e in kept)  # a seq never names other content
    head = [e for e in kept if e["seq"] < mark["first_seq"]]
    assert len(head) == (CAP // 2) // LINE  # the first half of the cap
    assert [e["line"] for e in kept if e["stream"] == "stdout"][-1] == f"line {count - 1:06d}"
    # Disk: what is stored is the cap, give or take a tail range (1/128 of it)
    # below and the slack (1/8 of the tail) above.
    assert CAP - CAP // 128 - 2 * LINE <= stored_log_chars(h.data_dir, job["id"]) \
        <= CAP + CAP // 16 + 2 * LINE
    # /logs: the head, one marker line in the gap, the tail.
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs", headers=h.auth(h.alice))
    text = r.text.splitlines()
    gap = len(head)
    assert text[:gap] == [e["line"] for e in head]
    assert text[gap] == (f"[jobserver: log cap reached: {mark['lines']:,} lines "
                         f"({mark['bytes']:,} bytes) dropped, seq {mark['first_seq']}.."
                         f"{mark['last_seq']}]")
    assert text[gap + 1:] == [e["line"] for e in kept[gap:]]
    # Asked from inside the gap: the marker, then the tail.
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs?after={mark['first_seq'] + 5}",
                           headers=h.auth(h.alice))
    assert r.text.splitlines() == text[gap:]
    # Asked for the head only: no marker.
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs?until={mark['first_seq'] - 1}",
                           headers=h.auth(h.alice))
    assert r.text.splitlines() == text[:gap]


async def test_on_log_cap_kill_ends_the_job(harness: Harness) -> None:
    h = harness
    job = await h.submit("capped_kill")
    done = await h.wait(job["id"], timeout=30)
    assert done["status"] == "FAILED" and done["outcome"] == "log_cap"
    assert done["error_message"] == "stopped: the log passed its cap of 20,000 bytes"
    r = await h.client.get(f"/api/v1/jobs/{job['id']}/logs", headers=h.auth(h.alice))
    assert r.text.startswith("line 000000\nline 000001\n")
    assert stored_log_chars(h.data_dir, job["id"]) <= CAP * 9 // 8 + 64 * 1024
