"""The async dialect under a chatty job: what its per-client sessions cost.

`run_async_watch(counts, lines)`: for each K in `counts`, a fresh server, one
`bench-seq` job (seq N once its go file exists; its template's kind is `job`)
watched by K async-dialect clients (`/v1/async/job/{id}/ws?interval_ms=1000`,
trio-websocket, in this process, connected before the go), and:

- the job's output rate, lines/s from the go to its recorded `completed_at`
  (K = 0 is the baseline: every line still goes through the hub, the store
  and, with K > 0, every watcher's session);
- the `job.updated` messages each watcher got (coalesced: about one per
  second of the run, plus the first line's), and the delay from the job's
  `completed_at` to each watcher's terminal update (p50 and max), which is
  at most one interval when an update went out just before the end.

Every watcher must get the terminal state and the close, else it raises.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .jobserver_benches import _epoch
from .jobserver_target import JobserverServer
from .system import Skip

TIMEOUT = 300.0
CONNECT_AT_ONCE = 50
INTERVAL_MS = 1000


def run_async_watch(counts: Sequence[int], lines: int, *,
                    say: Callable[[str], None]) -> dict[str, Any]:
    try:
        import trio
        import trio_websocket  # noqa: F401  (a test dependency, installed with .[test])
    except ImportError as exc:
        raise Skip(f"needs trio-websocket: {exc}") from None
    out: dict[str, Any] = {}
    say(f"async dialect: a seq job of {lines:,} lines, K watchers, interval {INTERVAL_MS} ms")
    for count in counts:
        found = _one(count, lines, trio)
        say(f"  K={count}: {found['lines_per_s']:,.0f} lines/s"
            + (f", updates per watcher {found['updates_min']}-{found['updates_max']}, "
               f"terminal update {found['terminal_p50_ms']:.0f} ms after the end (p50), "
               f"{found['terminal_max_ms']:.0f} ms (max)" if count else ""))
        out[str(count)] = found
    return out


def _one(count: int, lines: int, trio: Any) -> dict[str, Any]:
    server = JobserverServer()
    try:
        server.start()
        go = server.dir / "go-async"
        job_id = server.submit("bench-seq", {"count": lines, "go_file": str(go)})
        deadline = time.monotonic() + 30
        while server.job(job_id)["status"] != "RUNNING":
            if time.monotonic() > deadline:
                raise RuntimeError("bench-seq job did not start")
            time.sleep(0.01)
        url = f"{server.ws_base}/v1/async/job/{job_id}/ws?interval_ms={INTERVAL_MS}"
        got = trio.run(_watch, url, server.token, count, go)
        job = server.wait_finished(job_id, TIMEOUT)
        if job["status"] != "SUCCEEDED":
            raise RuntimeError(f"bench-seq job ended {job['status']}")
        started, ended = got["go"], _epoch(job["completed_at"])
        result: dict[str, Any] = {"lines_per_s": lines / (ended - started)}
        if count:
            delays = [(t - ended) * 1000 for t in got["terminal_at"]]
            result.update(updates_min=min(got["updates"]), updates_max=max(got["updates"]),
                          terminal_p50_ms=statistics.median(delays),
                          terminal_max_ms=max(delays))
        return result
    finally:
        server.stop()


async def _watch(url: str, token: str, count: int, go: Any) -> dict[str, Any]:
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    headers = [(b"Authorization", f"Bearer {token}".encode())]
    connected = trio.Semaphore(CONNECT_AT_ONCE)
    ready = 0
    all_ready = trio.Event()
    updates: list[int] = []
    terminal_at: list[float] = []

    async def watcher() -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with connected:
                ws = await stack.enter_async_context(open_websocket_url(
                    url, extra_headers=headers, message_queue_size=64))
            try:
                await follow(ws)
            finally:
                await ws._stream.aclose()  # trio-websocket leaves it open after a server close

    async def follow(ws: Any) -> None:
        nonlocal ready
        first = json.loads(await ws.get_message())
        if first["type"] != "job.snapshot":
            raise RuntimeError(f"no snapshot first: {first}")
        ready += 1
        if ready == count:
            all_ready.set()
        seen, last = 0, None
        try:
            while True:
                message = json.loads(await ws.get_message())
                seen += 1
                last = message["data"]
                if last["status"] == "completed":
                    terminal_at.append(time.time())
        except ConnectionClosed as closed:
            if closed.reason is None or closed.reason.code != 1000:
                raise RuntimeError(f"closed {closed.reason}") from None
        if last is None or last["status"] != "completed":
            raise RuntimeError(f"no terminal update: {last}")
        updates.append(seen)

    started = 0.0
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(watcher)
            if count:
                await all_ready.wait()
            started = time.time()
            go.touch()
    return {"go": started, "updates": updates, "terminal_at": terminal_at}
