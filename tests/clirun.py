"""Running the `jobserver` command line as a real subprocess, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from .conftest import PY

CLI_TIMEOUT = 30


@dataclass(frozen=True)
class Ran:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def cli_env(url: str | None, token: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOBSERVER_URL", "JOBSERVER_TOKEN", "NO_COLOR")}
    env["XDG_CONFIG_HOME"] = str(home)  # never the real user's login file
    if url is not None:
        env["JOBSERVER_URL"] = url
    if token is not None:
        env["JOBSERVER_TOKEN"] = token
    env.update(extra)
    return env


async def cli(env: dict[str, str], *args: str, stdin: bytes = b"") -> Ran:
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process([PY, "-m", "jobserver", *args], env=env, stdin=stdin,
                                      capture_stdout=True, capture_stderr=True, check=False)
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


async def cli_all(*calls: tuple[dict[str, str], tuple[str, ...]]) -> list[Ran]:
    """Several independent runs (env, args) at once; their results in order."""
    results: list[Ran | None] = [None] * len(calls)

    async def one(i: int) -> None:
        env, args = calls[i]
        results[i] = await cli(env, *args)

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return [r for r in results if r is not None]


async def start_cli(env: dict[str, str], *args: str, stdout: int = subprocess.PIPE,
                    stderr: int = subprocess.PIPE) -> trio.Process:
    return await trio.lowlevel.open_process([PY, "-m", "jobserver", *args], env=env,
                                            stdout=stdout, stderr=stderr)


async def read_until(stream: trio.abc.ReceiveStream, needle: bytes, buffer: bytearray,
                     *, timeout: float = CLI_TIMEOUT) -> None:
    with trio.fail_after(timeout):
        while needle not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"stream ended before {needle!r}: {bytes(buffer)[-500:]!r}"
            buffer += chunk


async def read_all(stream: trio.abc.ReceiveStream, buffer: bytearray) -> None:
    while chunk := await stream.receive_some(65536):
        buffer += chunk
