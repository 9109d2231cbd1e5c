"""The async dialect's session, sans-IO: its timer and coalescing on a virtual
clock (exact: at most one `job.updated` per interval, the first change after a
quiet interval at once, the final state always sent), and its payload."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from jobserver.auth import Principal
from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId, new_job_id
from jobserver.core.job import Job
from jobserver.core.states import Status
from jobserver.core.topics import JobTopic
from jobserver.dialects import (
    Accept,
    Action,
    Authenticate,
    Close,
    LookUp,
    ReadEvents,
    SessionEnv,
    StreamRequest,
    Timer,
    Watch,
    WatchLines,
)
from jobserver.dialects.async_jobs import AsyncJobSession, parse_flag, parse_interval, payload

from .conftest import make_config

ALICE = Principal(UserId("alice"), "user")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def running_job(job_id: JobId, t: float) -> Job:
    return Job(id=job_id, owner=ALICE.sub, template="async-gated", kind="batch",
               status=Status.RUNNING, created_at=t - 1, started_at=t - 0.5,
               correlation_id="req-1", last_seq=2)


def opened(tmp_path: Path, clock: Clock, query: dict[str, str], job: Job
           ) -> tuple[AsyncJobSession, list[Action]]:
    env = SessionEnv(config=make_config(tmp_path), clock=clock)
    request = StreamRequest(method="GET", path="/", query=query,
                            headers={"authorization": "Bearer t"},
                            params={"kind": "batch", "job_id": job.id})
    session = AsyncJobSession(request, env)
    (auth,) = session.open()
    assert isinstance(auth, Authenticate) and auth.token == "t"
    (lookup,) = session.on_result(auth, ALICE)
    assert isinstance(lookup, LookUp)
    (read,) = session.on_result(lookup, job)
    assert isinstance(read, ReadEvents) and read.after == 0
    history: list[ev.Event] = [
        ev.Queued(job_id=job.id, seq=1, ts=job.created_at),
        ev.Started(job_id=job.id, seq=2, ts=job.started_at or 0, pid=1, command="x")]
    return session, list(session.on_result(read, history))


def messages(actions: Sequence[Action]) -> list[dict[str, Any]]:
    return [json.loads(a) for a in actions if isinstance(a, str)]


def timers(actions: Sequence[Action]) -> list[float | None]:
    return [a.delay for a in actions if isinstance(a, Timer)]


def test_coalescing_on_a_virtual_clock(tmp_path: Path) -> None:
    clock = Clock()
    job_id = new_job_id()
    session, actions = opened(tmp_path, clock, {"interval_ms": "1000"},
                              running_job(job_id, clock.now))
    assert isinstance(actions[0], Accept)
    assert [m["type"] for m in messages(actions)] == ["job.snapshot"]
    assert actions[-1] == Watch(JobTopic(job_id), 2, lines=True)  # for the first line
    topic = JobTopic(job_id)
    start = clock.now
    timer_at: float | None = None
    sent: list[tuple[float, dict[str, Any]]] = []
    latest: list[float] = []  # the pct of the last event given to the session, when each went
    closed_at: float | None = None
    last_pct = 0.0

    def take(out: Sequence[Action]) -> None:
        nonlocal timer_at, closed_at
        for m in messages(out):
            assert m["type"] == "job.updated"
            sent.append((clock.now, m["data"]))
            latest.append(last_pct)
        for delay in timers(out):
            timer_at = None if delay is None else clock.now + delay
        if any(isinstance(a, Close) for a in out):
            assert closed_at is None
            closed_at = clock.now

    # A chatty job: a progress event every 10 ms for 3.35 s, a line of output
    # among them, then the end (inside an interval: it must not be lost).
    seq = 3
    for step in range(336):
        clock.now = start + step * 0.01
        if timer_at is not None and clock.now >= timer_at:
            timer_at = None
            take(session.on_tick(clock.now))
        last_pct = step / 4
        batch: list[ev.Event] = [ev.Progress(job_id=job_id, seq=seq, ts=clock.now, pct=last_pct)]
        if step == 50:
            batch.append(ev.Log(job_id=job_id, seq=seq + 1, ts=clock.now, stream="stdout",
                                line="hello"))
        seq += len(batch)
        take(session.on_events(topic, batch))
    clock.now += 0.01
    take(session.on_events(topic, [ev.Finished(job_id=job_id, seq=seq, ts=clock.now,
                                               status="SUCCEEDED", outcome="succeeded",
                                               exit_code=0)]))
    assert closed_at is None  # the end came inside an interval: it waits for the timer
    while closed_at is None:
        assert timer_at is not None
        clock.now = timer_at
        timer_at = None
        take(session.on_tick(clock.now))
    times = [t for t, _ in sent]
    assert times[0] == start  # the first change after a quiet interval goes at once
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    assert len(sent) == 5  # at 0, 1, 2, 3 s, and the end at 4 s
    # Each carries the latest state when it went; the last one the final state.
    assert [data["progress"]["pct"] for _, data in sent] == latest
    assert latest[1:4] == [24.75, 49.75, 74.75]  # the states just before 1, 2 and 3 s
    final = sent[-1][1]
    assert final["status"] == "completed" and closed_at == times[-1]
    assert final["latency_ms"] == 1500  # created 1 s before start, the line at 0.5 s
    assert not session.on_events(topic, [ev.Deleted(job_id=job_id, seq=seq + 1, ts=clock.now)])


def test_no_update_without_a_change_and_refresh_is_a_snapshot(tmp_path: Path) -> None:
    clock = Clock()
    job_id = new_job_id()
    session, _ = opened(tmp_path, clock, {"close_on_terminal": "false"},
                        running_job(job_id, clock.now))
    topic = JobTopic(job_id)
    lines = [ev.Log(job_id=job_id, seq=s, ts=clock.now, stream="stdout", line="x")
             for s in range(3, 10)]
    first = session.on_events(topic, lines)
    assert [m["type"] for m in messages(first)] == ["job.updated"]  # the first line's latency
    assert timers(first) == [2.5]
    # The first line seen, the watch goes on without lines.
    assert first[-1] == WatchLines(topic, False)
    more = [ev.Log(job_id=job_id, seq=s, ts=clock.now, stream="stdout", line="x")
            for s in range(10, 20)]
    assert not session.on_events(topic, more)
    assert not session.on_tick(clock.now)  # nothing changed meanwhile: no timer either
    refreshed = messages(session.on_message('{"type": "refresh"}'))
    assert [m["type"] for m in refreshed] == ["job.snapshot"]
    end = ev.Finished(job_id=job_id, seq=20, ts=clock.now, status="CANCELLED",
                      outcome="cancelled", exit_code=-100)
    out = session.on_events(topic, [end])
    assert [m["data"]["status"] for m in messages(out)] == ["cancelled"]
    assert not any(isinstance(a, Close) for a in out)  # close_on_terminal=false
    gone = session.on_events(topic, [ev.Deleted(job_id=job_id, seq=21, ts=clock.now)])
    assert [m["type"] for m in messages(gone)] == ["job.deleted"]
    assert gone[-1] == Close(1000, "job deleted")


def test_payload_fields_only_what_is_known() -> None:
    job = Job(id=JobId("j"), owner=UserId("u"), template="t", kind="video",
              status=Status.FAILED, created_at=100.0, started_at=101.0, completed_at=104.5,
              exit_code=3, outcome="failed", error_message="exited with code 3",
              correlation_id="c", result={"native_id": 7})
    data = payload(job, first_output_at=None)
    assert "native_id" not in data  # not a string: not an id the job reported
    assert "latency_ms" not in data and "generation_ms" not in data
    assert data["total_duration_ms"] == data["duration_ms"] == 4500
    assert data["upstream_error"] == {"code": "failed", "message": "exited with code 3",
                                      "status": 3}
    assert data["request_id"] == "c" and data["finalized_at"] == data["completed_at"]
    queued = Job(id=JobId("j"), owner=UserId("u"), template="t", kind="video")
    data = payload(queued, first_output_at=None)
    assert data["status"] == "queued" and data["request_id"] is None
    assert not {"total_duration_ms", "finalized_at", "upstream_error", "progress",
                "result"} & set(data)


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 2500), ("1000", 1000), ("999", 1000), ("0", 1000), ("10000", 10000),
    ("10001", 10000), ("1" * 30, 10000), ("abc", None), ("-1", None), ("1e3", None),
    ("", None), ("٣", None)])
def test_interval_ms(raw: str | None, expected: int | None) -> None:
    assert parse_interval(raw, minimum=1000) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (None, True), ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False),
    ("", None), ("2", None), ("nope", None)])
def test_close_on_terminal(raw: str | None, expected: bool | None) -> None:
    assert parse_flag(raw, default=True) is expected


def test_a_new_run_watches_for_its_first_line_again(tmp_path: Path) -> None:
    clock = Clock()
    job_id = new_job_id()
    topic = JobTopic(job_id)
    session, _ = opened(tmp_path, clock, {}, running_job(job_id, clock.now))
    out = session.on_events(topic, [ev.Log(job_id=job_id, seq=3, ts=clock.now + 1,
                                           stream="stdout", line="a")])
    assert out[-1] == WatchLines(topic, False)
    assert messages(out)[0]["data"]["latency_ms"] == 2000
    out = session.on_events(topic, [
        ev.Bounce(job_id=job_id, seq=4, ts=clock.now + 2, reason="server shutting down"),
        ev.Queued(job_id=job_id, seq=5, ts=clock.now + 2, reason="bounce"),
        ev.Started(job_id=job_id, seq=6, ts=clock.now + 3, pid=2, command="x")])
    assert out[-1] == WatchLines(topic, True)
    assert [m["data"]["status"] for m in messages(session.on_tick(clock.now + 4))] == [
        "in_progress"]  # (queued and running again within the interval: one update)
    assert not session.on_tick(clock.now + 6)
    out = session.on_events(topic, [ev.Log(job_id=job_id, seq=7, ts=clock.now + 5,
                                           stream="stderr", line="b")])
    assert messages(out)[0]["data"]["latency_ms"] == 6000  # the new run's first line
    assert out[-1] == WatchLines(topic, False)
