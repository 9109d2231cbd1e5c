"""Finished runs' work dirs: removed in batches, off the runs' path, and the
empty ones kept as spares that later runs take instead of making a new one.

Rules:
- A run that ends hands its work dir to `WorkDirs.discard` (sync, no wait)
  and goes on to record its end: the dir leaves its job's path within
  `SWEEP_DELAY` (plus one trip) after that, with every other dir discarded
  meanwhile, in ONE trip to a worker thread. A short job costs no trip of its
  own (on the 2-core dev machine a trip and its wake-ups cost more than the
  rmdir).
- An empty dir is not removed but renamed to a spare (`<root>/.spare/N`, at
  most `MAX_SPARES`), and a run about to start takes one (`take_spare`) and
  renames it to its own path in its spawn trip: a rename is cheaper than a
  mkdir and an rmdir, and it frees and allocates no inode (on ext4 without a
  journal, each inode freed lately makes every later allocation slower:
  mkdir took 0.1 to 0.7 ms of CPU after a few thousand short jobs). Every job
  runs as the server's user, so a reused dir crosses no boundary that a path
  did not; a dir that is not empty is removed, never reused.
- Bounded: at most `MAX_PENDING` dirs wait; past that `discard` says so and
  the run removes its dir itself (`remove_now`), as before.
- A dir handed in and wanted again (the same job run again, after a bounce)
  is taken back by `reclaim` before the new run makes it: a dir waiting is
  dropped from the batch and removed in the new run's own spawn trip; one in a
  trip under way is waited for.
- On the way out (cancelled) the pending dirs are removed in one last
  shielded trip, bounded by `FLUSH_SECONDS`; the spares stay, and the next
  start removes them. Everything that touches the disk runs in a worker thread.
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
# Empty dirs kept for later runs.
MAX_SPARES = 64
# The last trip on the way out.
FLUSH_SECONDS = 10.0
SPARES = ".spare"


class WorkDirs:
    def __init__(self, root: Path, *, delay: float = SWEEP_DELAY,
                 max_pending: int = MAX_PENDING, max_spares: int = MAX_SPARES) -> None:
        self._spare_dir = root / SPARES
        self._delay = delay
        self._max_pending = max_pending
        self._max_spares = max_spares
        self._pending: dict[Path, None] = {}  # in the order discarded
        self._in_flight: frozenset[Path] = frozenset()
        self._trip_done = trio.Event()
        self._work = trio.Event()
        self._running = False
        self._spares: list[Path] = []
        self._named = 0  # spare names used so far
        self._recycling = False  # the spares' dir is there
        self.removed = 0  # dirs gone from their job's path by sweeps since start ...
        self.sweeps = 0  # ... in this many trips
        self.reused = 0  # spares taken

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._recycling = await trio.to_thread.run_sync(_fresh_dir, self._spare_dir)
        self._running = True
        task_status.started()
        try:
            while True:
                await self._work.wait()
                await trio.sleep(self._delay)
                await self._sweep()
        finally:
            self._running = False
            self._recycling = False  # what the last sweep empties is removed
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_SECONDS):
                await self._sweep()

    def discard(self, path: Path) -> bool:
        """Queue `path` for removal; False when it cannot wait (the caller removes it)."""
        if not self._running or len(self._pending) >= self._max_pending:
            return False
        self._pending[path] = None
        self._work.set()
        return True

    def take_spare(self) -> Path | None:
        """An empty dir to rename to a new run's work dir (it is the caller's now)."""
        if not self._spares:
            return None
        self.reused += 1
        return self._spares.pop()

    def give_back(self, spare: Path) -> None:
        """A spare taken and not used (its run made no dirs)."""
        if self._running and len(self._spares) < self._max_spares:
            self._spares.append(spare)
            self.reused -= 1

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
        room = self._max_spares - len(self._spares) if self._recycling else 0
        names = [self._spare_dir / str(self._named + i) for i in range(max(room, 0))]
        self._named += len(names)
        self._in_flight = frozenset(batch)
        try:
            spares = await trio.to_thread.run_sync(_clear, batch, names)
            self._spares.extend(spares)
            self.removed += len(batch)
            self.sweeps += 1
        finally:
            self._in_flight = frozenset()
            self._trip_done.set()
            self._trip_done = trio.Event()


async def remove_now(path: Path) -> None:
    """Remove one dir in a trip of its own (when it could not wait)."""
    await trio.to_thread.run_sync(remove_dir, path)


def take_over(spare: Path | None, path: Path) -> bool:
    """Rename `spare` to `path` (blocking): True when `path` is made so."""
    if spare is None:
        return False
    try:
        os.rename(spare, path)
    except OSError:
        remove_dir(spare)
        return False
    return True


def _fresh_dir(path: Path) -> bool:
    """An empty `path` (an earlier run's spares removed); False when it cannot be made."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


def _clear(paths: list[Path], names: list[Path]) -> list[Path]:
    """Each of `paths` off its job's path: the empty ones renamed to `names`
    while they last, the rest removed. The spares made."""
    spares: list[Path] = []
    for path in paths:
        if len(spares) < len(names) and _empty(path):
            name = names[len(spares)]
            try:
                os.rename(path, name)
            except OSError:
                pass
            else:
                spares.append(name)
                continue
        remove_dir(path)
    return spares


def _empty(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def remove_dir(path: Path) -> None:
    """Remove a work dir: one call when the job left it empty, as most do."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
