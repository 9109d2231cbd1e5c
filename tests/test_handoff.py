"""hypercorn's HTTP/1.1 protocol as the front door runs it (dataplane/handoff.py):
real h11 and hypercorn objects, the bytes each write would put on the socket."""

from __future__ import annotations

import h11
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from jobserver.dataplane.handoff import COALESCE_BYTES, BoundedH11Protocol

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def _protocol() -> tuple[BoundedH11Protocol, list[bytes]]:
    """A protocol whose connection has read one request; the writes it makes."""
    writes: list[bytes] = []

    async def send(event: Event) -> None:
        if isinstance(event, RawData) and event.data:
            writes.append(bytes(event.data))

    protocol = BoundedH11Protocol(None, Config(), WorkerContext(None), None,  # type: ignore[arg-type]
                                  ConnectionState({}), False, None, None, send)
    connection = protocol.connection
    assert isinstance(connection, h11.Connection)
    connection.receive_data(REQUEST)
    assert isinstance(connection.next_event(), h11.Request)
    return protocol, writes


def _parsed(data: bytes) -> tuple[int, bytes]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/healthz", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return response.status_code, body


async def test_a_response_of_known_length_goes_in_one_write() -> None:
    protocol, writes = await _protocol()
    await protocol.stream_send(Response(stream_id=1, status_code=200,
                                        headers=[(b"content-length", b"11")]))
    assert writes == []  # the head waits for the body
    await protocol.stream_send(Body(stream_id=1, data=b'{"ok":true}'))
    await protocol.stream_send(EndBody(stream_id=1))
    assert len(writes) == 1
    assert _parsed(writes[0]) == (200, b'{"ok":true}')


async def test_a_large_body_and_a_streamed_response_are_not_held() -> None:
    protocol, writes = await _protocol()
    large = b"x" * (COALESCE_BYTES + 1)
    await protocol.stream_send(Response(stream_id=1, status_code=200,
                                        headers=[(b"content-length", str(len(large)).encode())]))
    await protocol.stream_send(Body(stream_id=1, data=large))
    await protocol.stream_send(EndBody(stream_id=1))
    assert [len(w) for w in writes][1:] == [len(large)]  # the head alone, then the body
    assert _parsed(b"".join(writes)) == (200, large)

    protocol, writes = await _protocol()
    await protocol.stream_send(Response(stream_id=1, status_code=200,
                                        headers=[(b"content-type", b"text/event-stream")]))
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200")  # at once: no length


async def test_a_held_head_is_sent_when_the_app_ends_without_a_body() -> None:
    protocol, writes = await _protocol()
    await protocol.stream_send(Response(stream_id=1, status_code=204,
                                        headers=[(b"content-length", b"0")]))
    await protocol.stream_send(StreamClosed(stream_id=1))
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 204")
