"""The first request head of a connection, read with h11, and what it asks for.

Rules: the head is capped (`MAX_HEAD_BYTES`, over it: 431); a malformed head
is a 400; the front door gives it the handshake timeout to arrive (else the
connection is closed without a word). Every byte read is kept, so a connection that is
not a stream request can be handed on with the bytes replayed. Query strings
are parsed here and never logged (they carry tokens).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from ..dialects import StreamRequest
from .outbox import recv_some

# The request head's cap: what browsers and proxies send fits in a few KB.
MAX_HEAD_BYTES = 16 * 1024
# Query fields parsed at most (a stream request needs two or three).
MAX_QUERY_FIELDS = 64


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed first request: the h11 event, every byte read, and those after the head."""

    request: h11.Request
    raw: bytes
    trailing: bytes

    @property
    def method(self) -> str:
        return self.request.method.decode("ascii", "replace")

    @property
    def target(self) -> str:
        return self.request.target.decode("ascii", "replace")

    def headers(self) -> dict[str, str]:
        return join_headers(self.request.headers)

    @property
    def wants_websocket(self) -> bool:
        return wants_websocket(self.headers())


@dataclass(frozen=True, slots=True)
class BadHead:
    """The head could not be read: answer `status` (None: just close)."""

    status: int | None


async def read_head(sock: socket.socket, *, max_bytes: int = MAX_HEAD_BYTES) -> Head | BadHead:
    """The first request head (the caller bounds the time it may take)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    raw = bytearray()
    while True:
        data = await recv_some(sock)
        raw += data
        conn.receive_data(data)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return BadHead(exc.error_status_hint if data else None)
        if isinstance(event, h11.Request):
            trailing = bytes(conn.trailing_data[0])
            if len(raw) - len(trailing) > max_bytes:  # it came whole, in one read
                return BadHead(431)
            return Head(event, bytes(raw), trailing)
        if event is not h11.NEED_DATA or not data:
            return BadHead(None)


def join_headers(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased names; repeated headers joined with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def wants_websocket(headers: Mapping[str, str]) -> bool:
    upgrade = headers.get("upgrade", "")
    return any(p.strip().lower() == "websocket" for p in upgrade.split(","))


def parse_target(target: str) -> tuple[str, dict[str, str]] | None:
    """(path, query) of a request target; None when it is not a usable origin-form."""
    if not target.startswith("/"):
        return None
    parts = urlsplit(target)
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True,
                          max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return None
    query: dict[str, str] = {}
    for key, value in pairs:
        query.setdefault(key, value)
    return unquote(parts.path), query


def stream_request(method: str, path: str, query: Mapping[str, str],
                   headers: Mapping[str, str], params: Mapping[str, str], *,
                   peer: str | None = None) -> StreamRequest:
    return StreamRequest(method=method, path=path, query=dict(query), headers=dict(headers),
                         params=dict(params), peer=peer)


def peer_host(sock: socket.socket) -> str | None:
    """The address a connected socket's peer has, or None."""
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a WebSocket handshake's Origin may connect.

    No Origin header (not a browser): yes. Otherwise the origin's host must be
    the request's Host (same host), a loopback name, or the origin must be in
    the configured allowlist (exact `scheme://host[:port]`, or `*`).
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if "*" in allowed or origin in (a.strip().lower().rstrip("/") for a in allowed):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname in LOCAL_HOSTS:
        return True
    return host is not None and parts.netloc == host.strip().lower()
