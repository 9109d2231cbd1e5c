"""Following jobs from the command line: `logs -f` across dropped connections and a
server restart (nothing lost, nothing repeated), the live status line on a real
terminal, and `ls --watch`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from jobserver.auth import KeyRing

from .clirun import cli, cli_env, read_all, read_until, start_cli
from .conftest import PY, Harness
from .procserver import server_process

CUT_AFTER_BYTES = 20_000
CUT_CONNECTIONS = 5


class CuttingProxy:
    """A TCP proxy to the server that cuts the first few connections carrying a
    stream request (GET .../stream) after a number of its response bytes: mid-event."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = 0

    async def handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.upstream_port) as up:
            armed = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._requests, client, up, armed, nursery.cancel_scope)
                nursery.start_soon(self._responses, up, client, armed, nursery.cancel_scope)

    async def _requests(self, src: trio.SocketStream, dst: trio.SocketStream,
                        armed: trio.Event, scope: trio.CancelScope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await src.receive_some(65536):
                if b"/stream" in chunk and self.cut < CUT_CONNECTIONS and not armed.is_set():
                    self.cut += 1
                    armed.set()
                await dst.send_all(chunk)
        scope.cancel()  # one side done: close both

    @staticmethod
    async def _responses(src: trio.SocketStream, dst: trio.SocketStream, armed: trio.Event,
                         scope: trio.CancelScope) -> None:
        sent = 0  # since the stream request went by
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while chunk := await src.receive_some(65536):
                if armed.is_set() and sent + len(chunk) >= CUT_AFTER_BYTES:
                    await dst.send_all(chunk[:CUT_AFTER_BYTES - sent])
                    break
                await dst.send_all(chunk)
                sent += len(chunk) if armed.is_set() else 0
        scope.cancel()


async def _log_lines(url: str, token: str, job_id: str) -> list[dict[str, Any]]:
    """Every log event of the job, in seq order, from the events API."""
    out: list[dict[str, Any]] = []
    after: int | None = 0
    async with httpx.AsyncClient(base_url=url) as client:
        while after is not None:
            page = (await client.get(f"/api/v1/jobs/{job_id}/events", params={"after": after},
                                     headers={"Authorization": f"Bearer {token}"})).json()
            out += [e for e in page["events"] if e["type"] == "log"]
            after = page["next_after"]
    return out


async def test_following_across_dropped_connections_loses_and_repeats_nothing(
        harness: Harness, nursery: trio.Nursery, tmp_path: Path) -> None:
    proxy = CuttingProxy(int(harness.url.rsplit(":", 1)[1]))
    listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    env = cli_env(f"http://127.0.0.1:{port}", harness.alice, tmp_path / "home")
    # submit -f reads the whole job from the stream, from seq 0.
    ran = await cli(env, "submit", "chatty", "lines=3000", "-f")
    assert ran.rc == 0, ran.err
    assert ran.lines == [f"line {i}" for i in range(3000)]
    job_id = ran.err.split("submitted ")[1].split()[0]
    assert proxy.cut == CUT_CONNECTIONS
    assert ran.err.count(" to resume after seq") == CUT_CONNECTIONS  # each loss, once
    assert ran.err.count(f"reconnected to http://127.0.0.1:{port}; resuming after seq") == \
        CUT_CONNECTIONS
    # So does logs -f --json (each event with its seq).
    proxy.cut = 0
    ran = await cli(env, "logs", job_id[:8], "-f", "--json")
    assert ran.rc == 0 and proxy.cut == CUT_CONNECTIONS
    events = [json.loads(line) for line in ran.lines]
    assert [e["line"] for e in events] == [f"line {i}" for i in range(3000)]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))


async def test_logs_follow_across_a_server_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = "import time\nfor i in range(30): print(i, flush=True); time.sleep(0.05)"
    out, err = bytearray(), bytearray()
    async with server_process(data_dir, port) as (proc, url):
        token = KeyRing.load_or_create(data_dir).issue("root", "admin")
        env = cli_env(url, token, tmp_path / "home")
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.post("/api/v1/jobs", json={"command": ["python3", "-c", script]},
                                  headers={"Authorization": f"Bearer {token}"})
            job_id = r.json()["id"]
        follower = await start_cli(env, "logs", job_id[:8], "-f")
        assert follower.stdout is not None and follower.stderr is not None
        await read_until(follower.stdout, b"\n4\n", out)
        proc.send_signal(signal.SIGTERM)  # the job goes back to the queue
        with trio.fail_after(15):
            assert await proc.wait() == 0
    try:
        async with server_process(data_dir, port) as (proc, url), trio.open_nursery() as n:
            n.start_soon(read_all, follower.stderr, err)
            with trio.fail_after(30):
                await read_all(follower.stdout, out)
                assert await follower.wait() == 0
            logged = await _log_lines(url, token, job_id)
    finally:
        if follower.returncode is None:
            follower.kill()
        await follower.stdout.aclose()
        await follower.stderr.aclose()
    # Both runs, each line once, in seq order: what the server recorded.
    assert out.decode() == "".join(f"{e['line']}\n" for e in logged)
    lines = out.decode().split()
    assert lines.count("0") == 2 and lines[-30:] == [str(i) for i in range(30)]
    said = err.decode()
    assert said.count("reconnecting") == said.count("reconnected to") >= 1, said
    assert said.index("reconnecting") < said.index("reconnected to")


