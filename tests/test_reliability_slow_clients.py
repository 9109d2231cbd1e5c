"""Slow and greedy clients at the front door: every request head and body is
timed, an idle keep-alive connection is closed, connections are capped, and
an answer after which the server closes says `Connection: close`.

The limits are small and configured, so each test waits well under a few
seconds of real time. Figures (RSS for 2,000 idle connections) are printed.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import Harness
from .test_dataplane_helpers import rss_bytes, running_server
from .test_frontdoor import Client, bearer, exchange, healthy, holdings, request, settled

pytestmark = pytest.mark.reliability

HEAD_SECONDS = 0.5
BODY_SECONDS = 0.6
IDLE_SECONDS = 1.0
TRICKLE_GAP = 0.1  # seconds between two bytes of a slow client


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, handshake_timeout=HEAD_SECONDS,
                              body_timeout=BODY_SECONDS,
                              keep_alive_timeout=IDLE_SECONDS) as harness:
        yield harness


@pytest.fixture
def frontdoor_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="jobserver.frontdoor")
    return caplog


async def trickle(client: Client, data: bytes, *, limit: float) -> tuple[float, bytes]:
    """Send `data` a byte per TRICKLE_GAP until the server answers or closes;
    (seconds it took, what the server sent)."""
    start = trio.current_time()
    got = b""
    with trio.move_on_after(limit):
        try:
            for byte in data:
                await client.send(bytes([byte]))
                with trio.move_on_after(TRICKLE_GAP):
                    got = await client.receive()
                    if client.eof or got:
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    if got and not client.eof:
        client.buffer = got
        got = await client.wait_closed(timeout=5)
    return trio.current_time() - start, got


def slow_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "took longer than" in r.getMessage()]


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/jobs/x/stream", "/api/v1/ws/jobs/x/logs"])
async def test_a_first_head_trickled_is_closed(
        h: Harness, frontdoor_log: pytest.LogCaptureFixture, path: str) -> None:
    """The front door reads a connection's first head itself: past the limit it
    closes (it cannot tell yet whom it would answer), and says so in the log."""
    before = holdings()
    client = await Client.open(h.server.port)
    try:
        elapsed, got = await trickle(client, request("GET", f"{path}?token={h.alice}"),
                                     limit=5)
    finally:
        await client.aclose()
    assert got == b"" and client.eof
    assert HEAD_SECONDS * 0.9 <= elapsed < HEAD_SECONDS + 3.0, elapsed
    assert [r.getMessage() for r in frontdoor_log.records] == [
        f"closed a connection from 127.0.0.1: no whole request head within {HEAD_SECONDS:g} s"]
    await settled(before)


async def test_a_later_head_trickled_gets_408_and_a_close(
        h: Harness, frontdoor_log: pytest.LogCaptureFixture) -> None:
    before = holdings()
    client = await Client.open(h.server.port)
    try:
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
        second = request("GET", f"/api/v1/jobs?token={h.alice}", headers=[bearer(h.alice)])
        elapsed, got = await trickle(client, second, limit=5)
    finally:
        await client.aclose()
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"\r\nConnection: close\r\n" in got
    assert HEAD_SECONDS * 0.9 <= elapsed < HEAD_SECONDS + 3.0, elapsed
    lines = slow_lines(frontdoor_log)
    assert lines == [f"closed a connection from 127.0.0.1: a request head took longer "
                     f"than {HEAD_SECONDS:g} s"], lines
    assert not any(h.alice in r.getMessage() for r in frontdoor_log.records)
    await settled(before)
    await healthy(h)


@pytest.mark.parametrize("reused", [False, True], ids=["first-request", "later-request"])
async def test_a_body_trickled_gets_408_and_a_close(
        h: Harness, frontdoor_log: pytest.LogCaptureFixture, reused: bool) -> None:
    before = holdings()
    client = await Client.open(h.server.port)
    try:
        if reused:
            await client.send(request("GET", "/healthz"))
            assert (await client.response()).status == 200
        body = b'{"template": "echo", "params": {"message": "' + b"x" * 200 + b'"}}'
        head = request("POST", "/api/v1/jobs", body=body, headers=[
            bearer(h.alice), ("Content-Type", "application/json")])[:-len(body)]
        await client.send(head)
        elapsed, got = await trickle(client, body, limit=5)
    finally:
        await client.aclose()
    assert got.startswith(b"HTTP/1.1 408 ") and b"\r\nConnection: close\r\n" in got, got
    assert BODY_SECONDS * 0.9 <= elapsed < BODY_SECONDS + 3.0, elapsed
    assert slow_lines(frontdoor_log) == [
        f"closed a connection from 127.0.0.1: a request body took longer than "
        f"{BODY_SECONDS:g} s"]
    await settled(before)
    r = await h.client.get("/api/v1/jobs", headers=h.auth(h.alice))
    assert r.status_code == 200 and r.json()["jobs"] == []  # the slow body made no job


async def test_an_idle_keep_alive_connection_is_closed(h: Harness) -> None:
    client = await Client.open(h.server.port)
    try:
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
        start = trio.current_time()
        assert await client.wait_closed(timeout=5) == b""
        elapsed = trio.current_time() - start
    finally:
        await client.aclose()
    assert IDLE_SECONDS * 0.9 <= elapsed < IDLE_SECONDS + 3.0, elapsed


async def test_a_slow_but_steady_client_is_served(h: Harness) -> None:
    """Within the limits nothing changes: a head and a body in a few pieces, then
    a second request on the same connection."""
    client = await Client.open(h.server.port)
    try:
        data = request("GET", "/api/v1/jobs", headers=[bearer(h.alice)])
        for start in range(0, len(data), len(data) // 3 + 1):
            await client.send(data[start:start + len(data) // 3 + 1])
            await trio.sleep(0.05)
        assert (await client.response()).status == 200
        await client.send(request("GET", "/healthz"))
        assert (await client.response()).status == 200
    finally:
        await client.aclose()


async def _open_from(host: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((host, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _fate(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """What the server sends a silent connection before closing it."""
    out = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


async def test_connections_are_capped_in_total_and_per_client(
        data_dir: Path, frontdoor_log: pytest.LogCaptureFixture) -> None:
    async with running_server(data_dir, max_connections=5, max_connections_per_client=3,
                              handshake_timeout=3.0) as h:
        port = h.server.port
        # The server's own health check of its API comes from 127.0.0.1 too: let
        # the first one (at start) be over before counting (the next is 30 s away).
        with trio.fail_after(10):
            while "api" not in h.server.engine.health:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        held = [await _open_from("127.0.0.1", port) for _ in range(3)]
        try:
            await trio.sleep(0.1)
            # A fourth from the same address: 503, closed.
            extra = await _open_from("127.0.0.1", port)
            async with extra:
                got = await _fate(extra)
            assert got.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in got, got
            # Another address may still come, up to the total.
            held += [await _open_from("127.0.0.2", port) for _ in range(2)]
            await trio.sleep(0.1)
            extra = await _open_from("127.0.0.2", port)
            async with extra:
                assert (await _fate(extra)).startswith(b"HTTP/1.1 503 ")
        finally:
            for stream in held:
                await stream.aclose()
        # Freed: served again.
        with trio.fail_after(5):
            while True:
                r = await exchange(port, request("GET", "/healthz"))
                if r.status == 200:
                    break
                await trio.sleep(0.05)
    refusals = [r.getMessage() for r in frontdoor_log.records if "refused" in r.getMessage()]
    # Logged once, not once per refusal (the second came within LOG_EVERY_SECONDS).
    assert refusals == ["refused a connection from 127.0.0.1: 3 open from there"]


IDLE_CONNECTIONS = int(os.environ.get("JOBSERVER_TEST_IDLE_CONNECTIONS", "2000"))


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def test_2000_idle_connections_are_bounded_and_closed(data_dir: Path) -> None:
    """Half send nothing, half make one request and then idle on keep-alive;
    over `max_connections` they are refused, and the server closes all the rest
    by its timeouts. Server and clients share this process: RSS is both."""
    n = IDLE_CONNECTIONS
    cap = n * 3 // 4
    _raise_fd_limit(2 * n + 200)
    timeout = 3.0
    async with running_server(data_dir, max_connections=cap, max_connections_per_client=n,
                              handshake_timeout=timeout, keep_alive_timeout=timeout) as h:
        port = h.server.port
        rss_before = rss_bytes()
        fates: dict[str, int] = {"closed": 0, "503": 0, "answered": 0}
        opened = 0
        all_open = trio.Event()

        async def one(i: int) -> None:
            nonlocal opened
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                if i % 2:
                    await stream.send_all(request("GET", "/healthz"))
                opened += 1
                if opened == n:
                    all_open.set()
                got = await _fate(stream, timeout=20)
            if got.startswith(b"HTTP/1.1 503 "):
                fates["503"] += 1
            elif got.startswith(b"HTTP/1.1 200 "):
                fates["answered"] += 1
            else:
                assert got == b"", got[:200]
                fates["closed"] += 1

        start = trio.current_time()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
                await all_open.wait()
                opening = trio.current_time() - start
                peak = rss_bytes()
        elapsed = trio.current_time() - start
        rss_after = rss_bytes()
        print(f"\n{n} idle connections (cap {cap}): RSS {rss_before / 2**20:.1f} MB before, "
              f"{peak / 2**20:.1f} MB with them open, {rss_after / 2**20:.1f} MB after; "
              f"opened in {opening:.1f} s, all closed in {elapsed:.1f} s; {fates}")
        assert sum(fates.values()) == n
        if opening < timeout:  # (on a slow machine the first may have timed out already)
            assert fates["503"] >= n - cap
        await healthy(h)


# ---- an answer after which the server closes says so -------------------------


async def test_a_pooled_client_goes_on_after_a_413_and_other_closing_answers(
        data_dir: Path) -> None:
    """One pooled connection: every answer after which the server hangs up says
    `Connection: close`, so the pool opens a new one and the next request works."""
    async with running_server(data_dir, max_body_bytes=64 * 1024) as h:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=h.url, limits=limits, timeout=10) as pool:
            auth = h.auth(h.alice)
            big = b'{"template": "echo", "padding": "' + b"x" * (1024 * 1024) + b'"}'

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(big), 65536):
                    yield big[start:start + 65536]

            closing = {
                "413 (Content-Length)": pool.build_request(
                    "POST", "/api/v1/jobs", content=big, headers=auth),
                "413 (chunked)": pool.build_request(
                    "POST", "/api/v1/jobs", content=chunks(), headers=auth),
                "413 (jobs dialect)": pool.build_request(
                    "POST", "/api/jobs", content=big, headers=auth),
            }
            for name, req in closing.items():
                for _ in range(3):
                    r = await pool.send(req) if name != "413 (chunked)" else await pool.send(
                        pool.build_request("POST", "/api/v1/jobs", content=chunks(),
                                           headers=auth))
                    assert r.status_code == int(name[:3]), (name, r.text)
                    assert r.headers.get("connection") == "close", (name, r.headers)
                    ok = await pool.get("/healthz")
                    assert ok.status_code == 200, name
                    assert ok.headers.get("connection") != "close"
            # A refusal that read the whole body keeps the connection.
            r = await pool.post("/api/v1/jobs", json={"template": 3}, headers=auth)
            assert r.status_code == 422 and r.headers.get("connection") != "close"
            assert (await pool.get("/healthz")).status_code == 200
        # The data plane's own answers (a connection's first request) close, and say so.
        for target in ("/api/v1/ws/jobs/00000000-0000-0000-0000-000000000000/logs",
                       "/api/v1/jobs/00000000-0000-0000-0000-000000000000/stream"):
            async with httpx.AsyncClient(base_url=h.url, limits=limits, timeout=10) as pool:
                r = await pool.get(target, headers=h.auth(h.alice))
                assert r.status_code in (404, 426), (target, r.text)
                assert r.headers.get("connection") == "close", (target, r.headers)
                assert (await pool.get("/healthz")).status_code == 200
