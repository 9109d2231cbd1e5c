"""The job a jobserver fan-out round runs: wait for a go file, then print events.

Usage: emit.py COUNT BURST RATE GO_FILE WIDTH

Standalone (the server runs it as a job, with no bench package on its path).
Waits, bounded, until GO_FILE exists so every subscriber can connect first;
then writes COUNT lines to stdout in bursts of BURST lines, one write per
burst. Each line is `BENCH <seq> <t_ns> ....` padded to WIDTH characters, t_ns
taken just before the write (the same text bench/events.py puts in a message).
RATE is events per second (0 = as fast as possible), paced on an absolute
schedule so a slow write does not lower the rate.
"""

from __future__ import annotations

import os
import sys
import time

GO_WAIT_SECONDS = 120.0
GO_POLL_SECONDS = 0.001


def line(seq: int, t_ns: int, width: int) -> str:
    head = f"BENCH {seq} {t_ns} "
    return head + "." * max(width - len(head), 0) + "\n"


def wait_for(path: str) -> bool:
    deadline = time.monotonic() + GO_WAIT_SECONDS
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(GO_POLL_SECONDS)
    return True


def emit(count: int, burst: int, rate: float, width: int) -> None:
    out = sys.stdout.buffer
    interval = burst / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for start in range(0, count, burst):
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
        now = time.time_ns()
        text = "".join(line(seq, now, width) for seq in range(start, min(start + burst, count)))
        out.write(text.encode())
        out.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    count, burst, rate, go_file, width = argv
    if not wait_for(go_file):
        print(f"emit: {go_file} did not appear in {GO_WAIT_SECONDS:.0f} s", file=sys.stderr)
        return 3
    emit(int(count), max(int(burst), 1), float(rate), int(width))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
