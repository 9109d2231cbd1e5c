"""Idle subscribers: how much server memory each held WebSocket costs.

For each target: connect `connections` subscribers to one job (bounded by the
fd limit: the client and the server each need one fd per connection, plus
slack), wait until every one got its first message, and take the server's
process-group RSS before and after. Bytes per connection = RSS growth / ready.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

from .loadgen import LoadClient
from .procs import group_rss_bytes
from .targets import Plan, Target, TargetUnavailable

FD_SLACK = 200
SETTLE_SECONDS = 1.0
CONNECT_TIMEOUT = 120.0


def connections_allowed(wanted: int) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(min(wanted, soft - FD_SLACK), 0)


def idle_one(target: Target, client: LoadClient, connections: int) -> dict[str, Any]:
    url = target.prepare(Plan(count=0))
    time.sleep(SETTLE_SECONDS)
    before = group_rss_bytes(target.pid)
    try:
        ready = client.connect(url, connections, timeout=CONNECT_TIMEOUT)
        time.sleep(SETTLE_SECONDS)
        after = group_rss_bytes(target.pid)
    finally:
        client.close()
    target.trigger()
    target.settle(30.0)
    per = (after - before) / ready.ready if ready.ready else None
    return {"connections": ready.ready, "wanted": connections, "rss_before": before,
            "rss_after": after, "bytes_per_connection": per, "errors": ready.errors}


def run_idle(targets: Sequence[Target], connections: int, *, workers: int = 2,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    allowed = connections_allowed(connections)
    results: dict[str, Any] = {}
    with LoadClient(workers=workers) as client:
        for target in targets:
            try:
                with target:
                    results[target.key] = idle_one(target, client, allowed)
            except TargetUnavailable as exc:
                results[target.key] = {"skipped": str(exc)}
            r = results[target.key]
            say(f"idle: {target.label}: " + (
                f"{r['connections']} connections, {r['bytes_per_connection'] or 0:,.0f} B each"
                if "skipped" not in r else f"skipped: {r['skipped']}"))
    return results
