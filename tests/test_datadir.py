"""One server per data directory, and a port that is free: a second server on a
running one's data directory, or on a busy port, refuses to start, saying why in
one line, before it touches a job (it would otherwise take the running server's
jobs for a crash's leftovers and end them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from jobserver.datadir import DataDirInUse, StartRefused
from jobserver.server import Server, serve

from .conftest import make_config
from .test_dataplane_helpers import running_server


def _refused(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    return subprocess.run([sys.executable, "-m", "jobserver", *args], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


async def test_a_second_server_on_a_running_ones_data_dir_refuses(data_dir: Path,
                                                                  tmp_path: Path) -> None:
    async with running_server(data_dir) as h:
        job = await h.submit("sleep", {"seconds": 30})
        await h.wait(job["id"], "RUNNING")
        with pytest.raises(DataDirInUse, match="is in use by a running server"):
            await serve(make_config(data_dir, port=0))  # raises before it starts anything
        # Nothing of the first one's was touched: its job still runs.
        assert (await h.job(job["id"]))["status"] == "RUNNING"
        # As a command: one line, exit 1, no traceback.
        done = await trio.to_thread.run_sync(lambda: _refused(
            "--data-dir", str(data_dir), "--port", "0", tmp_path=tmp_path))
        assert done.returncode == 1, done
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"jobserver: data directory {data_dir} is in use by a running server (pid "), done
        assert "Traceback" not in done.stderr
        assert (await h.job(job["id"]))["status"] == "RUNNING"
        await h.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=h.auth(h.alice))
        await h.wait(job["id"])
    # Once it stopped, the data directory is free again.
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, make_config(data_dir, port=0))
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/healthz")).status_code == 200
        server.request_shutdown()


async def test_a_busy_port_refuses_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartRefused, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve(make_config(tmp_path / "d1", port=port))
        done = await trio.to_thread.run_sync(lambda: _refused(
            "--data-dir", str(tmp_path / "d2"), "--port", str(port), tmp_path=tmp_path))
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines()[-1] == (
        f"jobserver: cannot listen on 127.0.0.1:{port}: Address already in use"), done
    assert "Traceback" not in done.stderr
