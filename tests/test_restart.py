"""Restarts: the server as a real process, killed hard or stopped gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import trio

from jobserver.auth import KeyRing

from .conftest import PY, pid_alive
from .procserver import all_events, server_process
from .procserver import get_job as _job
from .procserver import submit as _submit
from .procserver import wait_status as _wait


async def test_first_start_prints_url_and_a_working_admin_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    proc = await trio.lowlevel.open_process(
        [PY, "-m", "jobserver", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while b"admin token" not in buffer or not buffer.endswith(b"\n"):
                buffer += await proc.stdout.receive_some(4096)
        text = buffer.decode()
        url = text.split("listening on ")[1].split()[0]
        token = text.split("admin token (valid 7 days): ")[1].split()[0]
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.get("/api/v1/templates", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["templates"]  # the example templates
        assert (data_dir / "signing.key").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
        await proc.stdout.aclose()


async def test_kill_9_mid_job_then_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    async with server_process(data_dir) as (proc, url):
        token = KeyRing.load_or_create(data_dir).issue("alice", "user")
        lost = await _submit(url, token, "sleep", {"seconds": 60})
        requeued = await _submit(url, token, "sleep_requeue", {"seconds": 0.5})
        child = (await _wait(url, token, lost, "RUNNING"))["pid"]
        await _wait(url, token, requeued, "RUNNING")
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert pid_alive(child)  # the orphan of a kill -9 (its own session) ...
    async with server_process(data_dir) as (proc, url):
        assert not pid_alive(child)  # ... ended by recovery, before the server listens
        job = await _job(url, token, lost)
        assert job["status"] == "FAILED" and job["error_message"] == \
            "server stopped while running"
        assert job["outcome"] == "lost"
        events = await all_events(url, token, lost)
        assert [e["type"] for e in events[-2:]] == ["warning", "finished"]
        assert events[-2]["message"] == \
            f"process group {child} (1 process) ended with SIGTERM after the server restarted"
        again = await _wait(url, token, requeued, "SUCCEEDED")
        assert again["attempt"] == 1
        types = [e["type"] for e in await all_events(url, token, requeued)]
        assert types[types.index("bounce"):] == ["bounce", "queued", "started", "log",
                                                  "finished"]


async def test_sigterm_bounces_running_jobs_and_exits_zero(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    async with server_process(data_dir) as (proc, url):
        token = KeyRing.load_or_create(data_dir).issue("alice", "user")
        job_id = await _submit(url, token, "sleep", {"seconds": 1.5})
        child = (await _wait(url, token, job_id, "RUNNING"))["pid"]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
        assert not pid_alive(child)
    log = tmp_path / "second.log"
    async with server_process(data_dir, stderr=log) as (proc, url):
        job = await _wait(url, token, job_id, "SUCCEEDED")
        assert "INFO jobserver.engine: re-queued 1 job bounced at the last stop" in \
            log.read_text()
        async with httpx.AsyncClient(base_url=url) as client:
            events = (await client.get(f"/api/v1/jobs/{job_id}/events",
                                       headers={"Authorization": f"Bearer {token}"})).json()
        types = [e["type"] for e in events["events"]]
        assert "bounce" in types
        assert types.count("started") == 2 and types[-1] == "finished"
        assert job["status"] == "SUCCEEDED"
