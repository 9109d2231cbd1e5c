"""The removal of finished runs' work dirs, in batches, off the runs' path.

Rules:
- A run that ends hands its work dir to `WorkDirs.discard` (sync, no wait)
  and goes on to record its end: the dir goes within `SWEEP_DELAY` (plus one
  removal trip) after that, with every other dir discarded meanwhile, in ONE
  trip to a worker thread. A short job costs no trip of its own (on the
  2-core dev machine a trip and its wake-ups cost more than the rmdir).
- Bounded: at most `MAX_PENDING` dirs wait; past that `discard` says so and
  the run removes its dir itself (`remove_now`), as before.
- A dir handed in and wanted again (the same job run again, after a bounce)
  is taken back by `reclaim` before the new run makes it: a dir waiting is
  dropped from the batch and removed there and then, in the new run's own
  spawn trip (`Run._make_dirs`); one in a trip under way is waited for.
- On the way out (cancelled) the pending dirs are removed in one last
  shielded trip, bounded by `FLUSH_SECONDS`.
Everything that touches the disk runs in a worker thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import trio

# How long a discarded dir waits for others to join its removal trip.
SWEEP_DELAY = 0.05
# Dirs waiting at most; then a run removes its own.
MAX_PENDING = 4096
# The last trip on the way out.
FLUSH_SECONDS = 10.0


class WorkDirs:
    def __init__(self, *, delay: float = SWEEP_DELAY, max_pending: int = MAX_PENDING) -> None:
        self._delay = delay
        self._max_pending = max_pending
        self._pending: dict[Path, None] = {}  # in the order discarded
        self._in_flight: frozenset[Path] = frozenset()
        self._trip_done = trio.Event()
        self._work = trio.Event()
        self._running = False
        self.removed = 0  # dirs removed by sweeps since start ...
        self.sweeps = 0  # ... in this many trips

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        task_status.started()
        try:
            while True:
                await self._work.wait()
                await trio.sleep(self._delay)
                await self._sweep()
        finally:
            self._running = False
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_SECONDS):
                await self._sweep()

    def discard(self, path: Path) -> bool:
        """Queue `path` for removal; False when it cannot wait (the caller removes it)."""
        if not self._running or len(self._pending) >= self._max_pending:
            return False
        self._pending[path] = None
        self._work.set()
        return True

    async def reclaim(self, path: Path) -> bool:
        """Take `path` back before it is made again: True when it was waiting
        (it is the caller's to remove now); a removal under way is waited for."""
        while path in self._in_flight:
            await self._trip_done.wait()
        if path in self._pending:
            del self._pending[path]
            return True
        await trio.lowlevel.checkpoint()
        return False

    async def _sweep(self) -> None:
        if not self._pending:
            self._work = trio.Event()
            return
        batch = list(self._pending)
        self._pending.clear()
        self._work = trio.Event()
        self._in_flight = frozenset(batch)
        try:
            await trio.to_thread.run_sync(_remove_all, batch)
            self.removed += len(batch)
            self.sweeps += 1
        finally:
            self._in_flight = frozenset()
            self._trip_done.set()
            self._trip_done = trio.Event()


async def remove_now(path: Path) -> None:
    """Remove one dir in a trip of its own (when it could not wait)."""
    await trio.to_thread.run_sync(remove_dir, path)


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        remove_dir(path)


def remove_dir(path: Path) -> None:
    """Remove a work dir: one call when the job left it empty, as most do."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
