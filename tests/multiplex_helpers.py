"""A multiplex-dialect client for the tests: JSON in and out over RawWebSocket."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from .test_dataplane_helpers import RawWebSocket

Msg = dict[str, Any]
ISO_Z = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"


class Mx:
    """One /ws connection; `recv` returns the next message (pings included)."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.closed = False

    @classmethod
    async def connect(cls, port: int, token: str | None, *,
                      stream: trio.SocketStream | None = None) -> Mx:
        target = "/ws" if token is None else f"/ws?token={token}"
        return cls(await RawWebSocket.connect(port, target, stream=stream))

    @classmethod
    async def open(cls, port: int, token: str, **kw: Any) -> Mx:
        """Connected, with `connection_established` read."""
        mx = await cls.connect(port, token, **kw)
        first = await mx.recv()
        assert first["type"] == "connection_established", first
        return mx

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, type_: str, data: Any = None) -> None:
        await self.ws.send_text(json.dumps({"type": type_, "data": data if data is not None
                                            else {}}))

    async def recv(self, timeout: float = 10.0) -> Msg:
        with trio.fail_after(timeout):
            # Run the generator to its end: it keeps what it read past the message.
            texts = [t async for t in self.ws.messages(limit=1)]
        if texts:
            message: Msg = json.loads(texts[0])
            return message
        self.closed = True
        raise EOFError(f"closed with {self.ws.close_code} {self.ws.close_reason}")

    async def until(self, done: Callable[[Msg], bool], timeout: float = 10.0) -> list[Msg]:
        """Messages up to and including the first that is `done`."""
        out = []
        with trio.fail_after(timeout):
            while True:
                message = await self.recv(timeout)
                out.append(message)
                if done(message):
                    return out

    async def sync(self) -> list[Msg]:
        """What came before the answer to a request sent now (the server answers in
        order: a subscription made before this is in effect when it returns)."""
        await self.ws.send_text("sync")
        out = await self.until(lambda m: m["type"] == "error"
                               and m["data"]["message"] == "Invalid request format: not JSON")
        return out[:-1]

    async def rest(self, timeout: float = 10.0) -> list[Msg]:
        """Every message until the server closes."""
        with trio.fail_after(timeout):
            out = [json.loads(t) async for t in self.ws.messages()]
        self.closed = True
        return out

    async def aclose(self) -> None:
        if not self.closed and self.ws.close_code is None:
            await self.ws.close()
        await self.ws.aclose()


def of_type(messages: list[Msg], *types: str) -> list[Msg]:
    return [m for m in messages if m["type"] in types]


def task_messages(messages: list[Msg], task_id: str) -> list[Msg]:
    return [m for m in messages if m["type"].startswith("task_")
            and m["data"].get("task_id") == task_id]
