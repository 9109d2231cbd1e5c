"""Headless Chromium driven over the DevTools protocol, for the page's tests.

`open_browser` starts Debian's chromium with `--remote-debugging-port=0`,
reads the port it picked from `DevToolsActivePort` in its profile, and talks
to its one page over a WebSocket (trio-websocket): navigate, evaluate, click
and type (real input events, as a user's), wheel-scroll, screenshots, heap
size. Every exception the page throws and every console error (a CSP refusal
is one) is kept in `Page.problems` for the test to assert on. When the block ends the
WebSocket is closed first (cleanly, from our side), then the browser is
stopped with SIGTERM (SIGKILL if it lingers).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

CHROMIUM = os.environ.get("JOBSERVER_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = shutil.which(CHROMIUM) is not None
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-port=0", "--remote-allow-origins=*"]
START_TIMEOUT = 20.0
COMMAND_TIMEOUT = 15.0
WINDOW = (1360, 860)


class PageError(AssertionError):
    pass


class Page:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.problems: list[str] = []

    async def _read(self) -> None:
        async for message in _messages(self.ws):
            reply = json.loads(message)
            if "id" in reply:
                channel = self._waiting.pop(reply["id"], None)
                if channel is not None:
                    channel.send_nowait(reply)
            else:
                self._on_event(reply["method"], reply.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.problems.append(details.get("exception", {}).get("description")
                                 or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.problems.append(" ".join(str(a.get("value", a.get("description", "")))
                                          for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            # A failed request the page expects (a 422, a 204 ending a stream) is not a problem.
            if entry.get("source") != "network":
                self.problems.append(entry.get("text", ""))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[number] = send
        await self.ws.send_message(json.dumps({"id": number, "method": method, "params": params}))
        with trio.fail_after(COMMAND_TIMEOUT):
            reply = await receive.receive()
        if "error" in reply:
            raise PageError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def js(self, expression: str) -> Any:
        """The value of a JS expression (awaited if it is a promise)."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise PageError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 10.0) -> Any:
        """Poll until `expression` is truthy (one that throws counts as false); its value."""
        # A node is "there" (by value it would come back as an empty, falsy dict).
        guarded = (f"(() => {{ try {{ const v = ({expression}); return v instanceof Node ? "
                   f"true : v; }} catch {{ return null; }} }})()")
        with trio.fail_after(timeout):
            while True:
                value = await self.js(guarded)
                if value:
                    return value
                await trio.sleep(0.05)

    async def _center(self, selector: str) -> tuple[float, float]:
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || !e.offsetParent) return null; e.scrollIntoView({block: 'nearest'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()")
        return float(box[0]), float(box[1])

    async def click(self, selector: str) -> None:
        x, y = await self._center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        """Focus the field, select what is in it, and type `text` over it."""
        await self.click(selector)
        await self.js(f"document.querySelector({json.dumps(selector)}).select()")
        await self.send("Input.insertText", text=text)

    async def choose(self, selector: str, value: str) -> None:
        """Pick an option of a <select> (as the keyboard would: focus, set, change)."""
        await self.click(selector)
        await self.js(f"(() => {{ const s = document.querySelector({json.dumps(selector)});"
                      f" s.value = {json.dumps(value)};"
                      " s.dispatchEvent(new Event('change', {bubbles: true})); })()")

    async def wheel(self, selector: str, delta_y: float) -> None:
        x, y = await self._center(selector)
        await self.send("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0,
                        deltaY=delta_y)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png")
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(base64.b64decode(shot["data"]))

    async def metrics(self) -> dict[str, float]:
        """Performance.getMetrics after a garbage collection: JSHeapUsedSize, Nodes ..."""
        await self.send("HeapProfiler.collectGarbage")
        found = await self.send("Performance.getMetrics")
        return {m["name"]: m["value"] for m in found["metrics"]}


async def _messages(ws: WebSocketConnection) -> AsyncIterator[str | bytes]:
    while True:
        try:
            yield await ws.get_message()
        except ConnectionClosed:
            return


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Page]:
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    log = profile.parent / f"{profile.name}.stderr"
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
            stdout=stderr, stderr=stderr, stdin=None)
    try:
        port = await _devtools_port(profile, process, log)
        async with httpx.AsyncClient(timeout=COMMAND_TIMEOUT) as client:
            targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with open_websocket_url(url, max_message_size=64 * 2**20) as ws, \
                trio.open_nursery() as nursery:
            page = Page(ws)
            nursery.start_soon(page._read)
            for domain in ("Runtime", "Page", "Log", "Performance"):
                await page.send(f"{domain}.enable")
            await page.send("Emulation.setDeviceMetricsOverride", width=WINDOW[0],
                            height=WINDOW[1], deviceScaleFactor=1, mobile=False)
            yield page
            nursery.cancel_scope.cancel()
        # The socket is closed by us, cleanly, while the browser still runs.
    finally:
        if process.poll() is None:
            process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def _devtools_port(profile: Path, process: trio.Process, log: Path) -> int:
    active = trio.Path(profile / "DevToolsActivePort")
    with trio.fail_after(START_TIMEOUT):
        while True:
            if process.poll() is not None:
                output = await trio.Path(log).read_text(errors="replace")
                raise PageError(f"chromium exited: {output[-2000:]}")
            text = await active.read_text() if await active.exists() else ""
            if "\n" in text:
                return int(text.split("\n", 1)[0])
            await trio.sleep(0.05)
