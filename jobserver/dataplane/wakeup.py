"""A flag one task waits on: `trio.Event` for a single waiter, at a fraction of its size.

Rules: at most one task waits at a time (a second waiter is a bug and raises);
`set` never blocks and may be called from any task of the run, any number of
times; `clear` re-arms it. A data-plane connection holds a few of these for
its whole life, so its size counts: one small object, no set of waiters.
"""

from __future__ import annotations

import trio


class Wakeup:
    __slots__ = ("_is_set", "_task")

    def __init__(self) -> None:
        self._is_set = False
        self._task: trio.lowlevel.Task | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        self._is_set = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        """Return once set (at once, after a checkpoint, when it already is)."""
        if self._is_set:
            await trio.lowlevel.checkpoint()
            return
        if self._task is not None:
            raise RuntimeError("another task is already waiting on this Wakeup")
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED
