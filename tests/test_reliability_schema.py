"""schemathesis against /openapi.json, on a real server, with a user's token
(so it can launch no ad-hoc command): no 5xx anywhere, and every response
(status, content type, headers, body) as the document says.

Bounded: `JOBSERVER_TEST_SCHEMA_EXAMPLES` cases per operation (a small default
in CI; more in a soak run), a fixed seed, no stateful phase, and a 3 s request
timeout, which is also where schemathesis stops reading an event stream of a
job still running (the jobs the fuzzing itself submits as Alice).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from .test_dataplane_helpers import running_server

pytestmark = pytest.mark.reliability

EXAMPLES = int(os.environ.get("JOBSERVER_TEST_SCHEMA_EXAMPLES", "10"))
SEED = int(os.environ.get("JOBSERVER_TEST_SCHEMA_SEED", "20261201"))
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(data_dir: Path) -> None:
    async with running_server(data_dir) as h:
        # Jobs of Alice's in the end states a response can show: one that
        # succeeded, one that failed.
        done = await h.submit("echo", {"message": "done"})
        failed = await h.submit("exit", {"code": 3})
        for job in (done, failed):
            await h.wait(job["id"])
        argv = [SCHEMATHESIS, "run", f"{h.url}/openapi.json",
                "--header", f"Authorization: Bearer {h.alice}",
                "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", str(SEED),
                "--phases", "examples,coverage,fuzzing", "--request-timeout", "3",
                "--generation-database", "none", "--no-shrink", "--no-color",
                "--workers", "1", "--max-failures", "20"]
        with trio.fail_after(120):
            done_run = await trio.run_process(argv, capture_stdout=True, stderr=-2,
                                              check=False, cwd=str(data_dir.parent))
        output = done_run.stdout.decode(errors="replace")
        print(output[-3000:])
        assert done_run.returncode == 0, output[-20000:]
