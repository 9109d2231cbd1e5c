"""/metrics of the data plane and the front door, moved by real peers on
loopback: a subscriber that stops reading (lagged, then caught up from the
store), and connections refused before routing (over capacity, slow head, bad
head, a plain request on a WebSocket path)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import trio

from .test_dataplane_helpers import RawWebSocket, gated_job, logs_path, running_server
from .test_metrics import Scrape, scrape

LAGGED = "jobserver_stream_lagged_subscribers_total"
REFUSED = "jobserver_http_refused_total"
# A client receive buffer this small fills after a few frames: the server's
# outbox then queues past max_lag_events at once.
SMALL_RCVBUF = 4096


async def _small_buffer_stream(port: int) -> trio.SocketStream:
    """A loopback connection whose receive buffer was shrunk *before* connecting
    (so the window it announces is small from the first segment)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_a_job_subscriber_that_stops_reading_is_counted_lagged_and_catches_up(
        data_dir: Path) -> None:
    count = 60_000
    async with running_server(data_dir, max_lag_events=200, ws_ping_interval=10,
                              ws_ping_timeout=10) as h:
        before = (await scrape(h)).get(LAGGED)
        go = h.data_dir / "go-lag"
        job = await gated_job(h, go, count, "z" * 40)
        stream = await _small_buffer_stream(h.server.port)
        slow = await RawWebSocket.connect(h.server.port, logs_path(job["id"], h.admin),
                                          stream=stream)
        try:
            # Live first: a subscriber still catching up from the store when the
            # flood starts is paced by its socket there and never lags.
            with trio.fail_after(10):
                while (await scrape(h)).get("jobserver_stream_live") < 1:
                    await trio.sleep(0.02)
            go.touch()  # the flood, while the client reads nothing
            await h.wait(job["id"], "SUCCEEDED")
            with trio.fail_after(10):
                while (got := await scrape(h)).get(LAGGED) == before:
                    await trio.sleep(0.02)
            assert got.get(LAGGED) - before == 1  # demoted once, counted once
            # Reading again: the rest comes from the store, every line once, in
            # order, up to the end (a replay that stalls here fails the deadline).
            with trio.fail_after(30):
                messages = [json.loads(m) async for m in slow.messages()]
        finally:
            await slow.aclose()
        assert slow.close_code == 1000
        lines = [m["payload"]["message"] for m in messages if m["type"] == "log"]
        assert lines == [f"line {i} {'z' * 40}" for i in range(count)]
        assert messages[-1]["payload"]["status"] == "SUCCEEDED"
        assert (await scrape(h)).get(LAGGED) - before == 1


async def _read_until_closed(stream: trio.SocketStream, timeout: float) -> bytes:
    got = b""
    with trio.fail_after(timeout):
        while data := await stream.receive_some(65536):
            got += data
    await stream.aclose()
    return got


async def test_refusals_before_routing_are_counted_by_reason(data_dir: Path) -> None:
    async with running_server(data_dir, max_connections=3, handshake_timeout=0.5) as h:
        await h.client.aclose()  # its keep-alive connection would take a slot
        port = h.server.port

        async def refused() -> dict[str, float]:
            # A fresh connection each time, closed after: no slot held between.
            async with httpx.AsyncClient(base_url=h.server.url) as client:
                r = await client.get("/metrics")
            return {dict(labels)["reason"]: v for (name, labels), v
                    in Scrape(r.text).samples.items() if name == REFUSED}

        start = await refused()
        assert set(start) >= {"over_capacity", "slow_head", "bad_head", "upgrade_required"}

        # A slow head: half a request line, then nothing; closed at the timeout.
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        assert await _read_until_closed(slow, 5) == b""
        # A head h11 refuses: 400.
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(b"NOT A REQUEST\r\n\r\n")
        assert (await _read_until_closed(bad, 5)).startswith(b"HTTP/1.1 400")
        # A plain GET on a WebSocket path: 426.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(f"GET {logs_path('0' * 32, h.admin)} HTTP/1.1\r\n"
                             "Host: x\r\n\r\n".encode())
        assert (await _read_until_closed(plain, 5)).startswith(b"HTTP/1.1 426")
        got = await refused()
        assert got["slow_head"] - start["slow_head"] == 1
        assert got["bad_head"] - start["bad_head"] == 1
        assert got["upgrade_required"] - start["upgrade_required"] == 1
        assert got["over_capacity"] == start["over_capacity"]

        # Over capacity: three idle connections hold every slot; a fourth is
        # answered 503 at once (the three are closed at the head timeout).
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.sleep(0.05)  # each accepted before the next (the count is at accept)
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await _read_until_closed(extra, 5)).startswith(b"HTTP/1.1 503")
        for stream in idle:
            assert await _read_until_closed(stream, 5) == b""
        end = await refused()
        assert end["over_capacity"] - got["over_capacity"] == 1
        assert end["slow_head"] - got["slow_head"] == 3

