"""Restarts: the server as a real process, killed hard or stopped gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from jobserver.auth import KeyRing

from .conftest import PY, TEMPLATES, pid_alive


@asynccontextmanager
async def server_process(data_dir: Path, port: int = 0
                         ) -> AsyncIterator[tuple[trio.Process, str]]:
    proc = await trio.lowlevel.open_process(
        [PY, "-m", "jobserver", "--port", str(port), "--data-dir", str(data_dir),
         "--config", str(TEMPLATES)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(30):
            while b"listening on " not in buffer or not buffer.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"server exited early: {buffer!r}"
                buffer += chunk
        url = buffer.split(b"listening on ")[1].split()[0].decode()
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10):
            await proc.wait()
        await proc.stdout.aclose()


async def _submit(url: str, token: str, template: str, params: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/api/v1/jobs", json={"template": template, "params": params},
                              headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        return job_id


async def _job(url: str, token: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get(f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job


async def _wait(url: str, token: str, job_id: str, *statuses: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while (job := await _job(url, token, job_id))["status"] not in statuses:
            await trio.sleep(0.05)
    return job


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
        await trio.sleep(0.2)  # a group commit
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        os.killpg(child, signal.SIGKILL)  # the orphan of a kill -9 (its own session)
    async with server_process(data_dir) as (proc, url):
        job = await _job(url, token, lost)
        assert job["status"] == "FAILED" and job["error_message"] == \
            "server stopped while running"
        assert job["outcome"] == "lost"
        again = await _wait(url, token, requeued, "SUCCEEDED")
        assert again["attempt"] == 1


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
    async with server_process(data_dir) as (proc, url):
        job = await _wait(url, token, job_id, "SUCCEEDED")
        async with httpx.AsyncClient(base_url=url) as client:
            events = (await client.get(f"/api/v1/jobs/{job_id}/events",
                                       headers={"Authorization": f"Bearer {token}"})).json()
        types = [e["type"] for e in events["events"]]
        assert "bounce" in types
        assert types.count("started") == 2 and types[-1] == "finished"
        assert job["status"] == "SUCCEEDED"
