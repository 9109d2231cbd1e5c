"""Persistence behind one interface, `Store`; SQLite is the embedded default."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import (
    Expired,
    IdempotencyRecord,
    IncompatibleDatabase,
    JobFilter,
    RetentionRule,
    Store,
    StoreStatistics,
)

if TYPE_CHECKING:
    from ..config import Config
    from .committer import QueuedStore

__all__ = ["Expired", "IdempotencyRecord", "IncompatibleDatabase", "JobFilter", "RetentionRule",
           "Store", "StoreStatistics", "open_store"]


def open_store(config: Config, *, observe_commit: Callable[[float], None] | None = None
               ) -> QueuedStore[Any]:
    """The configured backend: PostgreSQL at `database_url`, else SQLite in the data dir."""
    if config.database_url is not None:
        from .postgres import PostgresStore

        return PostgresStore(config.database_url, observe_commit=observe_commit,
                             lost_after=config.database_lost_after)
    from .sqlite import SqliteStore

    return SqliteStore(config.data_dir / "jobserver.db", observe_commit=observe_commit)
