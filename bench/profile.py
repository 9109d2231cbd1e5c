"""Where a jobserver run's time goes: py-spy sampling of the server process.

`Sampler(pid, out)` runs `py-spy record --format raw` against the server for
as long as the `with` block lasts (all threads, 200 samples a second) and
writes collapsed stacks to `out`; `summary(out)` folds them into the share of
samples per thread and per function, by self time and including callees.
Samples of a thread waiting for work (trio's epoll wait, an idle worker
thread's wait for a job: py-spy counts both as active) are counted apart, as
`idle`, and left out of the rankings: the shares are of busy samples.
py-spy comes with bench/requirements.txt; without it (or without the right
to trace the server) the sampler says why and the bench goes on unprofiled.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

RATE = 200
TOP = 12
# Frames every sample passes through: left out of the inclusive ranking.
_PLUMBING = ("<module> ", "main (jobserver/__main__.py", "_run_code ", "_run_module_as_main ",
             "run (trio/", "unrolled_run (trio/", "Thread.", "WorkerThread.",
             "main (hypercorn/__main__.py", "trio_worker (hypercorn/", "run (hypercorn/run.py")
# Innermost frames of a thread that waits for work.
_IDLE = ("EpollIOManager.get_events (trio/", "WorkerThread._work (trio/")


class Sampler:
    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.problem = ""

    def __enter__(self) -> Sampler:
        exe = (shutil.which("py-spy", path=str(Path(sys.executable).parent))
               or shutil.which("py-spy"))
        if exe is None:
            self.problem = "py-spy is not installed"
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--rate", str(RATE), "--format", "raw",
             "--threads", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # attached before the work starts
        if self.proc.poll() is not None:
            self.problem = (self.proc.stderr.read().decode(errors="replace").strip()[-300:]
                            if self.proc.stderr else "py-spy exited")
            self.proc = None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def summary(path: Path, top: int = TOP) -> dict[str, list[tuple[str, float]]]:
    """Shares of samples: per thread, per function (self) and per function (inclusive)."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(":")[-1].strip() or frames[0]
        if frames[-1].startswith(_IDLE):
            idle[thread] += n
            continue
        total += n
        threads[thread] += n
        own[frames[-1]] += n
        for frame in set(frames[1:]):
            if not frame.startswith(_PLUMBING):
                inclusive[frame] += n
    if total == 0:
        return {}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(top)]
    waiting = [(name, n / (n + threads[name])) for name, n in idle.most_common(top)]
    return {"threads": shares(threads), "idle (of the thread's own samples)": waiting,
            "self": shares(own), "inclusive": shares(inclusive)}


# Who a sample's time is counted to: the package of its innermost frame that
# belongs to one of these layers (the standard library, attrs' generated
# methods and the like count to the layer that called them).
LAYERS = (("h11", "h11 (HTTP/1.1 parsing and framing)"),
          ("hypercorn", "hypercorn (its protocol, ASGI glue, task groups)"),
          ("quart", "Quart (+ Werkzeug, Flask's sansio, blinker)"),
          ("quart_trio", "Quart (+ Werkzeug, Flask's sansio, blinker)"),
          ("werkzeug", "Quart (+ Werkzeug, Flask's sansio, blinker)"),
          ("flask", "Quart (+ Werkzeug, Flask's sansio, blinker)"),
          ("blinker", "Quart (+ Werkzeug, Flask's sansio, blinker)"),
          ("trio", "trio (scheduling, sockets, channels)"),
          ("outcome", "trio (scheduling, sockets, channels)"),
          ("jwt", "PyJWT (token check)"),
          ("cryptography", "PyJWT (token check)"),
          ("jobserver", "jobserver (front door, handlers, engine, store)"),
          ("bench", "the baseline's handlers"))


def _layer(frame: str) -> str | None:
    where = frame[frame.rfind("(") + 1:]
    top = where.split("/", 1)[0] if "/" in where else ""
    for package, layer in LAYERS:
        if top == package:
            return layer
    return None


def by_layer(path: Path) -> list[tuple[str, float]]:
    """Shares of busy samples of the main thread by layer (LAYERS)."""
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.startswith("thread") or not count.isdigit():
            continue
        frames = stack.split(";")
        if "MainThread" not in frames[0] or frames[-1].startswith(_IDLE):
            continue
        n = int(count)
        total += n
        found = next((layer for layer in map(_layer, reversed(frames)) if layer), "other")
        layers[found] += n
    return [(name, n / total) for name, n in layers.most_common()] if total else []


def print_summary(found: dict[str, list[tuple[str, float]]],
                  say: Callable[[str], None] = print) -> None:
    for title, rows in found.items():
        say(f"  {title}:")
        for name, share in rows:
            say(f"    {share:6.1%}  {name}")
