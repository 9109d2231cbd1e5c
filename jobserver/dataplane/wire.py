"""Bytes on the wire: WebSocket data frames, SSE chunks, small HTTP responses.

Rules: server frames are unmasked and carry no extension bits, so one encoded
frame is valid for every subscriber; nothing here keeps state. An encoding
turns a dialect's messages into the bytes one write sends.
"""

from __future__ import annotations

import http
import struct
from collections.abc import Callable, Sequence

from ..dialects import Message, SseEvent

Encoder = Callable[[Sequence[Message]], bytes]

_FIN_TEXT = 0x81
# Encoding runs in the publisher, where an exception would stop the server: an
# unpaired surrogate (which no text on the wire may carry) becomes "?".
_UNPAIRED = "replace"


def ws_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 §5.2)."""
    return ws_text_head(len(payload)) + payload


def ws_text_head(n: int) -> bytes:
    """The header of a text frame of `n` payload bytes."""
    if n < 126:
        return bytes((_FIN_TEXT, n))
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n)
    return struct.pack("!BBQ", _FIN_TEXT, 127, n)


def encode_ws(messages: Sequence[Message]) -> bytes:
    parts = []
    for m in messages:
        if not isinstance(m, str):
            raise TypeError("a WebSocket dialect sends text messages")
        parts.append(ws_text_frame(m.encode("utf-8", _UNPAIRED)))
    return b"".join(parts)


def sse_text(event: SseEvent) -> str:
    lines = []
    if event.id is not None:
        lines.append(f"id: {event.id}")
    if event.event is not None:
        lines.append(f"event: {event.event}")
    lines.extend(f"data: {line}" for line in event.data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


def encode_sse(messages: Sequence[Message]) -> bytes:
    parts = []
    for m in messages:
        if not isinstance(m, SseEvent):
            raise TypeError("an SSE dialect sends SseEvent messages")
        parts.append(sse_text(m))
    return "".join(parts).encode("utf-8", _UNPAIRED)


def encode_asgi_ws(messages: Sequence[Message]) -> bytes:
    """WebSocket text messages for the ASGI fallback, each UTF-8 and NUL-terminated
    (compact JSON never contains a NUL), split again there into `websocket.send`s."""
    return _texts_ending(messages, b"\0")


def encode_items(messages: Sequence[Message]) -> bytes:
    """Items of a batch (dialects.Batch), not yet a message: each UTF-8, then a comma."""
    return _texts_ending(messages, b",")


def _texts_ending(messages: Sequence[Message], end: bytes) -> bytes:
    parts = []
    for m in messages:
        if not isinstance(m, str):
            raise TypeError("a WebSocket dialect sends text messages")
        parts.append(m.encode("utf-8", _UNPAIRED) + end)
    return b"".join(parts)


def encode_nothing(messages: Sequence[Message]) -> bytes:
    """A raw channel's (fanout.EVENTS): its events go to sessions, never to the wire."""
    if messages:
        raise TypeError("a raw channel encodes nothing")
    return b""


ITEMS = "items"
ENCODERS: dict[str, Encoder] = {"ws": encode_ws, "sse": encode_sse, "asgi-ws": encode_asgi_ws,
                                ITEMS: encode_items, "events": encode_nothing}


# What goes around a message of `n` UTF-8 bytes built in pieces (a batch), per
# encoding: the same bytes the encoder above would write around it.
Framing = Callable[[int], tuple[bytes, bytes]]


def _ws_around(n: int) -> tuple[bytes, bytes]:
    return ws_text_head(n), b""


def _asgi_ws_around(n: int) -> tuple[bytes, bytes]:
    return b"", b"\0"


def _sse_around(n: int) -> tuple[bytes, bytes]:
    return b"data: ", b"\n\n"  # compact JSON has no newline: one data line


FRAMING: dict[str, Framing] = {"ws": _ws_around, "asgi-ws": _asgi_ws_around, "sse": _sse_around}

SSE_HEARTBEAT = b": keep-alive\n\n"
SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)


def http_response(status: int, body: bytes = b"", *, content_type: str = "text/plain; "
                  "charset=utf-8", headers: Sequence[tuple[str, str]] = (),
                  close: bool = True) -> bytes:
    """A complete HTTP/1.1 response; its body is `body` (with a Content-Length)."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    if status != 204 and status >= 200:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def stream_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """The head of a response whose body runs until the connection closes."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
