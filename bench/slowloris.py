"""Slow clients against jobserver's default limits (issue 9.3's measurement).

`python -m bench.slowloris [N]`: N keep-alive connections (default 1,000)
each make one request, then half trickle a second request head and half a
request body, a byte every `GAP` seconds. Prints when the server closed them
(by `handshake_timeout` and `body_timeout`), what it answered, and its
process-group RSS at start and at its peak. Only 127.0.0.1; it stops by itself.
"""

from __future__ import annotations

import sys
from collections import Counter

import trio

from .jobserver_target import JobserverServer
from .procs import group_rss_bytes

GAP = 2.0  # seconds between two bytes
GIVE_UP = 120.0  # the whole run, at most


async def trickler(port: int, token: str, body: bool, started: float,
                   closed: list[tuple[bool, float, bytes]]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    try:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"queued"' not in first:
            first += await stream.receive_some(4096)
        if body:
            await stream.send_all(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                  b"Bearer " + token.encode() + b"\r\nContent-Length: 500\r\n\r\n")
            slow = b"{" * 500
        else:
            slow = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
        for byte in slow:
            await stream.send_all(bytes([byte]))
            with trio.move_on_after(GAP):
                answer = await stream.receive_some(4096)
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        closed.append((body, trio.current_time() - started, answer[:12]))
        await stream.aclose()


async def run(n: int) -> None:
    server = JobserverServer()
    server.start()
    try:
        port = int(server.url.rsplit(":", 1)[1])
        rss_start = group_rss_bytes(server.pid)
        closed: list[tuple[bool, float, bytes]] = []
        peak = rss_start
        started = trio.current_time()
        with trio.move_on_after(GIVE_UP):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(trickler, port, server.token, bool(i % 2), started,
                                       closed)
                while len(closed) < n:
                    peak = max(peak, group_rss_bytes(server.pid))
                    await trio.sleep(0.5)
        for body in (False, True):
            times = sorted(t for b, t, _ in closed if b is body)
            answers = Counter(a.decode("latin-1") or "(closed)" for b, _, a in closed
                              if b is body)
            if times:
                print(f"{len(times)} trickled {'bodies' if body else 'heads'}: closed after "
                      f"{times[0]:.1f}-{times[-1]:.1f} s, answers {dict(answers)}")
        print(f"still open after {GIVE_UP:.0f} s: {n - len(closed)}; server RSS "
              f"{rss_start / 2**20:.0f} MB at start, {peak / 2**20:.0f} MB at the peak")
    finally:
        server.stop()


def main() -> None:
    trio.run(run, int(sys.argv[1]) if len(sys.argv) > 1 else 1000)


if __name__ == "__main__":
    main()
