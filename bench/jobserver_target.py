"""jobserver as a benchmark target: a real server, real jobs, the logs dialect.

`JobserverServer` starts `python -m jobserver --port 0 --data-dir DIR --config
FILE` in a temporary directory with the bench templates below, reads the URL it
prints (`... listening on http://...`), makes an admin token with `python -m
jobserver token --sub bench --role admin`, and submits jobs with `POST
/api/v1/jobs {"template", "params"}` and `Authorization: Bearer`.

`JobserverTarget` runs a fan-out round as one `bench-emit` job (bench/emit.py):
`prepare` submits it, subscribers connect to `/api/v1/ws/jobs/{id}/logs?token=`,
`trigger` creates the job's go file, and the job prints the events; `settle`
waits for the job to finish. `start` raises TargetUnavailable, with the reason,
until the server answers the logs WebSocket upgrade with 101.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .events import MESSAGE_WIDTH
from .procs import HOST, ServerProcess, http
from .targets import ROOT, Plan, Target, TargetUnavailable
from .wsclient import REQUEST

START_TIMEOUT = 30.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")

CONFIG = """\
[server]
slots = {slots}
# Every subscriber comes from 127.0.0.1: lift the per-client cap over the counts.
max_connections = 100000
max_connections_per_client = 100000
{extra_server}

[templates.bench-emit]
description = "Benchmark: wait for go_file, then print count lines in bursts."
argv = [{python}, {emit}, "{{count}}", "{{burst}}", "{{rate}}", "{{go_file}}", "{width}"]
timeout = 900
[templates.bench-emit.params.count]
type = "int"
required = true
min = 0
max = 10000000
[templates.bench-emit.params.burst]
type = "int"
default = 1
min = 1
max = 1024
[templates.bench-emit.params.rate]
type = "float"
default = 0
min = 0
[templates.bench-emit.params.go_file]
type = "string"
required = true

[templates.bench-true]
description = "Benchmark: the cheapest job there is."
argv = ["true"]

[templates.bench-seq]
description = "Benchmark: seq count once go_file exists, the chattiest job there is."
argv = ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.001; done; exec seq "$1"',
        "{{go_file}}", "{{count}}"]
timeout = 900
[templates.bench-seq.params.count]
type = "int"
default = 2000000
min = 1
max = 100000000
[templates.bench-seq.params.go_file]
type = "string"
required = true
"""


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class JobserverServer:
    """One jobserver process in a throw-away data directory."""

    def __init__(self, *, slots: int = 4, extra_server: str = "",
                 extra_templates: str = "") -> None:
        self.slots = slots
        self.extra_server = extra_server  # more [server] settings (TOML lines)
        self.extra_templates = extra_templates  # more templates (TOML tables)
        self.dir = Path(tempfile.mkdtemp(prefix="bench-jobserver-"))
        self.server: ServerProcess | None = None
        self.url = ""
        self.token = ""

    def start(self) -> None:
        if importlib.util.find_spec("jobserver.__main__") is None:
            raise TargetUnavailable("jobserver is not installed in this environment")
        config = self.dir / "bench.toml"
        config.write_text(CONFIG.format(
            slots=self.slots, python=_toml_str(sys.executable), extra_server=self.extra_server,
            emit=_toml_str(str(ROOT / "bench" / "emit.py")), width=MESSAGE_WIDTH)
            + self.extra_templates)
        argv = [sys.executable, "-m", "jobserver", "--port", "0", *self._common]
        self.server = ServerProcess("jobserver", argv, cwd=self.dir)
        try:
            line = self.server.wait_for_output("listening on ", START_TIMEOUT)
        except RuntimeError:
            last = (self.server.output_tail(1) or "no output").strip()
            raise TargetUnavailable(f"jobserver did not start: {last}") from None
        self.url = line.split("listening on ", 1)[1].split()[0].rstrip("/")
        self.token = self.make_token("bench", "admin")

    @property
    def _common(self) -> list[str]:
        return ["--data-dir", str(self.dir / "data"), "--config", str(self.dir / "bench.toml")]

    def make_token(self, sub: str, role: str) -> str:
        made = subprocess.run(
            [sys.executable, "-m", "jobserver", "token", "--sub", sub, "--role", role,
             *self._common], cwd=self.dir, capture_output=True, text=True, timeout=60,
            check=False)
        if made.returncode != 0 or not made.stdout.strip():
            raise TargetUnavailable(f"jobserver token failed: {made.stderr.strip()[:300]}")
        return made.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    @property
    def ws_base(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def submit(self, template: str, params: dict[str, Any], *, token: str | None = None) -> str:
        status, body = http("POST", f"{self.url}/api/v1/jobs", token=token or self.token,
                            body={"template": template, "params": params})
        if status != 201 or not isinstance(body, dict):
            raise TargetUnavailable(f"POST /api/v1/jobs answered {status}: {body!r:.300}")
        job_id: str = body["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.url}/api/v1/jobs/{job_id}", token=self.token)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET /api/v1/jobs/{job_id} answered {status}")
        return body

    def wait_finished(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def logs_url(self, job_id: str) -> str:
        return f"{self.ws_base}/api/v1/ws/jobs/{job_id}/logs?token={self.token}"

    def check_logs_websocket(self, job_id: str) -> None:
        """Raise TargetUnavailable unless the logs WebSocket upgrade gets a 101."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or HOST, parts.port or 80
        target = f"/api/v1/ws/jobs/{job_id}/logs?token={self.token}"
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(REQUEST.format(target=target, host=f"{host}:{port}").encode())
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        code = status.split(" ")[1:2]
        if code == ["404"]:
            raise TargetUnavailable("jobserver has no logs WebSocket yet: upgrade of "
                                    f"/api/v1/ws/jobs/{{id}}/logs answered {status!r}")
        if code != ["101"]:
            raise TargetUnavailable(f"jobserver's logs WebSocket refused the bench: {status!r}")


class JobserverTarget(Target):
    key = "jobserver"
    label = "jobserver"

    def __init__(self) -> None:
        self.server = JobserverServer()
        self.job_id = ""
        self.go_file = Path()
        self.rounds = 0

    def start(self) -> None:
        try:
            self.server.start()
            go = self.server.dir / "go-probe"
            go.touch()
            probe = self.server.submit("bench-emit", {"count": 1, "burst": 1, "rate": 0,
                                                      "go_file": str(go)})
            self.server.check_logs_websocket(probe)
            self.server.wait_finished(probe, START_TIMEOUT)
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        self.server.stop()

    @property
    def pid(self) -> int:
        return self.server.pid

    def prepare(self, plan: Plan) -> str:
        self.rounds += 1
        self.go_file = self.server.dir / f"go-{self.rounds}"
        self.job_id = self.server.submit("bench-emit", {
            "count": plan.count, "burst": plan.burst, "rate": plan.rate,
            "go_file": str(self.go_file)})
        return self.server.logs_url(self.job_id)

    def trigger(self) -> None:
        self.go_file.touch()

    def settle(self, timeout: float) -> None:
        job = self.server.wait_finished(self.job_id, timeout)
        if job["status"] not in TERMINAL:
            raise TargetUnavailable(f"job {self.job_id} still {job['status']} after {timeout} s")
