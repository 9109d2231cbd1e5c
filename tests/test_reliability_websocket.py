"""Hostile WebSocket frames, on both paths to the logs dialect: a fresh
connection (the raw data plane) and an upgrade on a keep-alive connection
that served a REST call first (hypercorn's, the ASGI fallback). Both must
behave as the raw path does: the dialect's `error` message, then the close
code RFC 6455 gives (1009 too big, 1007 invalid UTF-8, 1002 protocol error),
and never a message held whole past the cap or inflated.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from .conftest import Harness
from .test_dataplane_helpers import (
    RawWebSocket,
    Rejected,
    deflate_offer,
    logs_path,
    masked_frame_header,
    running_server,
)
from .test_frontdoor import _ws_after_rest, holdings, settled

pytestmark = pytest.mark.reliability

CAP = 64 * 1024  # ws_max_message_bytes here
BIG = 2 * 1024 * 1024


@pytest.fixture
async def h(data_dir: Path) -> AsyncIterator[Harness]:
    async with running_server(data_dir, ws_max_message_bytes=CAP) as harness:
        yield harness


@pytest.fixture
async def job_id(h: Harness) -> AsyncIterator[str]:
    job = await h.submit("sleep", {"seconds": 30})
    await h.wait(job["id"], "RUNNING")
    yield str(job["id"])
    await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))


async def connect(h: Harness, job_id: str, path: str) -> RawWebSocket:
    target = logs_path(job_id, h.alice)
    if path == "raw":
        return await RawWebSocket.connect(h.server.port, target)
    return await _ws_after_rest(h, job_id, target)


async def send_big(ws: RawWebSocket, frames: list[bytes], payload_sizes: list[int]) -> None:
    """Frame headers, each followed by that many zero bytes, sent in 64 KiB pieces;
    the server may stop reading and close meanwhile."""
    piece = memoryview(bytes(65536))
    try:
        for header, size in zip(frames, payload_sizes, strict=True):
            await ws.stream.send_all(header)
            for start in range(0, size, len(piece)):
                await ws.stream.send_all(piece[:min(len(piece), size - start)])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def oversized(ws: RawWebSocket) -> None:
    await send_big(ws, [masked_frame_header(1, BIG)], [BIG])


async def oversized_in_fragments(ws: RawWebSocket) -> None:
    count = BIG // 65536
    headers = [masked_frame_header(1 if i == 0 else 0, 65536, fin=i == count - 1)
               for i in range(count)]
    await send_big(ws, headers, [65536] * count)


async def invalid_utf8(ws: RawWebSocket) -> None:
    await ws.stream.send_all(masked_frame_header(1, 4) + b"ok\xff\xfe")


async def invalid_utf8_across_fragments(ws: RawWebSocket) -> None:
    # "é" is c3 a9: the first fragment ends mid-character, the second is no continuation.
    await ws.stream.send_all(masked_frame_header(1, 3, fin=False) + b"ab\xc3"
                             + masked_frame_header(0, 1) + b"(")


async def compressed_rsv1(ws: RawWebSocket) -> None:
    # RSV1 set with no extension negotiated (RFC 6455 §5.2): a deflated "hello".
    payload = bytes.fromhex("f248cdc9c90700")
    header = bytearray(masked_frame_header(1, len(payload)))
    header[0] |= 0x40
    await ws.stream.send_all(bytes(header) + payload)


async def oversized_ping(ws: RawWebSocket) -> None:
    await ws.stream.send_all(masked_frame_header(9, 200) + bytes(200))


async def fragmented_ping(ws: RawWebSocket) -> None:
    await ws.stream.send_all(masked_frame_header(9, 4, fin=False) + b"ping")


async def continuation_first(ws: RawWebSocket) -> None:
    await ws.stream.send_all(masked_frame_header(0, 4) + b"lost")


async def unmasked(ws: RawWebSocket) -> None:
    await ws.stream.send_all(b"\x81\x02hi")


@dataclass(frozen=True)
class Case:
    send: Callable[[RawWebSocket], Awaitable[None]]
    code: int


CASES = {
    "oversized": Case(oversized, 1009),
    "oversized in fragments": Case(oversized_in_fragments, 1009),
    "invalid UTF-8": Case(invalid_utf8, 1007),
    "invalid UTF-8 across fragments": Case(invalid_utf8_across_fragments, 1007),
    "compressed (RSV1)": Case(compressed_rsv1, 1002),
    "oversized ping": Case(oversized_ping, 1002),
    "fragmented ping": Case(fragmented_ping, 1002),
    "continuation first": Case(continuation_first, 1002),
    "unmasked": Case(unmasked, 1002),
}


def _params() -> list[object]:
    out: list[object] = []
    for name, case in CASES.items():
        out.append(pytest.param("raw", case, id=f"raw-{name}"))
        out.append(pytest.param("fallback", case, id=f"fallback-{name}"))
    return out


@pytest.mark.parametrize(("path", "case"), _params())
async def test_a_hostile_frame_gets_an_error_and_its_close_code(
        h: Harness, job_id: str, path: str, case: Case) -> None:
    ws = await connect(h, job_id, path)
    try:
        with trio.fail_after(10):
            first = [json.loads(m) async for m in ws.messages(limit=1)]
        assert [m["type"] for m in first] == ["system"]
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            with trio.fail_after(10):
                await case.send(ws)
                rest = [json.loads(m) async for m in ws.messages()]
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    finally:
        await ws.aclose()
    assert [m["type"] for m in rest] == ["error"], (rest, ws.close_code)
    assert ws.close_code == case.code
    assert peak < 1024 * 1024, f"{peak} bytes allocated while refusing it"


@pytest.mark.parametrize("path", ["raw", "fallback"])
async def test_a_valid_fragmented_message_is_taken_and_ignored(
        h: Harness, job_id: str, path: str) -> None:
    """Fragments under the cap make one message (the logs dialect ignores what a
    client says), with a ping between them answered; the stream goes on."""
    ws = await connect(h, job_id, path)
    try:
        assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
        await ws.stream.send_all(masked_frame_header(1, 3, fin=False) + b'{"a'
                                 + masked_frame_header(9, 2) + b"hi"
                                 + masked_frame_header(0, 5, fin=False) + b'": "\xc3'
                                 + masked_frame_header(0, 3) + b'\xa9"}')
        await ws.close(1000)
        with trio.fail_after(10):
            rest = [m async for m in ws.messages()]
    finally:
        await ws.aclose()
    assert rest == [] and ws.close_code == 1000


@pytest.mark.parametrize("path", ["raw", "fallback"])
async def test_a_permessage_deflate_offer_is_never_taken(
        h: Harness, job_id: str, path: str) -> None:
    """Declined (101 without the extension) or refused (400): never negotiated."""
    target = logs_path(job_id, h.alice)
    before = holdings()
    status = 101
    ws: RawWebSocket | None = None
    try:
        if path == "raw":
            ws = await RawWebSocket.connect(h.server.port, target, extensions=[deflate_offer()])
        else:
            ws = await _ws_after_rest(h, job_id, target, extensions=[deflate_offer()])
    except Rejected as refused:
        status = refused.status
    if ws is not None:
        try:
            assert ws.accepted.extensions == []
            assert [json.loads(m)["type"] async for m in ws.messages(limit=1)] == ["system"]
        finally:
            await ws.aclose()
    assert status in (101, 400)
    await settled(before)
