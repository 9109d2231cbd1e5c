"""The log cap's accounting (core/logcap.py) and the store's trim, as units."""

from __future__ import annotations

from itertools import pairwise

import trio

from jobserver.core import events as ev
from jobserver.core.ids import new_job_id
from jobserver.core.logcap import SLACK, TAIL_ENTRIES, LogCap

from .stores import Backend
from .test_store import make_job


def feed(cap: LogCap, lines: list[str], *, first: int = 1, batch: int = 1
         ) -> list[tuple[int, int]]:
    cuts = []
    for at in range(0, len(lines), batch):
        cut = cap.add(first + at, lines[at:at + batch])
        if cut is not None:
            cuts.append(cut)
    return cuts


def test_under_the_cap_nothing_is_cut() -> None:
    cap = LogCap(1000)
    assert feed(cap, ["x" * 9] * 100, batch=7) == []  # exactly 1000 bytes
    assert cap.marker() is None and not cap.reached


def test_past_the_cap_the_head_stays_and_the_oldest_tail_goes() -> None:
    cap = LogCap(1000)
    lines = [f"{i:09d}" for i in range(1000)]  # 10 bytes each, seq = i + 1
    cuts = feed(cap, lines, batch=3)
    assert cap.reached and cuts
    dropped = cap.marker()
    assert dropped is not None
    # The head: the first 500 bytes, seqs 1..50; every cut is after it, in order.
    assert dropped.first_seq == 51 == cuts[0][0]
    assert all(a[1] < b[0] for a, b in pairwise(cuts))
    assert dropped.last_seq == cuts[-1][1]
    assert dropped.lines == sum(hi - lo + 1 for lo, hi in cuts) == dropped.bytes // 10
    kept = 1000 - dropped.lines
    # Kept: head + tail, the cap give or take a batch (30 bytes), and the slack.
    assert 1000 - 30 <= kept * 10 <= 1000 + 500 // SLACK + 30


def test_a_batch_that_fills_the_head_is_split() -> None:
    cap = LogCap(100)  # head 50 bytes: five lines of 10
    assert cap.add(1, [f"{i:09d}" for i in range(8)]) is None
    assert cap.add(9, ["y" * 99]) is not None  # the tail overflows at once
    dropped = cap.marker()
    assert dropped is not None and dropped.first_seq == 6


def test_memory_stays_bounded_whatever_the_number_of_lines() -> None:
    cap = LogCap(1 << 16)
    feed(cap, ["z"] * 300_000, batch=1)  # a line per read, the worst case
    assert len(cap._tail) <= TAIL_ENTRIES + 2
    dropped = cap.marker()
    assert dropped is not None and dropped.lines > 300_000 - (1 << 16)


async def test_the_store_trims_inside_chunks_and_keeps_other_events(stores: Backend) -> None:
    store = stores.new(linger=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        job = make_job()
        jid = job.id
        first = ev.make_logs(jid, 1, 1.0, "stdout", [f"a{i}" for i in range(1, 11)])
        warn = ev.Warning(job_id=jid, seq=11, ts=2.0, message="stays")
        second = ev.make_logs(jid, 12, 3.0, "stderr", [f"b{i}" for i in range(12, 21)])
        await store.write([*first, warn, *second], job)
        await store.trim_logs(jid, 4, 15)  # the middle of two chunks, over the warning
        await store.wait_flushed()
        got = await store.events_after(jid, 0, limit=100)
        assert [e.seq for e in got] == [1, 2, 3, 11, 16, 17, 18, 19, 20]
        assert [e.line for e in got if isinstance(e, ev.Log)] == [
            "a1", "a2", "a3", "b16", "b17", "b18", "b19", "b20"]
        assert [e.seq for e in await store.events_after(jid, 2, limit=2)] == [3, 11]
        await store.trim_logs(new_job_id(), 1, 5)  # nothing there: fine
        await store.trim_logs(jid, 17, 17)  # one line inside a chunk
        await store.wait_flushed()
        got = await store.events_after(jid, 15, limit=100)
        assert [e.seq for e in got] == [16, 18, 19, 20]
        nursery.cancel_scope.cancel()
