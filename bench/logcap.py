"""The log cap's memory and disk bound: a job printing far past its cap.

    .venv/bin/python -m bench.logcap [--mb 200] [--cap-mib 1]

Starts a real server (bench/jobserver_target.py's `JobserverServer`) with two
templates printing the same output, `--mb` MB of 100-byte lines: one capped at
`--cap-mib` MiB, one whose cap (4 GiB) is never reached. Runs each alone and
samples, every 0.1 s, the server process's RSS (`/proc/PID/status` VmRSS,
the server only: a job runs in its own session) and how far the job has got
(its record's `last_seq`: one seq per line). Prints, per run: RSS when the
job started, once 10% of the output was in, its peak, and at the end (and
once each tenth was in); the
growth from the 10% mark to the peak (flat means: the same whatever the
output); the database's size on disk (with its WAL) after the run; lines/s;
and the `truncated` marker's counts. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jobserver_target import JobserverServer
from .procs import http

LINE_BYTES = 100
CHUNK_LINES = 1000  # one write() of the job: 100 KB
SAMPLE_EVERY = 0.1
RUN_TIMEOUT = 900.0

# The job: `lines` lines of 100 bytes, written 1,000 at a time.
JOB = (
    "import sys\n"
    "chunk = ('x' * 99 + '\\n') * int(sys.argv[2])\n"
    "w = sys.stdout.write\n"
    "for _ in range(int(sys.argv[1]) // int(sys.argv[2])): w(chunk)\n"
    "sys.stdout.flush()\n"
)
TEMPLATE = """
[templates.{name}]
description = "Benchmark: prints `lines` lines of 100 bytes."
max_log_bytes = {cap}
timeout = 900
argv = {argv}
[templates.{name}.params.lines]
type = "int"
default = 1000
"""


def template(name: str, cap: int) -> str:
    """The job's template (a JSON string is a TOML basic string)."""
    argv = json.dumps(["python3", "-c", JOB, "{lines}", str(CHUNK_LINES)])
    return TEMPLATE.format(name=name, cap=cap, argv=argv)


@dataclass(frozen=True, slots=True)
class Run:
    lines: int
    seconds: float
    rss_start: int
    rss_tenth: int
    rss_peak: int
    rss_end: int
    rss_deciles: tuple[int, ...]  # RSS once 10%, 20%, ... 100% of the lines were in
    db_bytes: int
    wal_bytes: int
    truncated: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "seconds": self.seconds, "lines_per_s":
                self.lines / self.seconds, "rss_start": self.rss_start,
                "rss_tenth": self.rss_tenth, "rss_peak": self.rss_peak, "rss_end": self.rss_end,
                "rss_growth_after_tenth": self.rss_peak - self.rss_tenth,
                "rss_deciles": list(self.rss_deciles),
                "db_bytes": self.db_bytes, "wal_bytes": self.wal_bytes,
                "truncated": self.truncated}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_bytes(data_dir: Path) -> tuple[int, int]:
    """(the database file, its WAL): the WAL holds every write since its last
    checkpoint, so it is the larger while a job floods."""
    def size(name: str) -> int:
        path = data_dir / name
        return path.stat().st_size if path.exists() else 0
    return size("jobserver.db"), size("jobserver.db-wal")


def run_one(server: JobserverServer, template: str, lines: int) -> Run:
    rss_start = rss_bytes(server.pid)
    job_id = server.submit(template, {"lines": lines})
    began = time.monotonic()
    tenth = peak = 0
    deciles: list[int] = []
    job: dict[str, Any] = {}
    while time.monotonic() - began < RUN_TIMEOUT:
        rss = rss_bytes(server.pid)
        peak = max(peak, rss)
        status, body = http("GET", f"{server.url}/api/v1/jobs/{job_id}", token=server.token)
        if status == 200 and isinstance(body, dict):
            job = body
            while len(deciles) < 10 and job["last_seq"] >= lines * (len(deciles) + 1) // 10:
                deciles.append(rss)
            tenth = deciles[0] if deciles else 0
            if job["status"] not in ("QUEUED", "RUNNING"):
                break
        time.sleep(SAMPLE_EVERY)
    seconds = time.monotonic() - began
    if job.get("status") != "SUCCEEDED":
        raise RuntimeError(f"the job ended {job.get('status')}: {job.get('error_message')}")
    db, wal = disk_bytes(server.dir / "data")
    return Run(lines=lines, seconds=seconds, rss_start=rss_start, rss_tenth=tenth or peak,
               rss_peak=peak, rss_end=rss_bytes(server.pid), rss_deciles=tuple(deciles),
               db_bytes=db, wal_bytes=wal,
               truncated=job.get("log_truncated"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.logcap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="MB the job prints")
    parser.add_argument("--cap-mib", type=float, default=1.0, help="the capped run's cap")
    args = parser.parse_args(argv)
    lines = args.mb * 1_000_000 // LINE_BYTES // CHUNK_LINES * CHUNK_LINES
    cap = int(args.cap_mib * (1 << 20))
    out: dict[str, Any] = {"mb": args.mb, "cap_bytes": cap}
    for name, limit in (("capped", cap), ("uncapped", 4 << 30)):
        # A server of its own per run: one run's heap is not the other's start.
        server = JobserverServer(slots=1, extra_templates=template(f"bench-{name}", limit))
        try:
            server.start()
            run = run_one(server, f"bench-{name}", lines)
        finally:
            server.stop()
        out[name] = run.as_dict()
        mib = 1 << 20
        what = f"cap {limit / mib:g} MiB" if name == "capped" else "no cap reached"
        print(f"{name:8} ({what}): {lines:,} lines ({lines * LINE_BYTES / 1e6:.0f} MB) in"
              f" {run.seconds:.1f} s ({lines / run.seconds:,.0f} lines/s);"
              f" server RSS {run.rss_start / mib:.0f} MiB"
              f" at start, {run.rss_tenth / mib:.0f} at 10%, peak {run.rss_peak / mib:.0f},"
              f" end {run.rss_end / mib:.0f} (+{(run.rss_peak - run.rss_tenth) / mib:.1f} MiB"
              f" after 10%); on disk: database {run.db_bytes / mib:.1f} MiB, WAL"
              f" {run.wal_bytes / mib:.1f} MiB", flush=True)
        print("         RSS at 10%, 20%, ... 100% of the output: "
              + " ".join(f"{r / mib:.0f}" for r in run.rss_deciles) + " MiB", flush=True)
        if run.truncated:
            print(f"         truncated: {run.truncated['lines']:,} lines "
                  f"({run.truncated['bytes'] / mib:.0f} MiB) dropped", flush=True)
    return out


if __name__ == "__main__":
    main()
