"""A subscriber that stops reading at a flood's first line: the
server's memory stays bounded (the stalled one is held to its outbox, then
dropped), and a fast subscriber beside it gets every line, in order.

`JOBSERVER_TEST_FLOOD_LINES` sets the flood (a small default in CI; the
issue's 2,000,000 in a soak run). The bound stated and checked: the process's
RSS rises by less than `RSS_BOUND` over the run, whatever the flood's size
(the server, the job's pumps and both clients share this process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from .test_dataplane_fanout import STALL_PONG, _burst, wait_stats
from .test_dataplane_helpers import rss_bytes, running_server

pytestmark = pytest.mark.reliability

LINES = int(os.environ.get("JOBSERVER_TEST_FLOOD_LINES", "100000"))
RSS_BOUND = 96 * 1024 * 1024


async def test_a_never_reading_subscriber_costs_bounded_memory(data_dir: Path) -> None:
    async with running_server(data_dir, max_lag_events=1000, ws_ping_interval=0.5,
                              ws_ping_timeout=STALL_PONG) as h:
        before = rss_bytes()
        start = trio.current_time()
        peak, backlog, held, _ = await _burst(h, "flood", LINES, stall=True)
        elapsed = trio.current_time() - start
        assert held is not None
        stalled, _ = held
        # Dropped once its socket stayed full past the stall timeout; nothing held.
        await wait_stats(h, 3 * STALL_PONG, connections=0, slow_writers=0, backlog_bytes=0)
        await stalled.aclose()
        line_bytes = LINES * len(f"line {LINES} {'x' * 100}\n")
        print(f"\nflood of {LINES} lines ({line_bytes / 2**20:.0f} MiB) in {elapsed:.1f} s "
              f"({LINES / elapsed:,.0f} lines/s) with a never-reading subscriber: RSS "
              f"{before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB "
              f"(+{(peak - before) / 2**20:.0f} MB), largest backlog {backlog / 2**10:.0f} KiB")
        assert peak - before < RSS_BOUND, f"RSS rose {(peak - before) >> 20} MiB"
