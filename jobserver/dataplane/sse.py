"""The raw Server-Sent Events transport.

Rules: `200 text/event-stream`, the body runs until the connection closes
(no chunked framing, so one encoded chunk is valid for every subscriber);
`id:` is the event's seq and `Last-Event-ID` resumes (the session reads it);
a comment line every `config.sse_heartbeat` seconds while nothing is queued
(sent by the reader task). A refused request is a complete HTTP response.
Whatever the client sends after its request is read and dropped; its end of
stream ends ours.
"""

from __future__ import annotations

import socket

import trio

from ..dialects import Close, Refuse
from .http import Head, parse_target, peer_host, stream_request
from .outbox import recv_some
from .plane import DataPlane
from .routes import Match
from .stream import SocketConnection, answer
from .wire import SSE_HEADERS, SSE_HEARTBEAT, stream_head


async def open_sse(plane: DataPlane, sock: socket.socket, head: Head,
                   match: Match) -> SseConnection | None:
    """The accepted stream, ready to run; None when the request was answered otherwise."""
    stall = plane.stall_timeout
    target = parse_target(head.target)
    if target is None:
        await answer(sock, 400, b"Bad request target.\n", stall_timeout=stall)
        return None
    request = stream_request(head.method, target[0], target[1], head.headers(), match.params,
                             peer=peer_host(sock))
    opened = None
    with trio.move_on_after(plane.config.handshake_timeout):
        opened = await plane.open_session(match.route, request)
    if opened is None:
        await answer(sock, 503, b"Try again.\n", stall_timeout=stall)
        return None
    session, opening, actions = opened
    if isinstance(opening, Refuse):
        await answer(sock, opening.status, opening.body, content_type=opening.content_type,
                     headers=opening.headers, stall_timeout=stall)
        return None
    preamble = stream_head(200, [*SSE_HEADERS, *opening.headers])
    return SseConnection(plane, sock, session, preamble=preamble, actions=actions,
                         trailing=head.trailing)


class SseConnection(SocketConnection):
    __slots__ = ()
    encoding = "sse"

    def close(self, close: Close) -> None:
        if not self.closing:
            self.closing = True
            self.detach_all()
            self.outbox.write_nowait(b"", seal=True)
            self.wake()

    async def read_loop(self, trailing: bytes, abort: trio.CancelScope) -> None:
        # The heartbeat is the reader's, like a WebSocket's ping: the writer may
        # wait in a member's catch-up for as long as the job publishes nothing.
        interval = self.plane.config.sse_heartbeat
        next_beat = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_beat):
                if not await recv_some(self.sock):
                    break
                continue
            next_beat = trio.current_time() + interval
            if self.outbox.idle and not self.closing:
                self.outbox.write_nowait(SSE_HEARTBEAT)
        abort.cancel()
