"""A job whose log passed its cap when the server was killed -9: recovery
records its `truncated` marker (from the counts its record carries) before
the job ends lost or goes back to the queue."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import trio

from jobserver.auth import KeyRing
from jobserver.core import events as ev
from jobserver.core.job import Job, apply

from .procserver import all_events, auth, server_process, submit, wait_status

LINES = 5000  # of 12 bytes: three times the templates' 20000-byte cap
WRITTEN_LINES = LINES + 1  # and "printed" on stderr
WRITTEN_BYTES = LINES * 12 + len("printed\n")
# queued (1), started (2), then the log lines: the last line's seq.
LAST_LINE_SEQ = 2 + WRITTEN_LINES


async def wait_all_lines_stored(url: str, token: str, job_id: str) -> None:
    """Until the store has the job's last line (the events API reads committed events)."""
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(30):
            while True:
                r = await client.get(f"/api/v1/jobs/{job_id}/events",
                                     params={"after": LAST_LINE_SEQ - 1}, headers=auth(token))
                assert r.status_code == 200, r.text
                if r.json()["events"]:
                    return
                await trio.sleep(0.05)


def check_marker(events: list[dict[str, Any]], marker: dict[str, Any]) -> None:
    """The marker counts what the store no longer has of the run's log."""
    logs = [e for e in events if e["type"] == "log" and e["seq"] <= LAST_LINE_SEQ]
    kept_bytes = sum(len(e["line"]) + 1 for e in logs)
    assert marker["lines"] > 0
    assert (marker["lines"], marker["bytes"]) == (WRITTEN_LINES - len(logs),
                                                  WRITTEN_BYTES - kept_bytes)
    seqs = {e["seq"] for e in events}
    gone = set(range(marker["first_seq"], marker["last_seq"] + 1))
    assert not gone & seqs and len(gone) == marker["lines"]
    assert marker["seq"] > LAST_LINE_SEQ
    # The head and the tail are both there: seq 3 (the first line) and the last.
    assert 3 in seqs and LAST_LINE_SEQ in seqs


async def test_a_capped_log_is_marked_truncated_after_a_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    async with server_process(data_dir) as (proc, url):
        token = KeyRing.load_or_create(data_dir).issue("alice", "user")
        lost = await submit(url, token, "capped_hang", {"lines": LINES})
        requeued = await submit(url, token, "capped_hang_requeue", {"lines": LINES})
        for job_id in (lost, requeued):
            await wait_all_lines_stored(url, token, job_id)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    async with server_process(data_dir) as (proc, url):
        try:
            await _check_recovered(url, token, lost, requeued)
        finally:  # the requeued one runs again: end it (on a failure too)
            async with httpx.AsyncClient(base_url=url) as client:
                await client.post(f"/api/v1/jobs/{requeued}/cancel", headers=auth(token))
            await wait_status(url, token, requeued, "CANCELLED")


async def _check_recovered(url: str, token: str, lost: str, requeued: str) -> None:
    job = await wait_status(url, token, lost, "FAILED")
    assert job["outcome"] == "lost" and job["log_dropped"] is None
    events = await all_events(url, token, lost)
    assert [e["type"] for e in events[-3:]] == ["warning", "truncated", "finished"]
    marker = events[-2]
    check_marker(events, marker)
    assert job["log_truncated"] == {k: marker[k] for k in ("lines", "bytes", "first_seq",
                                                           "last_seq")}
    # The requeued one: its marker before the bounce, then its next attempt.
    await wait_status(url, token, requeued, "RUNNING")
    events = await all_events(url, token, requeued)
    types = [e["type"] for e in events]
    bounce = types.index("bounce")
    assert types[bounce - 2:bounce + 2] == ["warning", "truncated", "bounce", "queued"]
    check_marker(events, events[bounce - 1])


def test_the_record_keeps_the_running_counts_and_reads_older_records() -> None:
    older = {"id": "j", "owner": "alice", "template": "capped_hang", "status": "RUNNING"}
    assert Job.from_dict(older).log_dropped is None  # a record from before the field
    counts = {"lines": 3, "bytes": 36, "first_seq": 10, "last_seq": 12}
    job = dataclasses.replace(Job.from_dict(older), log_dropped=counts)
    assert Job.from_dict(job.to_dict()).log_dropped == counts
    marked = apply(job, ev.Truncated(job_id=job.id, seq=13, ts=0.0, **counts))
    assert marked.log_dropped is None and marked.log_truncated == counts
