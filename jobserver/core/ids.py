"""Typed identifiers. Job ids are UUIDs; they are parsed, never trusted."""

from __future__ import annotations

import uuid
from typing import NewType

JobId = NewType("JobId", str)
UserId = NewType("UserId", str)

SYSTEM_TOPIC = "system"


def new_job_id() -> JobId:
    return JobId(str(uuid.uuid4()))


def parse_job_id(text: str) -> JobId | None:
    """The canonical form of a job id, or None when `text` is not a UUID."""
    if len(text) > 64:
        return None
    try:
        return JobId(str(uuid.UUID(text)))
    except ValueError:
        return None
