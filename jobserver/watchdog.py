"""Ending a run from outside it: the `Stopper` a sink holds, and the idle watch.

Rules: `execute` (executor.py) hands the Stopper the cancel scope it waits for
the child in, for as long as it waits; `stop(reason)` cancels it, and the group
is then ended as on timeout, `ExitInfo.ended_by` saying why. Once the child has
ended by itself a stop changes nothing. The idle watch reads one timestamp the
pumps set per read (never per line) and stops the run with "idle" when it is
older than the idle timeout.
"""

from __future__ import annotations

import trio


class Stopper:
    """Ends a running `execute` from outside (e.g. a sink over a limit): the
    group is ended as on timeout and `ExitInfo.ended_by` is the reason."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.scope: trio.CancelScope | None = None
        self.over = False  # the group ended by itself first: too late to stop it

    def stop(self, reason: str) -> None:
        if self.over:
            return
        if self.reason is None:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


class Activity:
    """When a pump last read anything (trio time): one store per read, not per line."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = trio.current_time()


async def watch_idle(activity: Activity, idle: float, stopper: Stopper,
                      scope: trio.CancelScope) -> None:
    """Stop the run once no pump has read anything for `idle` seconds."""
    with scope:
        # Sleeping to the due time and looking again, rather than an Event the
        # pumps set: a read then costs one store, and this wakes once per idle span.
        while (due := activity.last + idle) > trio.current_time():  # noqa: ASYNC110
            await trio.sleep_until(due)
        stopper.stop("idle")
