"""Job lifecycle states and the one table of legal transitions.

Rules: every status change in the system goes through `transition`; an invalid
transition raises `InvalidTransition` and changes nothing. Terminal is terminal.
The *outcome* of a finished job (succeeded / failed(code) / killed(signal) /
cancelled / lost) is kept apart from the lifecycle state: see `Outcome`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class Move(enum.StrEnum):
    """What happens to a job (the input of the state machine)."""

    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    BOUNCE = "bounce"


TRANSITIONS: dict[Status, dict[Move, Status]] = {
    Status.QUEUED: {
        Move.START: Status.RUNNING,
        Move.CANCEL: Status.CANCELLED,
        Move.FAIL: Status.FAILED,
    },
    Status.RUNNING: {
        Move.SUCCEED: Status.SUCCEEDED,
        Move.FAIL: Status.FAILED,
        Move.CANCEL: Status.CANCELLED,
        Move.BOUNCE: Status.QUEUED,
    },
    Status.SUCCEEDED: {},
    Status.FAILED: {},
    Status.CANCELLED: {},
}


class InvalidTransition(Exception):
    def __init__(self, status: Status, move: Move) -> None:
        super().__init__(f"cannot {move.value} a job that is {status.value}")
        self.status = status
        self.move = move


def transition(status: Status, move: Move) -> Status:
    try:
        return TRANSITIONS[status][move]
    except KeyError:
        raise InvalidTransition(status, move) from None


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # exited non-zero, or failed to start, or reported an error
    KILLED = "killed"  # ended by a signal nobody here sent (or by the timeout)
    CANCELLED = "cancelled"
    LOST = "lost"  # the server stopped while it ran
    IDLE = "idle"  # ended by the idle-output watchdog (the template's idle_timeout)
    LOG_CAP = "log_cap"  # ended past max_log_bytes (the template's on_log_cap = "kill")


# The logs dialect shows a cancelled job's exit code as -100.
CANCELLED_EXIT_CODE = -100


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    kind: OutcomeKind
    exit_code: int | None = None
    message: str | None = None

    @property
    def move(self) -> Move:
        if self.kind is OutcomeKind.SUCCEEDED:
            return Move.SUCCEED
        if self.kind is OutcomeKind.CANCELLED:
            return Move.CANCEL
        return Move.FAIL

    @property
    def status(self) -> Status:
        return TRANSITIONS[Status.RUNNING][self.move]
