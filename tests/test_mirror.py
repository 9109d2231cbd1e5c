"""The mirror between two engines on one PostgreSQL database: node A records a
job's events, node B's hub gets them from A's notifications (mirror.py), and
B's lookups show the job running at the position B has published.

Real stores, a real LISTEN connection; the jobs' events are recorded through
A's engine as its runs would (no process: the subject is the mirror)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from jobserver.auth import Principal
from jobserver.core import events as ev
from jobserver.core.ids import JobId, UserId
from jobserver.core.topics import ALL_JOBS, JobTopic, OwnerTopic, TopicEvent
from jobserver.engine import Engine
from jobserver.hub import Hub
from jobserver.livejob import LiveJob, Submission
from jobserver.mirror import CHANNELS, Mirror
from jobserver.store import JobFilter
from jobserver.store.postgres import PostgresStore
from jobserver.store.postgres_listen import APPLICATION_NAME, Listener

from .conftest import make_config

pytestmark = pytest.mark.timeout(60)
ALICE = Principal(sub=UserId("alice"), role="user")


class Collector:
    """A hub subscriber keeping what it is given."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.changed = trio.Event()

    def deliver(self, events: Sequence[Any]) -> None:
        self.got.extend(events)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, test: Callable[[], bool]) -> None:
        with trio.fail_after(15):
            while not test():
                await self.changed.wait()


@dataclass
class Nodes:
    a: Engine
    b: Engine
    mirror: Mirror
    listener: Listener
    url: str


@pytest.fixture
async def nodes(nursery: trio.Nursery, database_url: str, tmp_path: Path
                ) -> Nodes:
    engines = []
    for name in ("a", "b"):
        store = PostgresStore(database_url)
        await nursery.start(store.run)
        engines.append(Engine(make_config(tmp_path / name), store, Hub()))
    mirror = Mirror(engines[1])
    listener = Listener(database_url, retry_first=0.05, retry_max=0.2)
    listener.listen(CHANNELS, mirror)
    await nursery.start(listener.run)
    await nursery.start(mirror.run)
    return Nodes(engines[0], engines[1], mirror, listener, database_url)


async def start(engine: Engine) -> LiveJob:
    job = await engine.submit(ALICE, Submission(template="echo", params={"message": "hi"}))
    live = engine.live(job.id)
    assert live is not None
    await engine.record(live, [lambda s: ev.Started(job_id=job.id, seq=s, ts=1.0, pid=1,
                                                    command="echo hi")])
    return live


async def finish(engine: Engine, live: LiveJob) -> None:
    await engine.record(live, [lambda s: ev.Finished(
        job_id=live.job.id, seq=s, ts=2.0, status="SUCCEEDED", outcome="succeeded", exit_code=0)])
    engine.forget(live.job.id)
    await engine.store.wait_flushed()


async def wait_until(test: Callable[[], bool]) -> None:
    with trio.fail_after(15):
        while not test():
            await trio.sleep(0.01)