async def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its exit code and output."""
    master, slave = os.openpty()
    try:
        proc = await trio.lowlevel.open_process(
            [PY, "-m", "jobserver", *args], env=env, stdin=subprocess.DEVNULL,
            stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    screen = bytearray()
    try:
        with trio.fail_after(30):
            while True:
                await trio.lowlevel.wait_readable(master)
                try:
                    chunk = os.read(master, 65536)
                except OSError as exc:  # EIO: the terminal's other side closed
                    if exc.errno != errno.EIO:
                        raise
                    break
                if not chunk:
                    break
                screen += chunk
            code = await proc.wait()
    finally:
        os.close(master)
    return code, screen.decode()


async def test_a_terminal_gets_colour_a_progress_bar_and_a_spinner(harness: Harness,
                                                                   tmp_path: Path) -> None:
    env = cli_env(harness.url, harness.alice, tmp_path / "home", TERM="xterm")
    code, screen = await _on_a_terminal(env, "submit", "control", "-f")
    assert code == 0
    assert "\x1b[2K" in screen and "\x1b[36mRUNNING" in screen  # the status line, in colour
    assert "██████" in screen and "1/4 25%" in screen and "quarter" in screen  # the job's at/of
    assert "done\r\n" in screen and "SUCCEEDED\x1b[0m in " in screen
    code, screen = await _on_a_terminal(env, "submit", "sleep", "seconds=1", "-f")
    assert code == 0
    frames = {c for c in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if f"{c} " in screen}
    assert len(frames) >= 3, screen  # no progress reported: a spinner turns
    # logs -f of a job already running shows where the job says it is.
    script = ("import json, os, time\n"
              "c = os.fdopen(int(os.environ['JOBSERVER_CONTROL_FD']), 'w', buffering=1)\n"
              "c.write(json.dumps(dict(progress=dict(at=2, of=8), message='two')) + '\\n')\n"
              "print('working', flush=True)\ntime.sleep(1)")
    r = await harness.client.post("/api/v1/jobs", json={"command": ["python3", "-c", script]},
                                  headers=harness.auth(harness.admin))
    job = r.json()
    while (await harness.job(job["id"])).get("progress") is None:
        await trio.sleep(0.02)
    admin = cli_env(harness.url, harness.admin, tmp_path / "home", TERM="xterm")
    code, screen = await _on_a_terminal(admin, "logs", job["id"], "-f")
    assert code == 0 and "working\r\n" in screen
    assert "2/8 25%" in screen and "██████ " in screen and "two" in screen
    code, screen = await _on_a_terminal(env, "ls")
    assert "\x1b[32mSUCCEEDED\x1b[0m" in screen and screen.startswith("ID ")


async def test_ls_watch_shows_new_jobs_until_interrupted(harness: Harness,
                                                         tmp_path: Path) -> None:
    env = cli_env(harness.url, harness.alice, tmp_path / "home")
    # A long interval: the new job shows because the server's stream said so.
    watcher = await start_cli(env, "ls", "--watch", "--interval", "60",
                              stderr=subprocess.DEVNULL)
    assert watcher.stdout is not None
    seen = bytearray()
    try:
        await read_until(watcher.stdout, b"\n", seen)  # the first round is on screen
        job = await harness.submit("echo", {"message": "hi"})
        await harness.wait(job["id"])
        await read_until(watcher.stdout, f"{job['id']}\tSUCCEEDED".encode(), seen)
        watcher.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await watcher.wait() == 0
    finally:
        if watcher.returncode is None:
            watcher.kill()
        await watcher.stdout.aclose()


async def test_follow_gives_up_when_the_server_stays_away(harness: Harness,
                                                          tmp_path: Path) -> None:
    proxy = CuttingProxy(int(harness.url.rsplit(":", 1)[1]))
    proxy.cut = CUT_CONNECTIONS  # a plain proxy: it cuts nothing, until it goes away
    job = await harness.submit("sleep", {"seconds": 30})
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0,
                                                host="127.0.0.1"))
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        env = cli_env(url, harness.alice, tmp_path / "home")
        follower = await start_cli(env, "logs", job["id"], "-f", "--reconnect-for", "0.5")
        assert follower.stdout is not None and follower.stderr is not None
        out, err = bytearray(), bytearray()
        try:
            await read_until(follower.stdout, b"sleeping\n", out)
            nursery.cancel_scope.cancel()  # the "server" is gone: connections and port
        except BaseException:
            follower.kill()
            raise
    try:
        with trio.fail_after(20):
            await read_all(follower.stderr, err)
            assert await follower.wait() == 69
    finally:
        await follower.stdout.aclose()
        await follower.stderr.aclose()
    last = err.decode().splitlines()[-1]
    assert last.startswith(f"jobserver: cannot reach the server at {url} ")
    await harness.client.post(f"/api/v1/jobs/{job['id']}/cancel",
                              headers=harness.auth(harness.alice))


async def test_a_reader_that_stops_early_gets_no_traceback(harness: Harness,
                                                           tmp_path: Path) -> None:
    job = await harness.submit("chatty", {"lines": 20000})
    await harness.wait(job["id"])
    env = cli_env(harness.url, harness.alice, tmp_path / "home")
    script = f'"{PY}" -m jobserver logs {job["id"]} | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'
    with trio.fail_after(30):
        done = await trio.run_process(["bash", "-c", script], env=env, capture_stdout=True,
                                      capture_stderr=True)
    assert done.stdout == b"line 0\n"
    assert done.stderr == b"rc=0\n"
