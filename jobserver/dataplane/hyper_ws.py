"""hypercorn's WebSocket stream, telling the app about a client's protocol errors.

hypercorn (pinned: 0.18.0, internal API) answers a malformed frame (invalid
UTF-8, an oversized or fragmented control frame: wsproto reports these as a
close event while the connection is still open) by dropping the connection,
and an oversized message with a bare 1009: the app hears nothing. The raw data
plane instead lets the session say its `error` first, then closes with the
code. `ReportingWSStream` gives the ASGI fallback the same: it sends the app
`{"type": PROTOCOL_ERROR, "code", "reason"}` and keeps the stream open, so
that the app's own messages and its `websocket.close` (with that code) still go
out. Only the data plane's fallback sees WebSocket scopes (every upgrade is a
stream route or its 404), so no other app ever gets this message.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import h11 as hyper_h11
from hypercorn.protocol import ws_stream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping

PROTOCOL_ERROR = "jobserver.websocket.protocol_error"


class ReportingWSStream(ws_stream.WSStream):
    async def _handle_events(self) -> None:
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except ws_stream.FrameTooLargeError:
                    self.buffer.clear()
                    await self._report(1009, "message too big")
                    break
                if event.message_finished and self.app_put is not None:
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if self.connection.state == ConnectionState.OPEN:
                    # Not the peer's close frame: wsproto's report of a bad one.
                    await self._report(event.code, event.reason or "protocol error")
                    break
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(ws_stream.StreamClosed(stream_id=self.stream_id))

    async def _report(self, code: int, reason: str) -> None:
        message: Any = {"type": PROTOCOL_ERROR, "code": code, "reason": reason}
        if self.app_put is not None:
            await self.app_put(message)


# The HTTP/1.1 protocol (the only one the front door hands on) makes its
# WebSocket streams from this name.
hyper_h11.WSStream = ReportingWSStream  # type: ignore[misc]
