"""The first minutes of a new user: `python -m jobserver` started as a plain
command, with a PATH that has no project venv on it (a pip install, a systemd
unit), its start-up lines, and the bundled jobs-dialect sample run for real."""

from __future__ import annotations

import html
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from jobserver.cli.local import announcement
from jobserver.config import Config

# Where a systemd unit or a bare shell finds programs: no venv, so a bare
# `python3` there is the system's, which does not have jobserver installed.
SYSTEM_PATH = "/usr/bin:/bin"
START_TIMEOUT = 30.0


@dataclass
class Started:
    process: trio.Process
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def line(self, prefix: str) -> str | None:
        """The rest of the first whole line (newline written) that starts with `prefix`."""
        for line in self.output().split("\n")[:-1]:
            if line.startswith(prefix):
                return line.removeprefix(prefix)
        return None

    @property
    def url(self) -> str:
        url = self.line("jobserver listening on ")
        assert url is not None
        return url


def user_env(home: Path) -> dict[str, str]:
    return {"PATH": SYSTEM_PATH, "HOME": str(home), "LANG": "C.UTF-8"}


@asynccontextmanager
async def jobserver(cwd: Path, env: dict[str, str], name: str, *, port: int = 0
                    ) -> AsyncIterator[Started]:
    """`python -m jobserver --port PORT` in `cwd`, stopped with SIGTERM (exit 0) at the end."""
    out, err = cwd.parent / f"{name}.out", cwd.parent / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "jobserver", "--port", str(port)], cwd=cwd, env=env,
            stdout=stdout, stderr=stderr)
    started = Started(process, out, err)
    try:
        with trio.fail_after(START_TIMEOUT):
            while started.line("make a token: ") is None:  # the announcement's last line
                assert process.poll() is None, err.read_text()
                await trio.sleep(0.05)
        yield started
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(START_TIMEOUT):
            assert await process.wait() == 0, err.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def run_sample(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """The spec's curl example (with a token), the sample made as short as it goes."""
    r = await client.post("/api/jobs", json={
        "preset": "sample-hello-youtube", "inputs": {"seconds": 1},
        "options": {"allowSkipUnavailable": True, "quality": "fast"}},
        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202, r.text
    with trio.fail_after(30):
        while True:
            r = await client.get(f"/api/jobs/{r.json()['jobId']}",
                                 headers={"Authorization": f"Bearer {token}"})
            doc: dict[str, Any] = r.json()
            if doc["status"] in ("Succeeded", "Failed", "Cancelled"):
                return doc
            await trio.sleep(0.05)


async def test_first_start_runs_the_sample_without_a_venv_on_path(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = user_env(home)
    async with jobserver(cwd, env, "first") as server:
        token = server.line("admin token (valid 7 days): ")
        assert token
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            doc = await run_sample(client, token)
            assert doc["status"] == "Succeeded", doc
            video = await trio.Path(doc["output"]["videoPath"]).stat()
            assert video.st_size == doc["output"]["sizeBytes"] > 0
            # The spec's own examples send no token: 401 by default, as the output says.
            r = await client.get(f"/api/jobs/{doc['jobId']}")
            assert r.status_code == 401
            page = await client.get(server.line("web page: ") or "")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    data_dir = home / ".local" / "share" / "jobserver"
    assert server.line("data directory: ") == str(data_dir)
    assert (data_dir / "signing.key").exists()
    assert list(cwd.iterdir()) == []  # nothing written where the server was started
    hint = server.line("jobs dialect (/api/jobs): ")
    assert hint is not None and "JOBSERVER_ANONYMOUS_LOOPBACK=1" in hint
    assert "anonymous_loopback = true" in hint
    # The one secret is shown once, on stdout; the logs never carry it.
    assert token not in server.stderr.read_text()


async def test_every_start_prints_a_token_command_that_works(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**user_env(home), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    async with jobserver(cwd, env, "first"):
        pass
    async with jobserver(cwd, env, "again") as server:
        output = server.output()
        assert "admin token" not in output and "jobs dialect" not in output
        assert server.line("data directory: ") == str(tmp_path / "xdg" / "jobserver")
        assert server.line("web page: ") == server.url + "/"
        command = server.line("make a token: ") or ""
        argv = shlex.split(command)
        made = await trio.run_process(argv, env=env, capture_stdout=True, capture_stderr=True)
        token = made.stdout.decode().strip()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            r = await client.get("/api/v1/templates",
                                 headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert any(t["name"] == "sample-hello-youtube" for t in r.json()["templates"])
            page = await client.get("/")  # its sign-in hint shows the same command
            assert f"<code id=\"make-token\">{html.escape(command)}</code>" in page.text
    assert token not in server.stderr.read_text()
    assert list(cwd.iterdir()) == []


async def test_the_first_starts_hint_lets_the_specs_examples_in(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**user_env(home), "JOBSERVER_ANONYMOUS_LOOPBACK": "1"}
    async with jobserver(cwd, env, "anonymous") as server:
        assert (server.line("anonymous_loopback is on: ") or "").endswith("acts as 'local'")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            # specs/dialect-jobs-sse.md's curl example, as written: no token.
            r = await client.post("/api/jobs", content=b'{"preset": "sample-hello-youtube", '
                                  b'"options": {"allowSkipUnavailable": true, "quality": '
                                  b'"balanced"}}', headers={"Content-Type": "application/json"})
            assert r.status_code == 202, r.text
            r = await client.post(f"/api/jobs/{r.json()['jobId']}/cancel")
            assert r.status_code == 202, r.text


def test_announcement_for_a_wildcard_host_and_anonymous_loopback(tmp_path: Path) -> None:
    config = Config(host="0.0.0.0", data_dir=tmp_path, anonymous_loopback=True)
    lines = announcement(config, "http://0.0.0.0:8123", 8123, first_token=None)
    assert "web page: http://127.0.0.1:8123/" in lines
    assert any(line.startswith("anonymous_loopback is on") and "'local'" in line
               for line in lines)
    assert not any("token (valid" in line for line in lines)
