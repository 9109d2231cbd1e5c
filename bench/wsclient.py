"""Load client worker: holds thousands of WebSocket subscribers in one process.

Run as `python -m bench.wsclient`; bench/loadgen.py drives it with one JSON
command per stdin line and reads one JSON reply per stdout line:

    {"op": "connect", "url": ..., "n": ..., "timeout": s, "send": text,
     "ready_frames": k}                                  -> {"ready": k, ...}
    {"op": "go", "expect": K, "latency": bool, "timeout": s, "idle": s, "batch": s,
     "marker": text, "count_all": bool}
                                                          -> {"going": true}
                                                          -> {"total": ..., ...}
    {"op": "close"} -> {"closed": k}            {"op": "exit"} -> (exits)

Rules: raw non-blocking sockets on one epoll, a minimal RFC 6455 client
handshake and frame parser; no permessage-deflate; unfragmented server frames
(each benchmark event is one small frame). A subscriber is ready once it has
received its first message (the logs dialect's `system` message), so the
server has registered it; with `send`, each subscriber sends those text frames
(a list) right after the handshake and is ready after `ready_frames` messages
(a dialect that subscribes in band). Only messages containing the marker (by default
bench/events.py's) are counted; latency needs bench/events.py's marker.
With `count_all`, every occurrence of the marker is counted (events inside the
live dialect's batches), and `frames` reports the data frames received.
Sockets close with SO_LINGER 0 so thousands of rounds leave no TIME_WAIT.
Nothing but reply lines is written to stdout.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from .events import MARKER, MAX_PREFIX

RECV_BYTES = 262_144
# Handshakes in progress at once per worker: two workers stay under hypercorn's
# default listen backlog (100), so no SYN is dropped and retried after 1 s.
IN_FLIGHT = 32
# Batched reading sleeps only while reads bring less than this per recv(), so
# it never lets a fast server's socket buffers fill up and block it.
BATCH_BYTES = 8192
# Bound on latency samples kept per worker (one int each).
MAX_SAMPLES = 2_000_000
REQUEST = (
    "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: YmVuY2htYXJrLWNsaWVudA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
# Linux (asm-generic) SO_TIMESTAMPNS; the cmsg carries a struct timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)
_MARK = MARKER.encode()
_LINGER_RST = struct.pack("ii", 1, 0)


class Sub:
    __slots__ = ("count", "done", "frames", "rest", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.rest = b""
        self.frames = 0
        self.count = 0
        self.done = False


class Worker:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.subs: dict[int, Sub] = {}
        self.errors: dict[str, int] = {}
        self.latencies: list[int] | None = None
        self.mark = _MARK
        self.count_all = False
        self.hello = b""  # frames each subscriber sends once open
        self.ready_frames = 1

    # -- connecting ---------------------------------------------------------

    def connect(self, url: str, n: int, timeout: float, send: list[str] | None = None,
                ready_frames: int = 1) -> dict[str, Any]:
        self.hello = b"".join(client_frame(1, text.encode()) for text in send or ())
        self.ready_frames = want = ready_frames
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = REQUEST.format(target=target, host=f"{host}:{port}").encode()
        started = time.monotonic()
        deadline = started + timeout
        begun = in_flight = 0
        while time.monotonic() < deadline:
            while in_flight < IN_FLIGHT and begun < n:
                begun += 1
                in_flight += self._open(host, port)
            if in_flight == 0 and begun >= n:
                break
            for fd, _ in self.epoll.poll(0.05):
                sub = self.subs[fd]
                was_waiting = sub.state != CLOSED and sub.frames < want
                self._advance(sub, request)
                if was_waiting and (sub.frames >= want or sub.state == CLOSED):
                    in_flight -= 1
        ready = sum(1 for s in self.subs.values() if s.state == OPEN and s.frames >= want)
        if ready < n:
            self._count_error(f"not ready within {timeout:.0f} s", n - ready - sum(
                1 for s in self.subs.values() if s.state == CLOSED))
        return {"ready": ready, "errors": self.errors, "seconds": time.monotonic() - started}

    def _open(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            self._count_error(f"connect: {errno.errorcode.get(code, code)}")
            sock.close()
            return 0
        self.subs[sock.fileno()] = Sub(sock)
        self.epoll.register(sock.fileno(), select.EPOLLOUT)
        return 1

    def _advance(self, sub: Sub, request: bytes) -> None:
        if sub.state == CONNECTING:
            code = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(sub, f"connect: {errno.errorcode.get(code, code)}")
                return
            sub.sock.send(request)
            sub.state = HANDSHAKE
            self.epoll.modify(sub.sock.fileno(), select.EPOLLIN)
            return
        data = self._recv(sub)
        if data is None:
            return
        if sub.state == OPEN:
            self.feed(sub, data, time.time_ns())
            return
        sub.rest += data
        head_end = sub.rest.find(b"\r\n\r\n")
        if head_end < 0:
            return
        status = sub.rest.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ")[1:2] != ["101"]:
            self._fail(sub, f"handshake: {status}")
            return
        rest, sub.rest = sub.rest[head_end + 4:], b""
        sub.state = OPEN
        if self.hello:
            sub.sock.send(self.hello)
        if rest:
            self.feed(sub, rest, time.time_ns())

    def _recv(self, sub: Sub) -> bytes | None:
        try:
            data = sub.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._fail(sub, f"recv: {errno.errorcode.get(exc.errno or 0, exc)}")
            return None
        if not data:
            self._fail(sub, "closed by server" if sub.state == OPEN else "closed in handshake")
            return None
        return data

    def _recv_stamped(self, sub: Sub, now_ns: int) -> tuple[bytes | None, int]:
        """Like _recv, with the kernel's arrival time of the data (or `now_ns`)."""
        try:
            data, ancillary, _, _ = sub.sock.recvmsg(RECV_BYTES, _CMSG_SPACE)
        except BlockingIOError:
            return None, now_ns
        except OSError as exc:
            self._fail(sub, f"recv: {errno.errorcode.get(exc.errno or 0, exc)}")
            return None, now_ns
        if not data:
            self._fail(sub, "closed by server")
            return None, now_ns
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                secs, nanos = _TIMESPEC.unpack(raw[:_TIMESPEC.size])
                return data, secs * 1_000_000_000 + nanos
        return data, now_ns

    def _fail(self, sub: Sub, reason: str) -> None:
        self._count_error(reason)
        self._drop(sub)

    def _drop(self, sub: Sub) -> None:
        if sub.state != CLOSED:
            sub.state = CLOSED
            self.epoll.unregister(sub.sock.fileno())
            sub.sock.close()

    def _count_error(self, reason: str, times: int = 1) -> None:
        if times > 0:
            self.errors[reason] = self.errors.get(reason, 0) + times

    # -- frames -------------------------------------------------------------

    def feed(self, sub: Sub, data: bytes, now_ns: int) -> int:
        """Parse whole frames from `data`; return how many marked messages came."""
        buf = sub.rest + data if sub.rest else data
        size, i, got = len(buf), 0, 0
        samples = self.latencies
        while size - i >= 2:
            length = buf[i + 1] & 0x7F
            if length < 126:
                start = i + 2
            elif length == 126:
                if size - i < 4:
                    break
                length, start = (buf[i + 2] << 8) | buf[i + 3], i + 4
            else:
                if size - i < 10:
                    break
                length, start = int.from_bytes(buf[i + 2:i + 10], "big"), i + 10
            end = start + length
            if end > size:
                break
            opcode = buf[i] & 0x0F
            if opcode <= 2:
                sub.frames += 1
                if self.count_all:
                    got += buf.count(self.mark, start, end)
                    i = end
                    continue
                at = buf.find(self.mark, start, end)
                if at >= 0:
                    got += 1
                    if samples is not None:
                        stamp = buf[at + len(self.mark):at + MAX_PREFIX].split(b" ", 2)[1]
                        samples.append(now_ns - int(stamp))
            elif opcode == 9:
                self._send_control(sub, 0xA, buf[start:end])
            elif opcode == 8:
                self._send_control(sub, 0x8, buf[start:start + 2])
                code = int.from_bytes(buf[start:start + 2], "big") if length >= 2 else None
                self._count_error(f"closed by server with {code}")
                sub.rest = b""
                sub.count += got
                self._drop(sub)
                return got
            i = end
        sub.rest = buf[i:] if i < size else b""
        sub.count += got
        return got

    def _send_control(self, sub: Sub, opcode: int, payload: bytes) -> None:
        try:
            sub.sock.send(client_frame(opcode, payload))
        except OSError:
            pass

    # -- measuring ----------------------------------------------------------

    def measure(self, expect: int, latency: bool, timeout: float, idle: float,
                batch: float) -> dict[str, Any]:
        """Count marked messages until each subscriber has `expect` or time is up.

        With `latency`, each marked message's latency is taken against the
        kernel's arrival time of the data (SO_TIMESTAMPNS), so the worker's own
        processing delay, an artefact of sharing the machine, is not counted.
        With `batch` > 0 the worker sleeps that long between epoll passes
        while its reads bring less than BATCH_BYTES each, so each recv() takes
        many frames: the client then costs the machine far less CPU than the
        server it measures, and still never lets a socket's receive queue grow
        into memory pressure (each 150-byte message costs the kernel ~1 KiB).
        Only the first 90% of messages are read so; the last, which time the
        round, are read as they come.
        """
        self.latencies = [] if latency else None
        live = [s for s in self.subs.values() if s.state == OPEN]
        frames_before = sum(s.frames for s in live)
        for sub in live:
            sub.count, sub.done = 0, expect <= 0
            if latency:
                sub.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        remaining = sum(1 for s in live if not s.done)
        # Batch only the first 90%: the last messages are read as they come.
        batch_until = 0.9 * expect * len(live) if batch > 0 else 0.0
        total, first_ns, last_ns = 0, 0, 0
        began = time.monotonic()
        deadline, idle_since = began + timeout, began
        while remaining > 0:
            now = time.monotonic()
            if now >= deadline or now - idle_since >= idle:
                break
            events = self.epoll.poll(min(0.05, deadline - now))
            now_ns = time.time_ns()
            pass_bytes = 0
            for fd, _ in events:
                sub = self.subs[fd]
                if latency:
                    data, at_ns = self._recv_stamped(sub, now_ns)
                else:
                    data, at_ns = self._recv(sub), now_ns
                if data is not None:
                    pass_bytes += len(data)
                    got = self.feed(sub, data, at_ns)
                    if got:
                        total += got
                        last_ns = now_ns
                        first_ns = first_ns or now_ns
                        idle_since = time.monotonic()
                if not sub.done and (sub.count >= expect or sub.state == CLOSED):
                    sub.done = True
                    remaining -= 1
            if self.latencies is not None and len(self.latencies) > MAX_SAMPLES:
                del self.latencies[MAX_SAMPLES:]
            if total < batch_until and pass_bytes < BATCH_BYTES * len(events):
                time.sleep(batch)
        counts = [s.count for s in live] or [0]
        return {
            "subscribers": len(live),
            "total": total,
            "complete": sum(1 for s in live if s.count >= expect),
            "min_count": min(counts),
            "max_count": max(counts),
            "first_ns": first_ns,
            "last_ns": last_ns,
            "timed_out": remaining > 0,
            "errors": self.errors,
            "latencies_ns": self.latencies or [],
            "frames": sum(s.frames for s in live) - frames_before,
        }

    def close_all(self) -> int:
        closed = 0
        for sub in self.subs.values():
            if sub.state != CLOSED:
                closed += 1
                self._drop(sub)
        self.subs.clear()
        self.errors = {}
        self.latencies = None
        return closed


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented client frame; masked, and an all-zero mask leaves the
    payload as is."""
    if len(payload) < 126:
        head = bytes((0x80 | opcode, 0x80 | len(payload)))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + len(payload).to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    worker = Worker()
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "connect":
            _reply(worker.connect(command["url"], command["n"], command["timeout"],
                                  command.get("send"), command.get("ready_frames", 1)))
        elif op == "go":
            worker.mark = command.get("marker", MARKER).encode()
            worker.count_all = bool(command.get("count_all"))
            _reply({"going": True})
            _reply(worker.measure(command["expect"], command["latency"], command["timeout"],
                                  command["idle"], command["batch"]))
        elif op == "close":
            _reply({"closed": worker.close_all()})
        elif op == "exit":
            break
    worker.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