async def test_a_followed_job_reaches_the_other_node_in_order(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(a)
    job_id = live.job.id
    await wait_until(lambda: b.live(job_id) is not None and
                     b.published_seq(JobTopic(job_id)) == 2)
    # B shows A's job running, at the position B has published.
    found = await b.get_any(job_id)
    assert found is not None and found.status.value == "RUNNING" and found.last_seq == 2
    assert [j.id for j in b.published_jobs(OwnerTopic(UserId("alice")))] == [job_id]
    follower, owner = Collector(), Collector()
    b.hub.subscribe(JobTopic(job_id), follower)
    b.hub.subscribe(OwnerTopic(UserId("alice")), owner)
    for i in range(20):
        await a.record_logs(live, "stdout", 1.5, [f"line {i}.{j}" for j in range(500)])
    await finish(a, live)
    total = 2 + 20 * 500 + 1
    await follower.wait_for(lambda: bool(follower.got) and follower.got[-1].seq == total)
    assert [e.seq for e in follower.got] == list(range(3, total + 1))
    assert [e.line for e in follower.got if type(e) is ev.Log][:2] == ["line 0.0", "line 0.1"]
    assert [type(t.event) for t in owner.got] == [ev.Finished]
    assert b.live(job_id) is None  # finished: read from the store again
    done = await b.get_any(job_id)
    assert done is not None and done.status.value == "SUCCEEDED"


async def test_an_unfollowed_job_reads_no_lines_but_tells_the_aggregates(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    everyone = Collector()
    b.hub.subscribe(ALL_JOBS, everyone)
    live = await start(a)
    await a.record_logs(live, "stdout", 1.5, [f"l{i}" for i in range(3000)])
    await finish(a, live)
    await everyone.wait_for(lambda: any(type(t.event) is ev.Finished for t in everyone.got))
    kinds = [type(t.event) for t in everyone.got if isinstance(t, TopicEvent)]
    assert kinds == [ev.Queued, ev.Started, ev.Finished]
    assert nodes.mirror.statistics().events == 3  # no output line was read
    assert b.system_status().running == 0


async def test_a_follower_arriving_mid_job_gets_the_lines_from_then_on(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(a)
    job_id = live.job.id
    await a.record_logs(live, "stdout", 1.5, ["early"] * 100)
    await wait_until(lambda: b.published_seq(JobTopic(job_id)) == 102)
    assert b.system_status().running == 1
    follower = Collector()
    b.hub.subscribe(JobTopic(job_id), follower)  # as a channel does, at published_seq
    await a.record_logs(live, "stdout", 1.5, ["late"] * 100)
    await finish(a, live)
    await follower.wait_for(lambda: bool(follower.got) and follower.got[-1].seq == 203)
    assert [e.seq for e in follower.got] == list(range(103, 204))
    assert b.system_status().running == 0


async def test_a_deleted_job_ends_its_streams_on_the_other_node(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(a)
    job_id = live.job.id
    await finish(a, live)
    owner = Collector()
    b.hub.subscribe(OwnerTopic(UserId("alice")), owner)
    await wait_until(lambda: nodes.mirror.statistics().events >= 3 and b.live(job_id) is None)
    await a.delete(ALICE, job_id)
    await owner.wait_for(lambda: any(type(t.event) is ev.Deleted for t in owner.got))
    deleted = [t.event for t in owner.got if type(t.event) is ev.Deleted]
    assert [(e.job_id, e.seq) for e in deleted] == [(job_id, 4)]


async def test_after_a_lost_connection_the_mirror_reads_what_it_missed(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(a)
    job_id = live.job.id
    await wait_until(lambda: b.published_seq(JobTopic(job_id)) == 2)
    follower = Collector()
    b.hub.subscribe(JobTopic(job_id), follower)
    # B's LISTEN connection goes: what A commits now is notified to nobody.
    with psycopg.connect(nodes.url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = %s", (APPLICATION_NAME,))
    await a.record_logs(live, "stdout", 1.5, ["while away"] * 50)
    await finish(a, live)
    await follower.wait_for(lambda: bool(follower.got) and follower.got[-1].seq == 53)
    assert [e.seq for e in follower.got] == list(range(3, 54))
    assert nodes.listener.statistics().connects == 2


async def test_a_job_of_the_other_node_found_at_start_is_mirrored(
        nursery: trio.Nursery, database_url: str, tmp_path: Path) -> None:
    store_a = PostgresStore(database_url)
    await nursery.start(store_a.run)
    a = Engine(make_config(tmp_path / "a"), store_a, Hub())
    live = await start(a)
    await a.store.wait_flushed()
    store_b = PostgresStore(database_url)
    await nursery.start(store_b.run)
    b = Engine(make_config(tmp_path / "b"), store_b, Hub())
    mirror = Mirror(b)
    listener = Listener(database_url)
    listener.listen(CHANNELS, mirror)
    await nursery.start(listener.run)
    await nursery.start(mirror.run)
    job_id: JobId = live.job.id
    await wait_until(lambda: b.published_seq(JobTopic(job_id)) == 2)
    running = b.live(job_id)
    assert running is not None and running.published.status.value == "RUNNING"
    jobs, _ = await b.list(Principal(sub=UserId("root"), role="admin"), JobFilter())
    assert [(j.id, j.status.value) for j in jobs] == [(job_id, "RUNNING")]


async def test_settle_publishes_what_is_missing_before_this_node_takes_a_job_on(
        nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(a)
    job_id = live.job.id
    await wait_until(lambda: b.published_seq(JobTopic(job_id)) == 2)
    follower, owner = Collector(), Collector()
    b.hub.subscribe(JobTopic(job_id), follower)
    b.hub.subscribe(OwnerTopic(UserId("alice")), owner)
    await a.record_logs(live, "stdout", 1.5, ["before the hand-over"] * 30)
    await a.record(live, [lambda s: ev.Bounce(job_id=job_id, seq=s, ts=3.0, reason="stop"),
                          lambda s: ev.Queued(job_id=job_id, seq=s, ts=3.0, reason="restart")])
    await a.store.wait_flushed()
    await nodes.mirror.settle(job_id, 34)  # as B claims it, from the store's record
    assert b.remote(job_id) is None and b.published_seq(JobTopic(job_id)) == 0
    assert [e.seq for e in follower.got] == list(range(3, 35))  # each once, in order
    assert [type(t.event) for t in owner.got] == [ev.Bounce, ev.Queued]
    assert b.system_status().queued == 0  # B's own run will count it


async def test_a_job_queued_here_and_run_by_the_other_node_is_followed_here(
        nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    owner = Collector()
    b.hub.subscribe(OwnerTopic(UserId("alice")), owner)
    job = await b.submit(ALICE, Submission(template="echo", params={"message": "hi"}))
    follower = Collector()
    b.hub.subscribe(JobTopic(job.id), follower)
    # The database is the queue: B lets the QUEUED job go, A claims it (as the
    # nodes' claiming does: the record from the store, live on A).
    b.forget(job.id)
    assert b.live(job.id) is not None and b.published_seq(JobTopic(job.id)) == 1
    record = await a.store.get_job(job.id)
    assert record is not None
    claimed = LiveJob(record)
    a._live[job.id] = claimed
    await a.record(claimed, [lambda s: ev.Started(job_id=job.id, seq=s, ts=1.0, pid=1,
                                                  command="echo hi")])
    await a.record_logs(claimed, "stdout", 1.5, ["hi"])
    await finish(a, claimed)
    await follower.wait_for(lambda: bool(follower.got) and follower.got[-1].seq == 4)
    assert [e.seq for e in follower.got] == [2, 3, 4]
    assert [type(t.event) for t in owner.got] == [ev.Queued, ev.Started, ev.Finished]
    assert b.live(job.id) is None and b.system_status().queued == 0


async def test_a_job_run_here_and_deleted_by_the_other_node_ends_here(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    live = await start(b)  # B runs it
    job_id = live.job.id
    await finish(b, live)
    owner = Collector()
    b.hub.subscribe(OwnerTopic(UserId("alice")), owner)
    await a.delete(ALICE, job_id)
    await owner.wait_for(lambda: bool(owner.got))
    assert [(type(t.event), t.event.job_id, t.event.seq) for t in owner.got] == \
        [(ev.Deleted, job_id, 4)]
